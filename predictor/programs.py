"""Whole-program latency under the runtime "executorch": the deployed .pte (ExecuTorch runtime, XNNPACK
delegate, its thread pool) as a non-negative linear law over the program's parts, optionally corrected.

Owns the parts of program specs (dense conv time from the layer predictor, per-kind element counts of the
other operators, linear-layer MACs, node counts), the program model's fit, its choice by grouped
cross-validation, its vectorised prediction and its JSON state (trees, if any, go through skops).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.model_selection import GroupKFold

from jcw.predictor.errors import PredictorError

RUNTIME = "executorch"
#: Operator → term of the law. relu, relu6 and flatten are one kind, "act": each reads and writes every
#: element once (a clamp in XNNPACK; a flatten is the delegate's NHWC-to-NCHW layout copy). Priced apart,
#: flatten's few elements per program were confounded with the linear layer it feeds (a flatten of a
#: 3,136-feature map fitted at 20 ns per element) and the unseen-architecture share at the default budget fell
#: from 94% to 84% (benchmarks/RESULTS.md, issue 9). A linear layer runs XNNPACK's fully-connected operator,
#: not the convolution, so it is costed by its own MACs.
KIND_OF_OP = {"add": "add", "relu": "act", "relu6": "act", "flatten": "act", "maxpool": "maxpool",
              "avgpool": "avgpool", "gap": "gap", "concat": "concat", "linear": "linear"}
ELEMENT_KINDS = ("add", "act", "maxpool", "avgpool", "gap", "concat")
#: A concatenation is costed by its row copies, not its elements: XNNPACK copies each input pixel by pixel
#: (one copy per input row), and 2-9 narrow inputs at 56 px cost 2.4-3.5 ns per input row whatever their
#: channels (benchmarks/RESULTS.md, issue 9). ExecuTorch splits a concatenation of more than
#: CONCAT_MAX_INPUTS tensors into a chain, each link re-reading the previous link's output.
ROW_KINDS = ("concat",)
CONCAT_MAX_INPUTS = 5


def term_of(kind: str) -> str:
    """The design term of an operator kind: its elements, or for a concatenation its row copies."""
    return f"{kind}_rows" if kind in ROW_KINDS else f"{kind}_elems"


#: Columns of the design: ms of the dense conv/dwconv layers, elements read + written per operator kind
#: (pooling: its windows' reads + writes; concatenation: row copies), linear MACs, node and weighted-layer
#: counts, one per program.
TERMS = ("conv_ms", *map(term_of, ELEMENT_KINDS), "linear_macs", "nodes", "convs", "program")
OP_FIELDS = ("c", "h", "w", "out_c", "out_h", "out_w", "k", "stride", "in_elems", "n_inputs")
#: Fields an ops mapping may leave out, and what they default to (None: derived from the others).
_OPTIONAL_FIELDS = {"k": 1, "stride": 1, "n_inputs": 1, "in_elems": None}
MODEL_KINDS = ("linear", "corrected")
#: Features of the correction: shares of the linear prediction, its log and the program's size.
CORRECTION_FEATURES = ("log_linear_ms", "conv_share", "pool_share", "elementwise_share", "linear_share",
                       "fixed_share", "log_nodes")
#: The correction must beat the linear law by this much (share within ±10 %, grouped CV, and by at least
#: two programs) to be kept.
MIN_GAIN = 0.02
_MIN_MS = 1e-3


# ---- parts of a program ------------------------------------------------------------------
def design(conv_ms: Any, ops: Mapping[str, Any], n_nodes: Any, n_conv: Any,
           terms: Sequence[str] = TERMS) -> np.ndarray:
    """(n, len(terms)) design matrix from the vectorised parts (see Predictor.predict_program_parts).

    conv_ms: (n,) for TERMS; for another term set (the sparse runtime's), (n, k) values of its k leading
    terms, the ones before the operator elements."""
    conv_ms = np.asarray(conv_ms, dtype=np.float64)
    lead = _column(terms)[ELEMENT_KINDS[0]]
    if conv_ms.ndim == 1 and lead == 1:
        conv_ms = conv_ms[:, None]
    if conv_ms.ndim != 2 or conv_ms.shape[1] != lead:
        raise PredictorError(f"the conv parts must have shape (n, {lead}), got {conv_ms.shape}"
                             if lead > 1 else f"conv_ms must be a 1-d array, got shape {conv_ms.shape}")
    n = len(conv_ms)
    x = np.zeros((n, len(terms)))
    x[:, :lead] = conv_ms
    for name, values in (("nodes", n_nodes), ("convs", n_conv)):
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (n,):
            raise PredictorError(f"{name} counts must have shape ({n},), got {values.shape}")
        x[:, list(terms).index(name)] = values
    x[:, -1] = 1.0
    program, column, amount = op_amounts(ops, n, terms)
    if len(program):
        x += np.bincount(program * len(terms) + column, weights=amount, minlength=n * len(terms)).reshape(n, -1)
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise PredictorError("program parts must be finite and non-negative")
    return x


def _column(terms: Sequence[str]) -> dict[str, int]:
    """Design column of every operator kind (and of "linear") in a term set."""
    return {kind: list(terms).index(term_of(kind)) for kind in ELEMENT_KINDS} | {
        "linear": list(terms).index("linear_macs")}


def op_amounts(ops: Mapping[str, Any], n: int, terms: Sequence[str] = TERMS
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per operator row: its program index, its design column and its amount (elements or MACs)."""
    if "op" not in ops or "program" not in ops:
        raise PredictorError("ops must have the arrays 'program' and 'op'")
    op = np.asarray(ops["op"], dtype=object)
    program = np.asarray(ops["program"], dtype=np.int64)
    m = len(op)
    if program.shape != (m,):
        raise PredictorError(f"ops array 'program' has shape {program.shape}, expected ({m},)")
    if m and (program.min() < 0 or program.max() >= n):
        raise PredictorError(f"ops array 'program' must index the {n} programs")
    if m == 0:
        return program, program, np.zeros(0)
    names, inverse = np.unique(op.astype(str), return_inverse=True)
    unknown = [name for name in names if name not in KIND_OF_OP]
    if unknown:
        raise PredictorError(f"ops hold the operator {unknown[0]!r}, not one of {', '.join(KIND_OF_OP)}")
    column = np.array([_column(terms)[KIND_OF_OP[name]] for name in names], dtype=np.int64)[inverse]
    f = {}
    for name in OP_FIELDS:
        if name in ops:
            f[name] = np.asarray(ops[name], dtype=np.float64)
        elif name not in _OPTIONAL_FIELDS:
            raise PredictorError(f"ops lack the array {name!r}")
        elif _OPTIONAL_FIELDS[name] is not None:
            f[name] = np.full(m, float(_OPTIONAL_FIELDS[name]))
        if name in f and f[name].shape != (m,):
            raise PredictorError(f"ops array {name!r} has shape {f[name].shape}, expected ({m},)")
    out_elems = f["out_c"] * f["out_h"] * f["out_w"]
    in_elems = f.get("in_elems", f["c"] * f["h"] * f["w"])
    kind = np.array([KIND_OF_OP[name] for name in names], dtype=object)[inverse]
    pool = (kind == "maxpool") | (kind == "avgpool")
    # A linear layer's MACs: every element it reads (its input features, whatever the input's rank) per output.
    amount = np.where(kind == "linear", in_elems * f["out_c"],
                      np.where(pool, out_elems * f["k"] * f["k"] + out_elems, in_elems + out_elems))
    amount = np.where(kind == "concat", concat_row_copies(f["n_inputs"], f["out_h"] * f["out_w"]), amount)
    return program, column, amount


def concat_row_copies(n_inputs: Any, pixels: Any) -> np.ndarray:
    """Row copies of concatenations as ExecuTorch's XNNPACK delegate runs them: every input row once, plus,
    for more than CONCAT_MAX_INPUTS inputs, one more input (the previous link's output) per extra link."""
    n_inputs = np.asarray(n_inputs, dtype=np.float64)
    links = np.maximum(0.0, np.ceil((n_inputs - CONCAT_MAX_INPUTS) / (CONCAT_MAX_INPUTS - 1)))
    return (n_inputs + links) * np.asarray(pixels, dtype=np.float64)


def spec_parts(specs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Validated program specs → their layers (conv/dwconv and linear, as layer-spec columns with a program
    index each), their other operators as `ops` arrays (linear layers included), node and layer counts."""
    from jcw.profiler import programs as spec_api
    from jcw.profiler.layerspec import LayerBatch

    try:
        specs = spec_api.load_many(specs)
    except spec_api.ProgramSpecError as exc:
        raise PredictorError(str(exc)) from None
    layers, layer_program, is_linear = [], [], []
    ops: dict[str, list] = {"program": [], "op": [], **{name: [] for name in OP_FIELDS}}
    n_nodes, n_conv = [], []
    for index, spec in enumerate(specs):
        kinds = {node["name"]: node["op"] for node in spec["nodes"]}
        weighted = spec_api.conv_layers(spec)
        for name, layer in weighted:
            layers.append(layer)
            layer_program.append(index)
            is_linear.append(kinds[name] == "linear")
            if kinds[name] == "linear":
                ops["program"].append(index)
                ops["op"].append("linear")
                for field, value in zip(OP_FIELDS, (layer.cin, 1, 1, layer.cout, 1, 1, 1, 1, layer.cin, 1)):
                    ops[field].append(value)
        for op in spec_api.other_ops(spec):
            ops["program"].append(index)
            for field in ("op", *OP_FIELDS):
                ops[field].append(op[field])
        n_nodes.append(len(spec["nodes"]))
        n_conv.append(len(weighted))
    arrays = {"program": np.array(ops["program"], dtype=np.int64), "op": np.array(ops["op"], dtype=object),
              **{name: np.array(ops[name], dtype=np.int64) for name in OP_FIELDS}}
    return {"n": len(specs), "specs": specs, "layers": LayerBatch.from_specs(layers),
            "layer_program": np.array(layer_program, dtype=np.int64), "is_linear": np.array(is_linear, dtype=bool),
            "ops": arrays, "n_nodes": np.array(n_nodes, dtype=np.int64), "n_conv": np.array(n_conv, dtype=np.int64)}


def per_program(values: np.ndarray, program: np.ndarray, n: int) -> np.ndarray:
    """Sum of per-layer values per program."""
    return np.bincount(program, weights=values, minlength=n) if len(program) else np.zeros(n)


class OtherTermsError(ValueError):
    """A saved program model whose law has other terms: written by another version of jcw."""


# ---- the model ----------------------------------------------------------------------------
def _nnls_relative(x: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error: minimise Σ ((x·β − y) / y)², β ≥ 0."""
    from scipy.optimize import nnls  # deferred: keeps `jcw` start-up fast

    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(x / scale / latency[:, None], np.ones(len(latency)), maxiter=50 * x.shape[1])
    return coef / scale


class ProgramModel(RegressorMixin, BaseEstimator):
    """latency_ms ≈ a·conv_ms + Σ b_kind·elements_kind + c·linear_MACs + d·nodes + e·layers + f (all ≥ 0),
    times exp(small trees on aggregate shares) when the `corrected` kind won grouped cross-validation.

    A scikit-learn regressor on designs (`design`): `fit(x, latency_ms, groups)`, `predict(x)` in ms and
    `score` (R²). Parameters are validated in `fit`: `kind` is "auto" or one of MODEL_KINDS, `cv_folds` the
    folds of that choice, `min_gain` the share within ±10 % the correction must add.

    A subclass for another runtime sets RUNTIME, TERMS (leading terms, then the operator kinds' elements,
    linear MACs, nodes, convs, program), CONV_TERMS (the conv layers' ms) and LAYOUT_TERMS (data movement
    counted with the element-wise share of the correction)."""

    RUNTIME = RUNTIME
    TERMS = TERMS
    CONV_TERMS = ("conv_ms",)
    LAYOUT_TERMS: tuple[str, ...] = ()

    def __init__(self, kind: str = "auto", *, cv_folds: int = 5, random_state: int = 0,
                 min_gain: float = MIN_GAIN) -> None:
        self.kind = kind
        self.cv_folds = cv_folds
        self.random_state = random_state
        self.min_gain = min_gain

    def _validate_params(self) -> None:
        from jcw.predictor.models import check_param  # deferred: the layer model is not needed to build a design

        if self.kind != "auto" and self.kind not in MODEL_KINDS:
            raise PredictorError(f"parameter 'kind' of the program model must be auto or one of "
                                 f"{', '.join(MODEL_KINDS)}, got {self.kind!r}")
        check_param("cv_folds", self.cv_folds, int, 2, 20)
        check_param("random_state", self.random_state, int, 0)
        check_param("min_gain", self.min_gain, float, 0.0, 1.0)

    # ---- training --------------------------------------------------------------------------
    def fit(self, x: np.ndarray, latency_ms: Any, groups: Sequence[Any] | None = None) -> ProgramModel:
        """Fit on a design (from `design`) and measured whole-program latencies in ms; `groups` (e.g. the
        architecture family of each program) decide the cross-validation folds of kind "auto"."""
        self._validate_params()
        x, y = np.asarray(x, dtype=np.float64), np.asarray(latency_ms, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.TERMS) or len(y) != len(x):
            raise PredictorError(f"a program design must have shape (n, {len(self.TERMS)}) and one latency per row")
        if len(y) < 4:
            raise PredictorError(f"a program model needs at least 4 measured programs, got {len(y)}")
        if not np.all(np.isfinite(y) & (y > 0)):
            raise PredictorError("every measured program needs a positive latency")
        self.cv_: dict[str, dict[str, dict[str, Any]]] = {}
        kind = self.kind
        if kind == "auto":
            # Held out by family (new architectures) and by program (new genomes of known ones): the
            # correction is kept only if it helps under both.
            splits = ("family", "program") if groups is not None and len(set(groups)) >= 3 else ("program",)
            self.cv_ = {k: {split: cross_validate(clone(self).set_params(kind=k), x, y,
                                                  groups if split == "family" else None, self.cv_folds,
                                                  self.random_state) for split in splits} for k in MODEL_KINDS}
            gain = min((self.cv_["corrected"][s]["within10"] or 0.0) - (self.cv_["linear"][s]["within10"] or 0.0)
                       for s in splits)
            # ... by at least two programs' worth of share: one program is within the noise of the metric.
            kind = "corrected" if gain >= max(self.min_gain, 2.0 / len(y)) else "linear"
        self.kind_ = kind
        self.coef_ = _nnls_relative(x, y)
        # An operator kind absent from training would otherwise cost nothing: it gets the pooled cost per
        # element of all element-moving operators seen (one coefficient for their summed elements, fitted
        # alongside the other terms): they are memory-bound alike. Measured against the median of the
        # per-kind coefficients, which a few unidentifiable kinds fitted at 0 drag to nothing.
        column = _column(self.TERMS)
        element_kinds = [k for k in ELEMENT_KINDS if k not in ROW_KINDS]
        self.borrowed_ = [k for k in element_kinds if not np.any(x[:, column[k]] > 0)]
        if self.borrowed_ and len(self.borrowed_) < len(element_kinds):
            columns = [column[k] for k in element_kinds]
            first = min(columns)
            pooled = _nnls_relative(np.column_stack([x[:, :first], x[:, columns].sum(axis=1),
                                                     x[:, max(columns) + 1:]]), y)[first]
            for k in self.borrowed_:
                self.coef_[column[k]] = pooled
        self.trees_ = None
        if kind == "corrected":
            from sklearn.ensemble import HistGradientBoostingRegressor  # deferred: start-up

            self.trees_ = HistGradientBoostingRegressor(
                max_iter=40, learning_rate=0.1, max_leaf_nodes=4, min_samples_leaf=max(3, len(y) // 10),
                l2_regularization=1.0, early_stopping=False, random_state=self.random_state)
            self.trees_.fit(self._features(x), np.log(y / self.linear_ms(x)))
        self.n_training_programs_ = int(len(y))
        return self

    # ---- prediction -----------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise PredictorError("this ProgramModel is not fitted yet; call fit first")

    def terms_ms(self, x: np.ndarray) -> np.ndarray:
        """(n, len(TERMS)) contribution of every term to the linear prediction, in ms."""
        self._check_fitted()
        return x * self.coef_

    def linear_ms(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(self.terms_ms(x).sum(axis=1), _MIN_MS)

    def _columns(self, names: Sequence[str]) -> list[int]:
        return [self.TERMS.index(name) for name in names]

    def _features(self, x: np.ndarray) -> np.ndarray:
        parts = self.terms_ms(x)
        column = _column(self.TERMS)
        total = np.maximum(parts.sum(axis=1), _MIN_MS)
        pool = parts[:, [column["maxpool"], column["avgpool"], column["gap"]]].sum(axis=1)
        elementwise = parts[:, [column[k] for k in ("add", "act", "concat")]
                            + self._columns(self.LAYOUT_TERMS)].sum(axis=1)
        fixed = parts[:, -3:].sum(axis=1)
        return np.column_stack([np.log(total), parts[:, self._columns(self.CONV_TERMS)].sum(axis=1) / total,
                                pool / total, elementwise / total, parts[:, column["linear"]] / total, fixed / total,
                                np.log(np.maximum(x[:, self.TERMS.index("nodes")], 1.0))])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Whole-program latency in ms for every row of a design."""
        linear = self.linear_ms(x)
        if self.trees_ is None:
            return linear
        return linear * np.exp(self.trees_.predict(self._features(x)))

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(latency_ms, conv_ms, other_ms): the conv layers' share of the prediction and all the rest."""
        latency = self.predict(x)
        conv = latency * self.terms_ms(x)[:, self._columns(self.CONV_TERMS)].sum(axis=1) / self.linear_ms(x)
        return latency, conv, latency - conv

    # ---- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        self._check_fitted()
        return {"runtime": self.RUNTIME, "kind": self.kind_, "terms": list(self.TERMS),
                "coef": {t: float(c) for t, c in zip(self.TERMS, self.coef_)}, "borrowed": list(self.borrowed_),
                "params": self.get_params(deep=False), "cv": self.cv_, "correction_features": list(CORRECTION_FEATURES),
                "n_training_programs": self.n_training_programs_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], trees: Any = None) -> ProgramModel:
        if state.get("runtime") == cls.RUNTIME and list(state.get("terms", ())) != list(cls.TERMS):
            raise OtherTermsError(f"its terms are {', '.join(state.get('terms', ()))}, not this jcw's")
        if state.get("runtime") != cls.RUNTIME or state.get("kind") not in MODEL_KINDS \
                or (state["kind"] == "corrected") != (trees is not None):
            raise ValueError("the program model does not fit this jcw's terms or files")
        model = cls(**dict(state["params"]))
        model.kind_ = state["kind"]
        coef = np.array([float(state["coef"][t]) for t in cls.TERMS])
        if not np.all(np.isfinite(coef) & (coef >= 0)):
            raise ValueError("program model coefficients must be finite and non-negative")
        model.coef_ = coef
        model.borrowed_ = list(state.get("borrowed", []))
        model.cv_ = dict(state.get("cv", {}))
        model.n_training_programs_ = int(state["n_training_programs"])
        model.trees_ = trees
        return model


# ---- evaluation helpers ---------------------------------------------------------------------
def errors(predicted: Any, measured: Any) -> dict[str, float]:
    """Share within ±10 %, median and 90th-percentile |relative error| (fractions)."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    if len(measured) == 0:
        return {"n": 0, "within10": float("nan"), "median": float("nan"), "p90": float("nan")}
    rel = np.abs(predicted / measured - 1.0)
    return {"n": int(len(rel)), "within10": float(np.mean(rel <= 0.10)), "median": float(np.median(rel)),
            "p90": float(np.percentile(rel, 90))}


def cross_validate(model: ProgramModel, x: np.ndarray, y: np.ndarray, groups: Sequence[Any] | None,
                   folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Pooled out-of-fold errors of a fixed-kind model (families held out whole when there are 3 or more)."""
    by_family = groups is not None and len(set(groups)) >= 3
    # Fewer than 3 families cannot hold one out and still learn: then every program is its own group.
    keys = [repr(g) for g in groups] if by_family else list(range(len(y)))
    n_groups = len(set(keys))
    predicted = np.full(len(y), np.nan)
    if n_groups >= 2:
        splitter = GroupKFold(n_splits=min(folds, n_groups), shuffle=True, random_state=seed)
        for train, test in splitter.split(x, y, groups=keys):
            if len(train) < 4:
                continue
            predicted[test] = clone(model).fit(x[train], y[train]).predict(x[test])
    done = np.isfinite(predicted)
    scores = errors(predicted[done], y[done])
    # JSON has no NaN: a CV that could not run says so with None
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in scores.items()} | {
        "grouped_by": "family" if by_family else "program"}
