"""The residual trees of the `residual` transfer strategy (predictor.transfer): one small gradient-boosted model
per operator group on what the rescaled prior leaves of the new device's log-latency, fitted on the few shape
features a build or device difference shows in. Owns their design, fit and prediction.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jcw.predictor.features import physical
from jcw.predictor.models import _one_thread

#: Output channels modulo these SIMD tile widths: a kernel's remainder path shows in them (on ExecuTorch's
#: against Debian's XNNPACK, dense convolutions with 5-7 channels past a multiple of 8 keep the old speed).
REMAINDER_TILES = (8, 16)
DESIGN = ("k", "stride", "log_cin", "log_cout", "log_out_hw", *(f"cout_mod_{t}" for t in REMAINDER_TILES),
          "log_weight_bytes", "log_io_bytes")


def group_keys(op: np.ndarray, impl: str | np.ndarray) -> np.ndarray:
    """Each layer's operator group, "op/impl" (the keys of the rescaling and of the trees)."""
    return np.char.add(np.char.add(np.asarray(op, dtype=str), "/"), np.asarray(impl, dtype=str))


def design(columns: Mapping[str, np.ndarray], phys: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """(n, len(DESIGN)) matrix. Within one group the operator and implementation are fixed; what a different
    build changes is which microkernel and tile a layer's shape lands on, and what a second thread or another
    cache changes is which working sets fit, so the shape and two byte counts (weights; input plus output) are
    offered. The full feature set let a few hundred rows split on byte counts that do not carry over to unseen
    shapes; these two added 1.9-3.8 points at 200 layers on six profiles of both pairs (benchmarks/RESULTS.md)."""
    phys = physical(columns) if phys is None else phys
    cout = np.asarray(columns["cout"], dtype=np.float64)
    return np.column_stack([np.asarray(columns["k"], dtype=np.float64), np.asarray(columns["stride"], dtype=np.float64),
                            np.log2(columns["cin"]), np.log2(cout), np.log2(phys["out_hw"]),
                            *(cout % tile for tile in REMAINDER_TILES),
                            np.log2(phys["weight_bytes"]), np.log2(phys["input_bytes"] + phys["output_bytes"])])


def clipped(target: np.ndarray) -> np.ndarray:
    """A log-latency target clipped at 3 robust deviations from its median. A label disturbed by other load
    can be off by orders of magnitude; clipped, it still says "slower here" without pulling a whole leaf
    after it."""
    centre = float(np.median(target))
    spread = max(1.4826 * float(np.median(np.abs(target - centre))), 0.02)
    return np.clip(target, centre - 3 * spread, centre + 3 * spread)


def fit(columns: Mapping[str, np.ndarray], impl: np.ndarray, target: np.ndarray, *, n_estimators: int,
        learning_rate: float, max_leaf_nodes: int, min_samples_leaf: int, random_state: int) -> dict[str, Any]:
    """{"op/impl": fitted trees} for each group with at least 2 × min_samples_leaf rows; a smaller group
    keeps its rescaled prior alone. One pooled model split its few leaves across the groups, whose device
    differences have nothing in common (on pair B of benchmarks/RESULTS.md, a 1.0-1.25× pattern for dense
    convolutions, none for sparse ones)."""
    from sklearn.ensemble import HistGradientBoostingRegressor  # deferred: start-up
    target = clipped(target)
    keys = group_keys(columns["op"], impl)
    x = design(columns)
    trees = {}
    for key in sorted(set(keys)):
        mask = keys == key
        if mask.sum() < 2 * min_samples_leaf:
            continue
        model = HistGradientBoostingRegressor(
            max_iter=n_estimators, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
            min_samples_leaf=min_samples_leaf, l2_regularization=1.0, early_stopping=False,
            random_state=random_state)
        with _one_thread():
            trees[str(key)] = model.fit(x[mask], target[mask])
    return trees


def predict(trees: Mapping[str, Any], columns: Mapping[str, np.ndarray], impl: str | np.ndarray,
            phys: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """The trees' log-latency correction per layer (0 for a group without trees)."""
    keys = group_keys(columns["op"], impl)
    out = np.zeros(len(keys))
    x = None
    for key, model in trees.items():
        mask = keys == key
        if mask.any():
            x = design(columns, phys) if x is None else x
            with _one_thread():
                out[mask] = model.predict(x[mask])
    return out
