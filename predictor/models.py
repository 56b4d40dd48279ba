"""The latency estimator: log-latency regressors per implementation, chosen by grouped cross-validation.

Owns the physical (roofline-like, non-negative linear) model, the tree models on top of it or
alone, `LatencyPredictor.fit(rows)` / `.predict(layers)` and the model's serialisable state.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone

from jcw.predictor.choices import MODEL_KINDS
from jcw.predictor.errors import PredictorError
from jcw.predictor.features import (
    FEATURE_NAMES,
    MONOTONE,
    as_columns,
    feature_matrix,
    impl_quantities,
    physical,
    rows_to_columns,
)
from jcw.profiler.layerspec import IMPLS, LayerBatch, LayerSpec

#: (op, impl) pairs the runner can measure; dwconv has no sparse kernel.
GROUPS = (("conv", "dense"), ("conv", "sparse"), ("dwconv", "dense"))
#: Terms are only ever appended: a predictor saved with fewer loads with the missing ones weighing 0.
_PHYSICAL_TERMS = ("work", "io_bytes", "weight_bytes", "im2col_bytes", "im2col_rows", "im2col_segments",
                   "im2col_strided_bytes")
_MIN_GROUP_ROWS = 6
#: Ways of splitting the layers among tree models. Each grouping fits the same residual with trees that see
#: different boundaries (by implementation; by operator; by operator and 1x1 against kxk; by stride); the
#: prediction is their geometric mean, which on layers of unseen architectures was 3-6 points more often
#: within +-10 % than one grouping, on three profiles (benchmarks/RESULTS.md, plan version 5). A fourth
#: grouping by an arbitrary split (odd input channels) added nothing: stride carries information.
TREE_GROUPINGS = ("impl", "op", "op_kernel", "stride")


def tree_group_keys(grouping: str) -> tuple[str, ...]:
    """Every tree-model key of one grouping; the "impl" keys are the bare implementation names, as predictors
    saved before the groupings keyed their two tree models."""
    if grouping == "impl":
        return IMPLS
    if grouping == "stride":
        return tuple(f"stride:{step}/{impl}" for step in ("s1", "s2") for impl in IMPLS)
    ops = ("conv", "dwconv") if grouping == "op" else ("conv1x1", "convkxk", "dwconv")
    return tuple(f"{grouping}:{op}/{impl}" for op in ops for impl in IMPLS if not (op == "dwconv" and impl != "dense"))


def tree_group_masks(grouping: str, columns: Mapping[str, np.ndarray], impl: str) -> dict[str, np.ndarray]:
    """The layers (all with implementation `impl`) of each tree-model key of one grouping, as boolean masks."""
    if grouping == "impl":
        return {impl: np.ones(len(columns["op"]), dtype=bool)}
    if grouping == "stride":  # s2: stride 2 or more
        one = np.asarray(columns["stride"]) == 1
        return {key: mask for key, mask in ((f"stride:s1/{impl}", one), (f"stride:s2/{impl}", ~one)) if mask.any()}
    dw = np.asarray(columns["op"]) == "dwconv"
    if grouping == "op":
        masks = {"conv": ~dw, "dwconv": dw}
    else:
        one = np.asarray(columns["k"]) == 1
        masks = {"conv1x1": ~dw & one, "convkxk": ~dw & ~one, "dwconv": dw}
    return {f"{grouping}:{op}/{impl}": mask for op, mask in masks.items() if mask.any()}


class PhysicalModel(BaseEstimator):
    """latency ≈ a·work + b·io_bytes + c·weight_bytes + d·im2col_bytes + e·im2col_rows + f·im2col_segments
    + g·im2col_strided_bytes + h per (op, impl), all ≥ 0.

    Fitted by non-negative least squares on relative error, so it is monotone in every size
    quantity and extrapolates sensibly to shapes far from the training data. It has no parameters;
    `coef_` maps "op/impl" to the eight coefficients.
    """

    @staticmethod
    def design(columns: Mapping[str, np.ndarray], impl: str, phys: Mapping[str, np.ndarray] | None = None
               ) -> np.ndarray:
        q = impl_quantities(physical(columns) if phys is None else phys, impl)
        n = len(columns["op"])
        return np.column_stack([q[t] for t in _PHYSICAL_TERMS] + [np.ones(n)])

    def fit(self, columns: Mapping[str, np.ndarray], impl: np.ndarray, latency: np.ndarray) -> PhysicalModel:
        phys = physical(columns)
        design = {name: self.design(columns, name, phys) for name in IMPLS}
        rows = np.zeros((len(latency), len(_PHYSICAL_TERMS) + 1))
        for name in IMPLS:
            rows[impl == name] = design[name][impl == name]
        pooled = self._solve(rows, latency)
        self.coef_ = {}
        for op, name in GROUPS:
            mask = (columns["op"] == op) & (impl == name)
            same_impl = impl == name
            if mask.sum() >= _MIN_GROUP_ROWS:
                self.coef_[f"{op}/{name}"] = self._solve(rows[mask], latency[mask])
            elif same_impl.sum() >= _MIN_GROUP_ROWS:
                self.coef_[f"{op}/{name}"] = self._solve(rows[same_impl], latency[same_impl])
            else:
                self.coef_[f"{op}/{name}"] = pooled
        return self

    @staticmethod
    def _solve(rows: np.ndarray, latency: np.ndarray) -> list[float]:
        # Scale columns so NNLS is well conditioned, and divide by latency for relative error.
        scale = np.maximum(np.abs(rows).max(axis=0), 1e-30)
        from scipy.optimize import nnls  # deferred: keeps `jcw` start-up fast
        coef, _ = nnls(rows / scale / latency[:, None], np.ones(len(latency)), maxiter=2000)
        return list(coef / scale)

    def predict(self, columns: Mapping[str, np.ndarray], impl: str, phys: Mapping[str, np.ndarray] | None = None
                ) -> np.ndarray:
        design = self.design(columns, impl, phys)
        out = np.empty(len(design))
        for op in ("conv", "dwconv"):
            mask = columns["op"] == op
            key = f"{op}/{impl}" if f"{op}/{impl}" in self.coef_ else f"conv/{impl}"
            out[mask] = design[mask] @ np.asarray(self.coef_[key])
        # A layer never takes less than the smallest per-call overhead seen; keeps logs finite.
        return np.maximum(out, 1e-3)


def check_param(name: str, value: Any, kind: type, low: float, high: float | None = None) -> None:
    """Refuse an estimator parameter of the wrong type (int, or float that takes ints too) or out of range,
    in one sentence that names it; estimators call this in `fit`, never in `__init__`."""
    if isinstance(value, bool) or not isinstance(value, kind if kind is not float else (int, float)):
        what = "a whole number" if kind is int else "a number"
        raise PredictorError(f"parameter '{name}' must be {what}, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise PredictorError(f"parameter '{name}' must be {bound}, got {value!r}")


class LatencyPredictor(BaseEstimator):
    """Per-layer latency of the dense and the sparse kernel, and the faster of the two.

    A scikit-learn estimator whose samples are profile rows: `fit(rows)` reads the labels from the rows
    (`latency_us` per `impl`), so `y` is not used; `predict(layers)` answers per layer and implementation
    (a dict of arrays, hence no RegressorMixin), and `score(rows)` is the share within ±10 %.
    Parameters are validated in `fit`: `model` is "auto" (pick by grouped cross-validation among
    `candidates`) or one of MODEL_KINDS; the tree settings are shared by the tree models. The
    defaults were chosen on the sample-efficiency curve (benchmarks/RESULTS.md): enough capacity to
    reach 95 % within ±10 % on unseen real-network layers; with the tree groupings, 40 trees each at
    rate 0.4 were as accurate as 60 at 0.3 and predict a third faster.
    """

    def __init__(self, model: str = "auto", *, candidates: Sequence[str] = MODEL_KINDS, n_estimators: int = 40,
                 max_leaf_nodes: int = 24, learning_rate: float = 0.4, min_samples_leaf: int = 4,
                 loss: str = "squared_error", tree_groupings: Sequence[str] = TREE_GROUPINGS, cv_folds: int = 5,
                 random_state: int = 0) -> None:
        self.model = model
        self.candidates = candidates
        self.n_estimators = n_estimators
        self.max_leaf_nodes = max_leaf_nodes
        self.learning_rate = learning_rate
        self.min_samples_leaf = min_samples_leaf
        self.loss = loss
        self.tree_groupings = tree_groupings
        self.cv_folds = cv_folds
        self.random_state = random_state

    # ---- parameters ----------------------------------------------------------------------
    def _validate_params(self) -> None:
        if self.model != "auto" and self.model not in MODEL_KINDS:
            raise PredictorError(f"parameter 'model' must be auto or one of {', '.join(MODEL_KINDS)}, "
                                 f"got {self.model!r}")
        unknown = [c for c in self.candidates if c not in MODEL_KINDS] \
            if isinstance(self.candidates, (list, tuple)) else [self.candidates]
        if unknown or not self.candidates:
            raise PredictorError(f"parameter 'candidates' must name some of {', '.join(MODEL_KINDS)}, "
                                 f"got {self.candidates!r}")
        check_param("n_estimators", self.n_estimators, int, 1, 5000)
        check_param("max_leaf_nodes", self.max_leaf_nodes, int, 2, 1024)
        check_param("learning_rate", self.learning_rate, float, 1e-4, 1.0)
        check_param("min_samples_leaf", self.min_samples_leaf, int, 1)
        if self.loss not in ("squared_error", "absolute_error"):
            raise PredictorError(f"parameter 'loss' must be squared_error or absolute_error, got {self.loss!r}")
        groupings = self.tree_groupings
        if not isinstance(groupings, (list, tuple)) or not groupings or len(set(groupings)) != len(groupings) \
                or not set(groupings) <= set(TREE_GROUPINGS):
            raise PredictorError(f"parameter 'tree_groupings' must name some of {', '.join(TREE_GROUPINGS)} once "
                                 f"each, got {groupings!r}")
        check_param("cv_folds", self.cv_folds, int, 2, 20)
        check_param("random_state", self.random_state, int, 0)

    # ---- training ------------------------------------------------------------------------
    def fit(self, rows: Sequence[Mapping[str, Any]], y: None = None) -> LatencyPredictor:
        """Learn from profile rows (spec fields, `impl`, `latency_us`), e.g. `ProfileStore.measurements()`;
        `y` is ignored (the rows carry their latencies), as scikit-learn's model selection passes it."""
        self._validate_params()
        columns, impl, latency = training_arrays(rows)
        if len(latency) < 8:
            raise PredictorError(f"a predictor needs at least 8 measured configurations, got {len(latency)}")
        self.cv_scores_: dict[str, float] = {}
        kind = self.model
        if kind == "auto":
            if len(self.candidates) == 1:
                kind = self.candidates[0]
            else:
                from jcw.predictor.evaluation import grouped_cv_score  # evaluation imports this module
                self.cv_scores_ = {c: grouped_cv_score(clone(self).set_params(model=c), rows, self.cv_folds,
                                                       self.random_state) for c in self.candidates}
                kind = max(self.cv_scores_, key=self.cv_scores_.get)
        self.kind_ = kind
        self._fit_kind(columns, impl, latency)
        self.n_training_rows_ = len(latency)
        return self

    def _fit_kind(self, columns: dict[str, np.ndarray], impl: np.ndarray, latency: np.ndarray) -> None:
        self.physical_ = PhysicalModel().fit(columns, impl, latency)
        self.estimator_ = None
        if self.kind_ == "linear":
            return
        x = _stacked_features(columns, impl)
        target = np.log(latency)
        if self.kind_ == "hybrid":
            target = target - np.log(self._physical_stacked(columns, impl))
        # One tree model per group of every grouping (TREE_GROUPINGS): the dense and the sparse kernel,
        # depthwise and 1x1/kxk convolutions scale differently, and a layer walks only its groups' trees.
        # A group with too few rows borrows its implementation's rows, else all rows (is_sparse is a feature).
        self.estimator_ = {}
        with _one_thread():
            for grouping in self.tree_groupings:
                groups = {}
                for name in IMPLS:
                    rows = impl == name
                    for key, mask in tree_group_masks(grouping, columns, name).items():
                        groups[key] = rows & mask
                for key in tree_group_keys(grouping):
                    mask = groups.get(key, np.zeros(len(impl), dtype=bool))
                    if mask.sum() < _MIN_GROUP_ROWS:
                        mask = impl == key.rpartition("/")[2]  # the group's implementation
                    if mask.sum() < _MIN_GROUP_ROWS:
                        mask = np.ones(len(impl), dtype=bool)
                    self.estimator_[key] = self._make_estimator(int(mask.sum())).fit(x[mask], target[mask])

    def _make_estimator(self, n_rows: int):
        from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor  # deferred: start-up
        leaf = min(self.min_samples_leaf, max(1, n_rows // 20))
        if self.kind_ == "rf":
            return RandomForestRegressor(n_estimators=self.n_estimators // 2 or 1, min_samples_leaf=leaf,
                                         max_features=0.5, max_depth=12, n_jobs=1,
                                         random_state=self.random_state)
        # Plain gbm models log-latency itself, where "bigger is never faster" holds; the hybrid's
        # residual may legitimately fall with size (overheads amortise), so it is unconstrained.
        monotone = list(MONOTONE) if self.kind_ == "gbm" else None
        return HistGradientBoostingRegressor(
            loss=self.loss, max_iter=self.n_estimators, learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes, min_samples_leaf=leaf, l2_regularization=1.0,
            monotonic_cst=monotone, early_stopping=False,
            random_state=self.random_state)

    def _physical_stacked(self, columns: LayerBatch, impl: np.ndarray) -> np.ndarray:
        out = np.empty(len(impl))
        for name in IMPLS:
            mask = impl == name
            if mask.any():
                out[mask] = self.physical_.predict(columns.take(mask), name)
        return out

    # ---- prediction ----------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "kind_"):
            raise PredictorError("this LatencyPredictor is not fitted yet; call fit(rows) first")

    def predict_impl(self, columns: Mapping[str, np.ndarray], impl: str,
                     phys: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Latency in microseconds of one implementation for every layer of validated columns."""
        self._check_fitted()
        phys = physical(columns) if phys is None else phys
        if self.kind_ == "linear":
            return self.physical_.predict(columns, impl, phys)
        x = feature_matrix(columns, impl, phys)
        raw = np.zeros(len(x))
        with _one_thread():
            for grouping in self.tree_groupings:
                for key, mask in tree_group_masks(grouping, columns, impl).items():
                    raw[mask] += self.estimator_[key].predict(x if mask.all() else x[mask])
        raw /= len(self.tree_groupings)
        if self.kind_ == "hybrid":
            return self.physical_.predict(columns, impl, phys) * np.exp(raw)
        return np.exp(raw)

    def predict(self, layers: Iterable[LayerSpec] | Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Milliseconds per layer: dense_ms, sparse_ms (NaN for dwconv), best_ms, best_impl."""
        self._check_fitted()
        columns = as_columns(layers)
        # A search population repeats layers heavily; each distinct layer is predicted once.
        columns, inverse = columns.distinct()
        n = len(columns["op"])
        dense = np.empty(n)
        sparse = np.full(n, np.nan)
        if n:
            # The dense kernel's latency does not depend on density (see features), so layers that
            # differ only in density share one dense prediction: a search varies density most.
            shapes, shape_inverse = columns.replace(density=np.ones(n)).distinct()
            dense = (self.predict_impl(shapes, "dense") / 1000.0)[shape_inverse]
            conv = columns["op"] == "conv"
            if conv.any():
                sparse[conv] = self.predict_impl(columns if conv.all() else columns.take(conv), "sparse") / 1000.0
        use_sparse = sparse < dense  # NaN compares False: dwconv stays dense
        best_impl = np.where(use_sparse, "sparse", "dense").astype(object)
        return {"dense_ms": dense[inverse], "sparse_ms": sparse[inverse],
                "best_ms": np.where(use_sparse, sparse, dense)[inverse], "best_impl": best_impl[inverse]}

    def predict_dense(self, layers: Iterable[LayerSpec] | Mapping[str, Any]) -> np.ndarray:
        """Milliseconds per layer with the dense kernel only (what ExecuTorch runs; density is ignored)."""
        self._check_fitted()
        columns = as_columns(layers)
        n = len(columns["op"])
        if not n:
            return np.zeros(0)
        shapes, inverse = columns.replace(density=np.ones(n)).distinct()
        return (self.predict_impl(shapes, "dense") / 1000.0)[inverse]

    def score(self, rows: Sequence[Mapping[str, Any]], y: None = None) -> float:
        """Share of measured rows predicted within ±10 % (the kit's target metric; higher is better)."""
        from jcw.predictor.evaluation import latencies, metrics, predict_rows  # evaluation imports this module
        return metrics(predict_rows(self, rows), latencies(rows))["within10"]

    # ---- state for persistence -----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON-able description of everything but the tree estimator (stored separately)."""
        self._check_fitted()
        return {"params": self.get_params(deep=False), "kind": self.kind_, "physical": self.physical_.coef_,
                "cv_scores": self.cv_scores_, "n_training_rows": self.n_training_rows_,
                "features": list(FEATURE_NAMES)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], estimator: Any) -> LatencyPredictor:
        params = dict(state["params"])
        params.setdefault("tree_groupings", ("impl",))  # saved before the groupings: one model per implementation
        params["tree_groupings"] = tuple(params["tree_groupings"])
        model = params.pop("model")
        predictor = cls(model, **params)
        predictor.kind_ = state["kind"]
        predictor.physical_ = PhysicalModel()
        predictor.physical_.coef_ = {}
        for key, saved in state["physical"].items():
            coef = [float(v) for v in saved]
            if 2 <= len(coef) <= len(_PHYSICAL_TERMS):  # saved before the later terms: they weigh 0, the constant last
                coef[-1:-1] = [0.0] * (len(_PHYSICAL_TERMS) + 1 - len(coef))
            predictor.physical_.coef_[key] = coef
        predictor.cv_scores_ = dict(state.get("cv_scores", {}))
        predictor.n_training_rows_ = int(state["n_training_rows"])
        predictor.estimator_ = estimator
        return predictor


def _one_thread():
    # OpenMP worker threads spin against other tenants of a shared machine: a fit that takes 1.5 s
    # on one thread took 30 s on two busy cores. Predictions are measured on one core too.
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=1, user_api="openmp")


def _stacked_features(columns: LayerBatch, impl: np.ndarray) -> np.ndarray:
    x = np.empty((len(impl), len(FEATURE_NAMES)))
    for name in IMPLS:
        mask = impl == name
        if mask.any():
            x[mask] = feature_matrix(columns.take(mask), name)
    return x


def training_arrays(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Profile rows → (columns, impl array, latency_us array), rejecting what the runner cannot measure."""
    if not rows:
        raise PredictorError("there are no measurements to learn from")
    try:
        columns = as_columns(rows_to_columns(list(rows)))
        impl = np.array([r["impl"] for r in rows], dtype=object)
        latency = np.array([r["latency_us"] for r in rows], dtype=np.float64)
    except KeyError as exc:
        raise PredictorError(f"a measurement row lacks the field {exc.args[0]!r}") from None
    if not np.isin(impl, IMPLS).all():
        raise PredictorError(f"measurement rows must have impl dense or sparse, got {impl[~np.isin(impl, IMPLS)][0]!r}")
    if np.any((columns["op"] == "dwconv") & (impl == "sparse")):
        raise PredictorError("a measurement row has impl sparse for a dwconv, which no runner measures")
    if not np.all(np.isfinite(latency) & (latency > 0)):
        raise PredictorError("every measurement row needs a positive latency_us")
    return columns, impl, latency
