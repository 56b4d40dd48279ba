"""The residual transfer strategy's last stage (predictor.transfer): what the rescaled prior and the residual
trees still miss on the new device's measured layers, carried to layers of nearby shape by a Gaussian kernel
(a shrunk Nadaraya-Watson average within each operator group). Owns its design, fit, prediction and state.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jcw.predictor import transfer_trees
from jcw.predictor.features import physical

#: Kernel settings grouped cross-validation chooses among, (width, shrinkage): the width in standard
#: deviations of the measured layers' design, the shrinkage in measured layers' worth of a zero correction
#: (a lone neighbour at distance 0 moves a prediction by 1 / (1 + shrinkage) of its residual).
LOCAL_SETTINGS = tuple((width, shrinkage) for width in (0.35, 0.5, 0.7) for shrinkage in (0.1, 0.25, 0.5))
DESIGN = ("k", "stride", "log_cin", "log_cout", "log_out_hw", "log_weight_bytes", "log_io_bytes",
          "sparse_log_density")
_FROM_TREES = [transfer_trees.DESIGN.index(name) for name in DESIGN[:-1]]
_CHUNK = 4096


def design(columns: Mapping[str, np.ndarray], impl: str | np.ndarray,
           phys: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """(n, len(DESIGN)): the residual trees' design (transfer_trees.design) without the tile remainders (a
    distance over them would call 63 and 65 channels far apart), plus log2 density for the sparse kernel, whose
    cost follows it (0 for the dense kernel, whose cost does not)."""
    phys = physical(columns) if phys is None else phys
    sparse = np.broadcast_to(np.asarray(impl) == "sparse", (len(columns["op"]),))
    density = np.where(sparse, np.log2(np.asarray(columns["density"], dtype=np.float64)), 0.0)
    return np.column_stack([transfer_trees.design(columns, phys)[:, _FROM_TREES], density])


class LocalResidual:
    """correction(x) = Σ w_i r_i / (Σ w_i + shrinkage), w_i = exp(-|x - x_i|² / width²) over the measured
    layers i of x's operator group, distances in units of the measured design's standard deviation.

    Far from every measured layer the correction fades to 0 (the prior and the trees alone); on a measured
    shape it returns most of that layer's residual. Boosted trees of a few hundred rows are shrunk hard and
    cannot isolate one anomalous shape; a second thread that makes a 2-3 MiB working set fit the two cores'
    L2 caches speeds some layers up 3x where their neighbours gain 2x (benchmarks/RESULTS.md).
    """

    def __init__(self, width: float, shrinkage: float) -> None:
        self.width = float(width)
        self.shrinkage = float(shrinkage)

    def fit(self, points: np.ndarray, groups: np.ndarray, residual: np.ndarray,
            scale: np.ndarray | None = None) -> LocalResidual:
        """Remember the measured layers' design `points`, operator groups and log residuals; `scale` (per design
        column) defaults to their standard deviation."""
        self.points_ = np.asarray(points, dtype=np.float64)
        self.groups_ = np.asarray(groups, dtype=str)
        self.residual_ = np.asarray(residual, dtype=np.float64)
        self.scale_ = feature_scale(self.points_) if scale is None else np.asarray(scale, dtype=np.float64)
        return self

    def predict(self, points: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """The log-latency correction of each layer (0 where its group has no measured layer)."""
        points = np.asarray(points, dtype=np.float64) / self.scale_
        groups = np.asarray(groups, dtype=str)
        known = self.points_ / self.scale_
        out = np.zeros(len(points))
        for key in np.unique(groups):
            mine = self.groups_ == key
            if not mine.any():
                continue
            ref, res = known[mine], self.residual_[mine]
            index = np.flatnonzero(groups == key)
            for low in range(0, len(index), _CHUNK):  # bounds the distance matrix of a large search population
                rows = index[low:low + _CHUNK]
                weight = np.exp(-_squared_distances(points[rows], ref) / self.width ** 2)
                out[rows] = (weight @ res) / (weight.sum(axis=1) + self.shrinkage)
        return out

    def state(self) -> dict[str, Any]:
        return {"width": self.width, "shrinkage": self.shrinkage, "design": list(DESIGN),
                "scale": [float(v) for v in self.scale_], "points": [[float(v) for v in p] for p in self.points_],
                "groups": [str(g) for g in self.groups_], "residual": [float(v) for v in self.residual_]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], known_groups: Sequence[str]) -> LocalResidual:
        """Rebuilt from state(); ValueError (or KeyError, TypeError) when it is malformed."""
        if list(state["design"]) != list(DESIGN):
            raise ValueError("its local residual was fitted on another design")
        width, shrinkage = float(state["width"]), float(state["shrinkage"])
        scale = np.array([float(v) for v in state["scale"]])
        points = np.array([[float(v) for v in p] for p in state["points"]]).reshape(-1, len(DESIGN))
        groups = [str(g) for g in state["groups"]]
        residual = np.array([float(v) for v in state["residual"]])
        if not (width > 0 and shrinkage >= 0 and len(scale) == len(DESIGN) and np.all(scale > 0)
                and len(points) == len(groups) == len(residual) and set(groups) <= set(known_groups)
                and np.isfinite(points).all() and np.isfinite(residual).all()):
            raise ValueError("its local residual is inconsistent")
        return cls(width, shrinkage).fit(points, np.array(groups, dtype=str), residual, scale)


def fold_corrections(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], scale: np.ndarray,
                     residuals: np.ndarray) -> dict[tuple[float, float], np.ndarray]:
    """{setting: (n_test, m) corrections} of every LOCAL_SETTINGS kernel fitted on the (points, groups) `train`
    with each of the m residual columns of `residuals`, at the (points, groups) `test`: what LocalResidual(
    *setting).fit(...).predict(...) gives, with one distance matrix for all (cross-validation tries 90
    kernels per fold)."""
    (train_points, train_groups), (test_points, test_groups) = train, test
    d2 = _squared_distances(test_points / scale, train_points / scale)
    d2[np.asarray(test_groups, dtype=str)[:, None] != np.asarray(train_groups, dtype=str)[None, :]] = np.inf
    out = {}
    for width in sorted({width for width, _ in LOCAL_SETTINGS}):
        weight = np.exp(-d2 / width ** 2)
        total, weighted = weight.sum(axis=1)[:, None], weight @ residuals
        for setting in LOCAL_SETTINGS:
            if setting[0] == width:
                out[setting] = weighted / (total + setting[1])
    return out


def _squared_distances(query: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(len(query), len(known)) squared Euclidean distances, never below 0 (rounding)."""
    return np.maximum((query ** 2).sum(axis=1)[:, None] + (known ** 2).sum(axis=1)[None, :] - 2.0 * query @ known.T,
                      0.0)


def feature_scale(points: np.ndarray) -> np.ndarray:
    """Each design column's standard deviation (1 for a column that does not vary)."""
    spread = np.asarray(points, dtype=np.float64).std(axis=0)
    return np.where(spread > 1e-9, spread, 1.0)
