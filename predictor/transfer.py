"""Transfer from a known device: a new device's layer-latency predictor from a small profile plus the saved
predictor of another device (the prior, predictor.priors).

Owns the transfer strategies (`TransferPredictor`) and the residual strategy's cross-validated choices. Their
bases (the per-operator rescaling, the affine base) live in predictor.transfer_bases, the residual trees in
predictor.transfer_trees, the kernel correction from nearby measured layers in predictor.transfer_local.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold

from jcw.predictor import transfer_local, transfer_trees
from jcw.predictor.choices import DEFAULT_TRANSFER_STRATEGY, TRANSFER_STRATEGIES
from jcw.predictor.errors import PredictorError
from jcw.predictor.features import FEATURE_NAMES, feature_matrix, physical
from jcw.predictor.models import LatencyPredictor, PhysicalModel, _one_thread, check_param, training_arrays
from jcw.predictor.transfer_bases import (
    GROUPS,
    apply_affine,
    apply_scale,
    fit_affine,
    fit_scale,
    thread_pool_dispatches,
)
from jcw.profiler.layerspec import IMPLS

#: The strategies and the default (predictor.choices says what each does).
STRATEGIES = TRANSFER_STRATEGIES
DEFAULT_STRATEGY = DEFAULT_TRANSFER_STRATEGY
#: The residual strategy's bases, in order of preference: latency ≈ a·prior + b·thread-pool dispatches per
#: operator group (fit_affine), or the scale strategy's line in log space (fit_scale); grouped
#: cross-validation picks one with the trees' weight.
RESIDUAL_BASES = ("affine", "line")
#: Weights of the residual trees tried by grouped cross-validation (0: the rescaled prior alone).
TREE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
_TREE_FOLDS = 5


# ---- the estimator -----------------------------------------------------------------------------
def _prior_model(prior: Any) -> Any:
    """The fitted model behind a prior: a loaded predictor.priors.Prior, or a fitted model itself."""
    return prior.loaded.model if hasattr(prior, "loaded") else prior


class TransferPredictor(LatencyPredictor):
    """A new device's per-layer latency from a prior (a `Prior` or any fitted model with `predict_impl`)
    and that device's measured rows; `strategy` is one of STRATEGIES.

    `sklearn.base.clone` copies a `Prior` as it is, but would hand back a fitted estimator unfitted: pass one
    as `FrozenEstimator(model)` (sklearn.frozen) when the transfer predictor is to be cloned.

    Predictions, `predict` and `predict_dense` behave as LatencyPredictor's. Parameters are validated in
    `fit`: `shrinkage` is how many pseudo-rows pull each operator's line (or affine base) toward the pooled
    one (and the pooled one toward a plain rescaling); the tree settings apply to the residual strategy's
    trees (one model per operator group, predictor.transfer_trees) and the feature strategy's, which are
    deliberately small: a transfer profile has tens to hundreds of layers. `local` lets the residual
    strategy's cross-validation add a kernel correction from nearby measured layers (predictor.transfer_local).
    """

    def __init__(self, prior: Any = None, strategy: str = DEFAULT_STRATEGY, *, shrinkage: float = 8.0,
                 n_estimators: int = 40, max_leaf_nodes: int = 8, learning_rate: float = 0.1,
                 min_samples_leaf: int = 4, local: bool = True, random_state: int = 0) -> None:
        self.prior = prior
        self.strategy = strategy
        self.shrinkage = shrinkage
        self.n_estimators = n_estimators
        self.max_leaf_nodes = max_leaf_nodes
        self.learning_rate = learning_rate
        self.min_samples_leaf = min_samples_leaf
        self.local = local
        self.random_state = random_state

    def _validate_params(self) -> None:
        if self.strategy not in STRATEGIES:
            raise PredictorError(f"parameter 'strategy' must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if not callable(getattr(_prior_model(self.prior), "predict_impl", None)):
            raise PredictorError("parameter 'prior' must be a loaded prior or a fitted latency predictor, "
                                 f"got {type(self.prior).__name__}")
        check_param("shrinkage", self.shrinkage, float, 0.0, 1e6)
        check_param("n_estimators", self.n_estimators, int, 1, 5000)
        check_param("max_leaf_nodes", self.max_leaf_nodes, int, 2, 1024)
        check_param("learning_rate", self.learning_rate, float, 1e-4, 1.0)
        check_param("min_samples_leaf", self.min_samples_leaf, int, 1)
        if not isinstance(self.local, bool):
            raise PredictorError(f"parameter 'local' must be True or False, got {self.local!r}")
        check_param("random_state", self.random_state, int, 0)

    # ---- training ----------------------------------------------------------------------------
    def fit(self, rows: Sequence[Mapping[str, Any]], y: None = None) -> TransferPredictor:
        """Learn from the new device's profile rows (spec fields, `impl`, `latency_us`); `y` is ignored."""
        self._validate_params()
        columns, impl, latency = training_arrays(rows)
        if len(latency) < 8:
            raise PredictorError(f"a transfer predictor needs at least 8 measured configurations, got {len(latency)}")
        prior_us = self._stacked(columns, impl, lambda cols, name: _prior_model(self.prior).predict_impl(cols, name))
        log_prior = np.log(prior_us)
        self.physical_ = None
        self.affine_ = None
        self.estimator_ = None
        self.local_ = None
        self.tree_weight_ = 1.0
        log_latency = np.log(latency)
        if self.strategy == "residual":
            dispatches = thread_pool_dispatches(columns, impl)
            base_name, self.tree_weight_, local = self._choose_base(columns, impl, prior_us, dispatches, latency)
            bases = self._log_bases(columns, impl, prior_us, dispatches, latency, np.ones(len(impl), dtype=bool))
            self.scale_ = bases["line"][0]
            fitted, base = bases[base_name]
            if base_name == "affine":
                self.affine_ = fitted  # else the base is the scale strategy's line, self.scale_
            if self.tree_weight_ > 0:
                self.estimator_ = self._fit_group_trees(columns, impl, log_latency - base) or None
                self.tree_weight_ = self.tree_weight_ if self.estimator_ is not None else 0.0
            if local is not None:
                if self.estimator_ is not None:
                    base = base + self.tree_weight_ * transfer_trees.predict(self.estimator_, columns, impl)
                self.local_ = transfer_local.LocalResidual(*local).fit(
                    transfer_local.design(columns, impl), transfer_trees.group_keys(columns["op"], impl),
                    log_latency - base)
        else:
            self.scale_ = fit_scale(columns["op"], impl, log_prior, log_latency - log_prior, float(self.shrinkage))
        if self.strategy == "feature":
            self.physical_ = PhysicalModel().fit(columns, impl, latency)
            physical_us = self._stacked(columns, impl, lambda cols, name: self.physical_.predict(cols, name))
            self.estimator_ = self._fit_trees(columns, impl, log_prior, log_latency - np.log(physical_us))
        self.kind_ = "transfer"
        self.cv_scores_ = {}
        self.n_training_rows_ = len(latency)
        return self

    def _log_bases(self, columns: Mapping[str, np.ndarray], impl: np.ndarray, prior_us: np.ndarray,
                   dispatches: np.ndarray, latency: np.ndarray, fit: np.ndarray) -> dict[str, tuple[Any, np.ndarray]]:
        """{base name: (its fit, log base latency of every row)} for each of RESIDUAL_BASES, fitted on `fit`."""
        op, log_prior = columns["op"], np.log(prior_us)
        affine = fit_affine(op[fit], impl[fit], prior_us[fit], dispatches[fit], latency[fit], float(self.shrinkage))
        line = fit_scale(op[fit], impl[fit], log_prior[fit], np.log(latency[fit]) - log_prior[fit],
                         float(self.shrinkage))
        return {"affine": (affine, np.log(apply_affine(affine, op, impl, prior_us, dispatches))),
                "line": (line, log_prior + self._log_scale(line, columns, impl, log_prior))}

    @staticmethod
    def _log_scale(scale: Mapping[str, Sequence[float]], columns: Mapping[str, np.ndarray], impl: np.ndarray,
                   log_prior: np.ndarray) -> np.ndarray:
        out = np.empty(len(impl))
        for name in IMPLS:
            mask = impl == name
            out[mask] = apply_scale(scale, columns["op"][mask], name, log_prior[mask])
        return out

    def _choose_base(self, columns: Mapping[str, np.ndarray], impl: np.ndarray, prior_us: np.ndarray,
                     dispatches: np.ndarray, latency: np.ndarray) -> tuple[str, float, tuple[float, float] | None]:
        """The residual strategy's base (RESIDUAL_BASES) and the weight of its trees, then for them the kernel
        setting of its local correction (None: none; transfer_local.LOCAL_SETTINGS), each with the most rows
        within ±10 % on shapes held out of the fit (of the base too); ties go to the earlier base, the smaller
        weight and no correction. On noisy labels the trees learn the noise, and this turns them off rather
        than let them undo the prior; between devices whose latencies are not a rescaling plus a fixed cost
        (an x86 prior for an arm64 phone), the log-space line is the better base."""
        # The unseen-shape split of predictor.evaluation: (op, k, cin, cout, h) held out whole.
        shapes = [f"{o}/{k}/{a}/{b}/{h}" for o, k, a, b, h in zip(columns["op"], columns["k"], columns["cin"],
                                                                 columns["cout"], columns["h"])]
        log_latency = np.log(latency)
        settings = (None, *transfer_local.LOCAL_SETTINGS) if self.local else (None,)
        candidates = [(name, w, setting) for name in RESIDUAL_BASES for w in TREE_WEIGHTS for setting in settings]
        predicted = {candidate: np.full(len(impl), np.nan) for candidate in candidates}
        points, groups = transfer_local.design(columns, impl), transfer_trees.group_keys(columns["op"], impl)
        n_shapes = len(set(shapes))
        folds = [] if n_shapes < 2 else GroupKFold(min(_TREE_FOLDS, n_shapes), shuffle=True,
                                                   random_state=self.random_state).split(impl, groups=shapes)
        for train_index, test_index in folds:
            train, test = np.zeros(len(impl), dtype=bool), np.zeros(len(impl), dtype=bool)
            train[train_index], test[test_index] = True, True
            if train.sum() < 8:
                continue
            sub = {name: values[train] for name, values in columns.items()}
            held = {name: values[test] for name, values in columns.items()}
            residuals, corrected = [], []
            for name, (_, fold_base) in self._log_bases(columns, impl, prior_us, dispatches, latency, train).items():
                model = self._fit_group_trees(sub, impl[train], (log_latency - fold_base)[train])
                trees_fit = transfer_trees.predict(model, sub, impl[train])
                trees_held = transfer_trees.predict(model, held, impl[test])
                for w in TREE_WEIGHTS:
                    predicted[(name, w, None)][test] = fold_base[test] + w * trees_held
                    residuals.append((log_latency - fold_base)[train] - w * trees_fit)
                    corrected.append((name, w))
            if not self.local:
                continue
            corrections = transfer_local.fold_corrections((points[train], groups[train]), (points[test], groups[test]),
                                                          transfer_local.feature_scale(points[train]),
                                                          np.column_stack(residuals))
            for setting, correction in corrections.items():
                for column, (name, w) in enumerate(corrected):
                    predicted[(name, w, setting)][test] = predicted[(name, w, None)][test] + correction[:, column]
        scored = ~np.isnan(predicted[candidates[0]])
        if not scored.any():
            return RESIDUAL_BASES[0], 0.0, None
        share = {c: float(np.mean(np.abs(np.exp(log_latency[scored] - predicted[c][scored]) - 1.0) <= 0.10))
                 for c in candidates}
        # The base and weight first, then the correction for them: chosen jointly, the many combinations let
        # fold noise pick (on the four pair-B profiles of benchmarks/RESULTS.md, 0.7 points lower at 200 layers).
        name, w, _ = max((c for c in candidates if c[2] is None), key=share.get)  # max keeps the first of ties
        return max((c for c in candidates if c[:2] == (name, w)), key=share.get)

    def _fit_group_trees(self, columns: Mapping[str, np.ndarray], impl: np.ndarray, target: np.ndarray
                         ) -> dict[str, Any]:
        return transfer_trees.fit(columns, impl, target, n_estimators=self.n_estimators,
                                  learning_rate=self.learning_rate, max_leaf_nodes=self.max_leaf_nodes,
                                  min_samples_leaf=self.min_samples_leaf, random_state=self.random_state)

    @staticmethod
    def _stacked(columns: Mapping[str, np.ndarray], impl: np.ndarray, predict: Any) -> np.ndarray:
        out = np.empty(len(impl))
        for name in IMPLS:
            mask = impl == name
            if mask.any():
                out[mask] = predict({k: v[mask] for k, v in columns.items()}, name)
        return out

    def _fit_trees(self, columns: Mapping[str, np.ndarray], impl: np.ndarray, log_prior: np.ndarray,
                   target: np.ndarray) -> Any:
        """The feature strategy's pooled trees on every layer feature and the prior's log-latency."""
        from sklearn.ensemble import HistGradientBoostingRegressor  # deferred: start-up
        target = transfer_trees.clipped(target)
        x = np.empty((len(impl), len(FEATURE_NAMES) + 1))
        for name in IMPLS:
            mask = impl == name
            if mask.any():
                x[mask] = self._design({k: v[mask] for k, v in columns.items()}, name, log_prior[mask])
        # One pooled model (is_sparse and is_dwconv are features): a small profile has too few rows to
        # split by implementation.
        leaf = max(self.min_samples_leaf, len(target) // 40)
        trees = HistGradientBoostingRegressor(
            max_iter=self.n_estimators, learning_rate=self.learning_rate, max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=min(leaf, max(1, len(target) // 2)), l2_regularization=1.0, early_stopping=False,
            random_state=self.random_state)
        with _one_thread():
            return trees.fit(x, target)

    @staticmethod
    def _design(columns: Mapping[str, np.ndarray], impl: str, log_prior: np.ndarray,
                phys: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        return np.column_stack([feature_matrix(columns, impl, phys), log_prior])

    # ---- prediction --------------------------------------------------------------------------
    def predict_impl(self, columns: Mapping[str, np.ndarray], impl: str,
                     phys: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Latency in microseconds of one implementation for every layer of validated columns."""
        self._check_fitted()
        phys = physical(columns) if phys is None else phys
        prior_us = _prior_model(self.prior).predict_impl(columns, impl, phys)
        log_prior = np.log(prior_us)
        if self.strategy == "feature":
            with _one_thread():
                correction = self.estimator_.predict(self._design(columns, impl, log_prior, phys))
            return self.physical_.predict(columns, impl, phys) * np.exp(correction)
        if self.affine_ is not None:
            log_out = np.log(apply_affine(self.affine_, columns["op"], impl, prior_us,
                                          thread_pool_dispatches(columns, impl, phys)))
        else:  # the scale strategy, or a residual one saved before its base was affine
            log_out = log_prior + apply_scale(self.scale_, columns["op"], impl, log_prior)
        if isinstance(self.estimator_, Mapping):  # residual trees, unless cross-validation gave them weight 0
            log_out = log_out + self.tree_weight_ * transfer_trees.predict(self.estimator_, columns, impl, phys)
        elif self.estimator_ is not None:  # one pooled model, as saved by jcw before the per-group trees
            with _one_thread():
                log_out = log_out + self.tree_weight_ * self.estimator_.predict(
                    self._design(columns, impl, log_prior, phys))
        if self.local_ is not None:
            log_out = log_out + self.local_.predict(transfer_local.design(columns, impl, phys),
                                                    transfer_trees.group_keys(columns["op"], impl))
        return np.exp(log_out)

    # ---- state for persistence ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        self._check_fitted()
        params = self.get_params(deep=False)
        params.pop("prior")  # saved beside it (predictor.priors)
        return {"kind": self.kind_, "params": params, "scale": self.scale_, "affine": self.affine_,
                "tree_weight": self.tree_weight_, "local": None if self.local_ is None else self.local_.state(),
                "physical": None if self.physical_ is None else self.physical_.coef_,
                "n_training_rows": self.n_training_rows_, "features": list(FEATURE_NAMES),
                "residual_design": list(transfer_trees.DESIGN)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], estimator: Any, prior: Any = None) -> TransferPredictor:
        model = cls(prior, **dict(state["params"]))
        model.kind_ = "transfer"
        model.scale_ = {key: [float(v) for v in state["scale"][key]] for key in GROUPS}
        affine = state.get("affine")  # absent before the residual base was affine: it keeps the log-space line
        model.affine_ = None
        if affine is not None:
            model.affine_ = {}
            for key in GROUPS:
                a, b = affine[key]  # exactly [a, b], or the state is malformed
                model.affine_[key] = [float(a), float(b)]
        model.tree_weight_ = float(state.get("tree_weight", 1.0))
        local = state.get("local")  # absent before the local correction: none
        model.local_ = None if local is None else transfer_local.LocalResidual.from_state(local, GROUPS)
        model.physical_ = None
        if state.get("physical") is not None:
            model.physical_ = PhysicalModel()
            model.physical_.coef_ = {k: [float(v) for v in c] for k, c in state["physical"].items()}
        model.cv_scores_ = {}
        model.n_training_rows_ = int(state["n_training_rows"])
        model.estimator_ = estimator
        return model
