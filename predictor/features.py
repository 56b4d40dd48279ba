"""Features of a layer for one convolution implementation, computed as pure numpy on columns.

Owns the column normalisation (LayerSpec lists or `to_columns` dicts), the derived physical
quantities (MACs, non-zeros, bytes, arithmetic intensity) and the versioned feature schema.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from predictor.errors import PredictorError
from profiler.layerspec import BYTES_PER_FLOAT, IMPLS, OPS, LayerSpec, to_columns

#: Bump whenever a feature is added, removed or computed differently: saved predictors record it.
FEATURE_SCHEMA_VERSION = 3

INT_COLUMNS = ("cin", "cout", "k", "stride", "pad", "h", "w")
#: XNNPACK's microkernels compute output channels in tiles of 4, 8 or 16 lanes and output pixels in
#: blocks of 8 to 32, depending on the CPU; a partial tile wastes lanes. The phone's tile sizes are
#: not known in advance, so each candidate size is a feature and the trees pick the ones that matter.
CHANNEL_TILES = (4, 8, 16)
PIXEL_TILES = (8, 16, 32)

# (name, monotone constraint): +1 where latency cannot fall when the quantity grows and the
# rest stays equal (more work or more bytes), 0 where the data must decide.
FEATURES: tuple[tuple[str, int], ...] = (
    ("is_dwconv", 0), ("is_sparse", 0),
    ("log_cin", 1), ("log_cout", 1), ("k", 0), ("stride", 0), ("log_h", 1), ("log_out_hw", 1),
    ("density", 1),
    *((f"cout_tile_waste_{tile}", 0) for tile in CHANNEL_TILES),
    ("log_macs", 1), ("log_effective_macs", 1), ("log_nnz", 1), ("log_work", 1),
    ("log_input_bytes", 1), ("log_output_bytes", 1), ("log_weight_bytes", 1), ("log_im2col_bytes", 1),
    ("log_intensity", 0), ("log_reduction", 1), ("log_nnz_per_cout", 1),
    *((f"pixel_tile_waste_{tile}", 0) for tile in PIXEL_TILES),
)
FEATURE_NAMES = tuple(name for name, _ in FEATURES)
MONOTONE = tuple(sign for _, sign in FEATURES)


def as_columns(layers: Iterable[LayerSpec] | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Layer specs or a columns dict → validated columns (op object array, int64 shapes, density)."""
    if isinstance(layers, Mapping):
        return _validate_columns(layers)
    layers = list(layers)
    if not all(isinstance(layer, LayerSpec) for layer in layers):
        raise PredictorError("layers must be a list of LayerSpec or a columns dict as from to_columns")
    return to_columns(layers)


def _validate_columns(columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    missing = [name for name in ("op", "cin", "cout", "k", "h", "w") if name not in columns]
    if missing:
        raise PredictorError(f"layer columns lack the column '{missing[0]}'")
    op = np.asarray(columns["op"], dtype=object)
    n = len(op)
    out: dict[str, np.ndarray] = {"op": op}
    for name in INT_COLUMNS:
        if name not in columns:
            continue
        values = np.asarray(columns[name])
        if values.shape != (n,):
            raise PredictorError(f"layer column '{name}' has shape {values.shape}, expected ({n},)")
        if values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.all(values == np.round(values))):
            raise PredictorError(f"layer column '{name}' must hold integers")
        out[name] = values.astype(np.int64, copy=False)
    out.setdefault("stride", np.ones(n, dtype=np.int64))
    out.setdefault("pad", out["k"] // 2)
    density = np.asarray(columns.get("density", np.ones(n)), dtype=np.float64)
    if density.shape != (n,):
        raise PredictorError(f"layer column 'density' has shape {density.shape}, expected ({n},)")
    out["density"] = density
    bad_op = ~np.isin(op, OPS)
    if bad_op.any():
        raise PredictorError(f"layer column 'op' must hold {' or '.join(OPS)}, got {op[bad_op][0]!r}")
    for name, minimum in (("cin", 1), ("cout", 1), ("k", 1), ("stride", 1), ("h", 1), ("w", 1), ("pad", 0)):
        low = out[name] < minimum
        if low.any():
            raise PredictorError(f"layer column '{name}' must be >= {minimum}, got {out[name][low][0]}")
    bad_density = ~((density > 0) & (density <= 1))
    if bad_density.any():
        raise PredictorError(f"layer column 'density' must be in (0, 1], got {density[bad_density][0]}")
    dw = op == "dwconv"
    if np.any(dw & (out["cin"] != out["cout"])):
        raise PredictorError("layer column 'cout' must equal 'cin' for every dwconv")
    if np.any(out["k"] > np.minimum(out["h"], out["w"]) + 2 * out["pad"]):
        raise PredictorError("layer column 'k' must not exceed the padded input")
    return out


def physical(columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The derived quantities of `LayerSpec`, vectorised (same formulas, float64)."""
    cin, cout, k = (columns[n].astype(np.float64) for n in ("cin", "cout", "k"))
    dw = columns["op"] == "dwconv"
    out_h = (columns["h"] + 2 * columns["pad"] - columns["k"]) // columns["stride"] + 1
    out_w = (columns["w"] + 2 * columns["pad"] - columns["k"]) // columns["stride"] + 1
    out_hw = (out_h * out_w).astype(np.float64)
    weights = cout * np.where(dw, 1.0, cin) * k * k
    nnz = np.maximum(1.0, np.round(columns["density"] * weights))
    macs = out_hw * weights
    return {
        "out_h": out_h, "out_w": out_w, "out_hw": out_hw, "weights": weights, "nnz": nnz, "macs": macs,
        "effective_macs": macs * columns["density"],
        "input_bytes": cin * columns["h"] * columns["w"] * BYTES_PER_FLOAT,
        "output_bytes": cout * out_hw * BYTES_PER_FLOAT,
        "weight_bytes": weights * BYTES_PER_FLOAT,
        # The sparse path feeds SpMM directly only for an unpadded stride-1 1x1 convolution; every
        # other layer first gathers an im2col buffer of cin*k*k rows (the runner times it too).
        "im2col_bytes": np.where((columns["k"] == 1) & (columns["stride"] == 1) & (columns["pad"] == 0), 0.0,
                                 cin * k * k * out_hw * BYTES_PER_FLOAT),
    }


def impl_quantities(phys: Mapping[str, np.ndarray], impl: str) -> dict[str, np.ndarray]:
    """Work, weight bytes and total bytes as the given implementation sees them."""
    if impl == "dense":
        work, weight_bytes, extra = phys["macs"], phys["weight_bytes"], 0.0
    elif impl == "sparse":
        # A non-zero costs its value plus its index in XNNPACK's sparse format.
        work, weight_bytes, extra = phys["effective_macs"], phys["nnz"] * 2 * BYTES_PER_FLOAT, phys["im2col_bytes"]
    else:
        raise PredictorError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    io_bytes = phys["input_bytes"] + phys["output_bytes"]
    return {"work": work, "io_bytes": io_bytes, "weight_bytes": weight_bytes,
            "im2col_bytes": np.broadcast_to(extra, work.shape).astype(np.float64),
            "bytes": io_bytes + weight_bytes + extra}


def feature_matrix(columns: Mapping[str, np.ndarray], impl: str,
                   phys: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """(n, len(FEATURE_NAMES)) float64 matrix for one implementation, columns in FEATURE_NAMES order."""
    phys = physical(columns) if phys is None else phys
    q = impl_quantities(phys, impl)
    n = len(columns["op"])
    cout = columns["cout"].astype(np.float64)
    density = columns["density"]
    effective_macs, nnz = phys["effective_macs"], phys["nnz"]
    if impl == "dense":
        # The dense kernel multiplies the zeros too: its latency is that of the unpruned layer, and
        # features of the density would only let the trees fit noise between repeated shapes.
        density, effective_macs, nnz = np.ones(n), phys["macs"], phys["weights"]
    return np.column_stack([np.asarray(values, dtype=np.float64) for values in (
        columns["op"] == "dwconv", np.full(n, 1.0 if impl == "sparse" else 0.0),
        np.log2(columns["cin"]), np.log2(cout), columns["k"], columns["stride"], np.log2(columns["h"]),
        np.log2(phys["out_hw"]), density,
        *(np.ceil(cout / tile) * tile / cout for tile in CHANNEL_TILES),
        np.log2(phys["macs"]), np.log2(effective_macs), np.log2(nnz), np.log2(q["work"]),
        np.log2(phys["input_bytes"]), np.log2(phys["output_bytes"]), np.log2(q["weight_bytes"]),
        np.log2(1.0 + q["im2col_bytes"]), np.log2(q["work"] / q["bytes"]), np.log2(phys["weights"] / cout),
        np.log2(nnz / cout),
        *(np.ceil(phys["out_hw"] / tile) * tile / phys["out_hw"] for tile in PIXEL_TILES),
    )])


def rows_to_columns(rows: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Profile rows (dicts with the spec fields) → columns."""
    cols: dict[str, np.ndarray] = {"op": np.array([r["op"] for r in rows], dtype=object)}
    for name in INT_COLUMNS:
        cols[name] = np.array([r[name] for r in rows], dtype=np.int64)
    cols["density"] = np.array([r["density"] for r in rows], dtype=np.float64)
    return cols
