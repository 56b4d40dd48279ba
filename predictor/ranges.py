"""Training ranges of a predictor: per operator, the smallest and largest of each layer dimension, of the
density and of the MACs it was trained on; flags the layers a prediction extrapolates to.

Stored in the card (`training_ranges`) as plain JSON, so a card written before the ranges existed
just answers "unknown" (None) instead of a guess.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jcw.predictor.features import physical
from jcw.profiler.layerspec import OPS

#: Columns whose range is kept; "macs" is derived (a layer can have every dimension in range and still
#: be far costlier than anything measured).
RANGE_COLUMNS = ("cin", "cout", "k", "stride", "h", "w", "density", "macs")

Ranges = dict[str, dict[str, list[float]]]


def _values(columns: Mapping[str, np.ndarray], name: str, phys: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.asarray(phys["macs"] if name == "macs" else columns[name], dtype=np.float64)


def training_ranges(columns: Mapping[str, np.ndarray]) -> Ranges:
    """{op: {column: [min, max]}} over validated columns (as_columns) of the training layers."""
    phys = physical(columns)
    out: Ranges = {}
    for op in OPS:
        mask = columns["op"] == op
        if mask.any():
            out[op] = {name: [float(_values(columns, name, phys)[mask].min()),
                              float(_values(columns, name, phys)[mask].max())] for name in RANGE_COLUMNS}
    return out


def union(first: Ranges | None, second: Ranges | None) -> Ranges | None:
    """Ranges covering both (a transfer predictor knows what its prior was trained on, and its own data)."""
    if not first or not second:
        return first or second
    out: Ranges = {}
    for op in set(first) | set(second):
        a, b = first.get(op), second.get(op)
        if a is None or b is None:
            out[op] = dict(a or b)
            continue
        out[op] = {name: [min(a[name][0], b[name][0]), max(a[name][1], b[name][1])]
                   for name in RANGE_COLUMNS if name in a and name in b}
    return out


def valid(ranges: Any) -> bool:
    """Whether a card's `training_ranges` has the shape this module writes (a hand-edited card may not)."""
    if not isinstance(ranges, dict) or not ranges:
        return False
    for op, columns in ranges.items():
        if op not in OPS or not isinstance(columns, dict):
            return False
        for bounds in columns.values():
            if not (isinstance(bounds, list) and len(bounds) == 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bounds)):
                return False
    return True


def extrapolated(ranges: Ranges | None, columns: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Per layer, True when any of its values lies outside the training range of its operator (or the
    operator was never trained on); None when the ranges are unknown."""
    if not valid(ranges):
        return None
    phys = physical(columns)
    n = len(columns["op"])
    outside = np.zeros(n, dtype=bool)
    for op in OPS:
        mask = columns["op"] == op
        if not mask.any():
            continue
        bounds = ranges.get(op)
        if bounds is None:
            outside |= mask
            continue
        for name, (low, high) in bounds.items():
            if name not in RANGE_COLUMNS:
                continue
            values = _values(columns, name, phys)
            outside |= mask & ((values < low) | (values > high))
    return outside
