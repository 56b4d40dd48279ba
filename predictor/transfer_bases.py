"""The bases the scale and residual transfer strategies (predictor.transfer) start from: the prior rescaled per
(op, impl) group by a robust line in log space, or the prior times a factor plus a fixed cost per thread-pool
dispatch. Owns their fit and application.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jcw.predictor import transfer_trees
from jcw.predictor.features import physical

#: The (op, impl) groups each base is fitted per, as "op/impl".
GROUPS = ("conv/dense", "conv/sparse", "dwconv/dense")
#: Slopes of the per-operator line (latency ∝ prior^(1 + slope)); beyond this the data is noise.
MAX_SLOPE = 0.5
#: Rows below which an (op, impl) group takes the pooled line.
_MIN_GROUP_ROWS = 3
#: The residual strategy's affine base is at least this share of the rescaled prior: a negative cost per
#: dispatch (a new device that wakes its threads faster than the prior's) takes no more off a small layer.
MIN_BASE_SHARE = 0.25

_group_keys = transfer_trees.group_keys


def _huber_weights(residual: np.ndarray) -> np.ndarray:
    """Huber weights of the residuals at 1.345 robust standard deviations. Labels disturbed by other load are
    far off; these weights stop them from steering a fit."""
    spread = max(1.4826 * float(np.median(np.abs(residual))), 1e-3)
    return np.minimum(1.0, 1.345 * spread / np.maximum(np.abs(residual), 1e-12))


def _robust_line(x: np.ndarray, r: np.ndarray, offset0: float, slope0: float, penalty: float
                 ) -> tuple[float, float]:
    """r ≈ a + s·x by Huber-weighted least squares, with `penalty` pseudo-observations pulling a toward
    offset0 and s toward slope0: a handful of noisy rows cannot tilt the line, many rows decide it."""
    weights = np.ones(len(x))
    a, s = offset0, slope0
    for _ in range(25):
        sw, swx, swxx = weights.sum(), (weights * x).sum(), (weights * x * x).sum()
        matrix = np.array([[sw + penalty, swx], [swx, swxx + penalty]])
        target = np.array([(weights * r).sum() + penalty * offset0, (weights * x * r).sum() + penalty * slope0])
        a, s = np.linalg.solve(matrix, target)
        weights = _huber_weights(r - a - s * x)
    return float(a), float(np.clip(s, -MAX_SLOPE, MAX_SLOPE))


def fit_scale(op: np.ndarray, impl: np.ndarray, log_prior: np.ndarray, log_ratio: np.ndarray,
              shrinkage: float) -> dict[str, list[float]]:
    """Per (op, impl) group: [offset, slope, centre, low, high] of log(measured / prior) against log(prior).

    The pooled line comes first (slope shrunk toward 0: a plain rescaling), each group's is shrunk toward it;
    a group with too few rows takes it. Prediction clips log(prior) to [low, high]: beyond the data the
    factor stays constant instead of following the slope.
    """
    centre = float(np.median(log_prior))
    x = log_prior - centre
    pooled = _robust_line(x, log_ratio, float(np.median(log_ratio)), 0.0, shrinkage)
    keys = _group_keys(op, impl)
    out = {}
    for key in GROUPS:
        mask = keys == key
        line = _robust_line(x[mask], log_ratio[mask], *pooled, shrinkage) if mask.sum() >= _MIN_GROUP_ROWS \
            else pooled
        out[key] = [line[0], line[1], centre, float(log_prior.min()), float(log_prior.max())]
    return out


def apply_scale(scale: Mapping[str, Sequence[float]], op: np.ndarray, impl: str, log_prior: np.ndarray
                ) -> np.ndarray:
    """log(new / prior) for layers of one implementation."""
    out = np.zeros(len(log_prior))
    keys = _group_keys(op, impl)
    for key, (offset, slope, centre, low, high) in scale.items():
        mask = keys == key
        out[mask] = offset + slope * (np.clip(log_prior[mask], low, high) - centre)
    return out


def thread_pool_dispatches(columns: Mapping[str, np.ndarray], impl: str | np.ndarray,
                           phys: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Thread-pool dispatches one run of each layer makes: its operator's, and for the sparse kernel the im2col
    gather's before it (every layer but an unpadded stride-1 1x1; the runner parallelises both)."""
    phys = physical(columns) if phys is None else phys
    return 1.0 + ((np.asarray(impl) == "sparse") & (phys["im2col_bytes"] > 0))


def _robust_affine(prior_us: np.ndarray, dispatches: np.ndarray, latency: np.ndarray, start: Sequence[float],
                   penalty: float, unit_us: float) -> list[float]:
    """[a, b] of latency ≈ a·prior + b·dispatches, least squares on the relative error with Huber weights;
    `penalty` pseudo-rows pull a toward start[0] and b toward start[1] (b measured in a·unit_us, a typical
    layer's time, so the pull is alike for both)."""
    x = np.column_stack([prior_us / latency, dispatches / latency])
    a0, b0 = float(start[0]), float(start[1])
    pull = penalty * np.array([1.0 / a0 ** 2, 1.0 / (a0 * unit_us) ** 2])
    weights = np.ones(len(latency))
    coef = np.array([a0, b0])
    for _ in range(25):
        matrix = (x * weights[:, None]).T @ x + np.diag(pull)
        coef = np.linalg.solve(matrix, (x * weights[:, None]).sum(axis=0) + pull * np.array([a0, b0]))
        weights = _huber_weights(x @ coef - 1.0)
    return [float(max(coef[0], 1e-9)), float(coef[1])]


def fit_affine(op: np.ndarray, impl: np.ndarray, prior_us: np.ndarray, dispatches: np.ndarray,
               latency: np.ndarray, shrinkage: float) -> dict[str, list[float]]:
    """Per (op, impl) group: [a, b] of latency ≈ a·prior + b·thread-pool dispatches, the residual strategy's
    base. A second thread, or another thread pool, halves or scales the work but not the fixed cost of waking
    and joining the workers, so small layers gain less than large ones; in log space (the scale strategy's
    line) that bend is not a line. The pooled fit (a plain rescaling with no fixed cost unless the rows say
    otherwise) comes first; each group's is shrunk toward it, and a group with too few rows takes it."""
    unit_us = float(np.median(prior_us))
    start = [float(np.median(latency / prior_us)), 0.0]
    pooled = _robust_affine(prior_us, dispatches, latency, start, shrinkage, unit_us)
    keys = _group_keys(op, impl)
    out = {}
    for key in GROUPS:
        mask = keys == key
        out[key] = _robust_affine(prior_us[mask], dispatches[mask], latency[mask], pooled, shrinkage, unit_us) \
            if mask.sum() >= _MIN_GROUP_ROWS else pooled
    return out


def apply_affine(affine: Mapping[str, Sequence[float]], op: np.ndarray, impl: str | np.ndarray,
                 prior_us: np.ndarray, dispatches: np.ndarray) -> np.ndarray:
    """The residual strategy's base latency (µs) of each layer; a group without a fit keeps the prior's."""
    out = np.array(prior_us, dtype=np.float64)
    keys = _group_keys(op, impl)
    for key, (a, b) in affine.items():
        mask = keys == key
        scaled = a * out[mask]
        out[mask] = np.maximum(scaled + b * dispatches[mask], MIN_BASE_SHARE * scaled)
    return out
