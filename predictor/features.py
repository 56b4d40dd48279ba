"""Features of a layer for one convolution implementation, computed as pure numpy on a LayerBatch.

Owns the feature schema (versioned) and what each implementation sees of a layer's work and bytes;
the layers themselves, their checks and derived quantities are `profiler.layerspec.LayerBatch`'s.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jcw.predictor.errors import PredictorError
from jcw.profiler.layerspec import BYTES_PER_FLOAT, IMPLS, LayerBatch, LayerSpec, LayerSpecError

#: Bump whenever a feature is added, removed or computed differently: saved predictors record it.
FEATURE_SCHEMA_VERSION = 5

#: XNNPACK's microkernels compute output channels in tiles of 4, 8 or 16 lanes and output pixels in
#: blocks of 8 to 32, depending on the CPU; a partial tile wastes lanes. The phone's tile sizes are
#: not known in advance, so each candidate size is a feature and the trees pick the ones that matter.
CHANNEL_TILES = (4, 8, 16)
PIXEL_TILES = (8, 16, 32)
#: A wider tile only dense convolutions' GEMM kernels use (AVX-512 here); FEATURE_SCHEMA_VERSION 4.
DENSE_CONV_TILE = 32
#: Bytes after which an L1 data cache's set index repeats (64 sets of 64-byte lines: x86's 48 KiB 12-way L1d).
#: Rows of the sparse kernel's input that lie a multiple of it apart compete for one set; FEATURE_SCHEMA_VERSION 5.
L1_SET_PERIOD = 4096
CACHE_LINE = 64

# (name, monotone constraint): +1 where latency cannot fall when the quantity grows and the
# rest stays equal (more work or more bytes), 0 where the data must decide.
FEATURES: tuple[tuple[str, int], ...] = (
    ("is_dwconv", 0), ("is_sparse", 0),
    ("log_cin", 1), ("log_cout", 1), ("k", 0), ("stride", 0), ("log_h", 1), ("log_out_hw", 1),
    ("density", 1),
    *((f"cout_tile_waste_{tile}", 0) for tile in CHANNEL_TILES),
    (f"dense_conv_tile_waste_{DENSE_CONV_TILE}", 0),
    ("log_macs", 1), ("log_effective_macs", 1), ("log_nnz", 1), ("log_work", 1),
    ("log_input_bytes", 1), ("log_output_bytes", 1), ("log_weight_bytes", 1), ("log_im2col_bytes", 1),
    ("log_intensity", 0), ("log_reduction", 1), ("log_nnz_per_cout", 1),
    *((f"pixel_tile_waste_{tile}", 0) for tile in PIXEL_TILES),
    ("log_rows_per_l1_set", 1),
)
FEATURE_NAMES = tuple(name for name, _ in FEATURES)
MONOTONE = tuple(sign for _, sign in FEATURES)


def as_columns(layers: LayerBatch | Iterable[LayerSpec] | Mapping[str, Any]) -> LayerBatch:
    """Layer specs, a LayerBatch or a mapping of columns → a validated LayerBatch (a bad layer is a
    PredictorError naming the field and value)."""
    try:
        return LayerBatch.coerce(layers)
    except LayerSpecError as exc:
        raise PredictorError(str(exc)) from None


def rows_to_columns(rows: Iterable[Mapping[str, Any]]) -> LayerBatch:
    """Profile rows (dicts with the spec fields) → a validated LayerBatch."""
    try:
        return LayerBatch.from_rows(rows)
    except LayerSpecError as exc:
        raise PredictorError(str(exc)) from None


def physical(columns: LayerBatch | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The derived quantities of the layers (`LayerBatch.physical`, computed once per batch)."""
    return as_columns(columns).physical


def impl_quantities(phys: Mapping[str, np.ndarray], impl: str) -> dict[str, np.ndarray]:
    """Work, weight bytes, the im2col gather's bytes, rows and row segments, and total bytes as the given
    implementation sees them."""
    zeros = np.zeros_like(phys["macs"])
    if impl == "dense":
        work, weight_bytes, extra, strided = phys["macs"], phys["weight_bytes"], zeros, zeros
    elif impl == "sparse":
        # A non-zero costs its value plus its index in XNNPACK's sparse format.
        work, weight_bytes = phys["effective_macs"], phys["nnz"] * 2 * BYTES_PER_FLOAT
        extra, strided = phys["im2col_bytes"], phys["im2col_strided_bytes"]
    else:
        raise PredictorError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    # im2col gathers one row per (channel, ky, kx), each a call with its own bounds, and each row in one
    # segment per output line (memset the padding, copy the rest): a cost per segment that the bytes miss
    # when maps are small or channels few (a 3-channel 3x3 on a 128 px map spends most of its time there).
    rows = extra / (phys["out_hw"] * BYTES_PER_FLOAT)
    io_bytes = phys["input_bytes"] + phys["output_bytes"]
    return {"work": work, "io_bytes": io_bytes, "weight_bytes": weight_bytes, "im2col_bytes": extra,
            "im2col_rows": rows, "im2col_segments": rows * phys["out_h"], "im2col_strided_bytes": strided,
            "bytes": io_bytes + weight_bytes + extra}


def _tile_waste(count: np.ndarray, tile: int) -> np.ndarray:
    """Lanes computed per useful lane when `count` channels or pixels run in tiles of `tile`."""
    return np.ceil(count / tile) * tile / count


def _dense_conv_tile_waste(columns: Mapping[str, np.ndarray], cout: np.ndarray, impl: str) -> np.ndarray:
    """Lanes a dense (non-depthwise) convolution wastes in output-channel tiles of DENSE_CONV_TILE; 1 elsewhere.

    Wide-vector GEMM kernels step in 32-channel tiles (here a 48-channel 1x1 costs what a 64-channel one does);
    given to every layer, the same feature let depthwise and sparse trees split on lanes they never use.
    """
    if impl != "dense":
        return np.ones(len(cout))
    return np.where(columns["op"] == "dwconv", 1.0, _tile_waste(cout, DENSE_CONV_TILE))


def rows_per_l1_set(rows: np.ndarray, row_bytes: np.ndarray) -> np.ndarray:
    """Rows per L1 set when `rows` rows lie `row_bytes` apart (1 when each has a set of its own).

    Row i starts at i·row_bytes mod L1_SET_PERIOD; those offsets are the multiples of gcd(row_bytes, period),
    so at most period / max(gcd, line) sets hold the rows. A 576-row sparse 1x1 on a 64x64 map (16 KiB rows,
    all in one set) ran 1.7x slower per MAC than on 60-68 px maps here (benchmarks/bench_l1_sets.py).
    """
    gcd = np.gcd(row_bytes.astype(np.int64), L1_SET_PERIOD)
    sets = np.minimum(rows, L1_SET_PERIOD / np.maximum(gcd, CACHE_LINE))
    return rows / sets


def feature_matrix(columns: Mapping[str, np.ndarray], impl: str,
                   phys: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """(n, len(FEATURE_NAMES)) float64 matrix for one implementation, columns in FEATURE_NAMES order.

    The sparse kernel is an SpMM over the layer's im2col buffer (its input map when the layer is a plain 1x1):
    its input channels, map height and input bytes are the SpMM's (cin·k·k rows over the output map), so a
    k×k layer and the 1x1 of that shape share what the trees learn; FEATURE_SCHEMA_VERSION 5.
    """
    phys = physical(columns) if phys is None else phys
    q = impl_quantities(phys, impl)
    n = len(columns["op"])
    cout = columns["cout"].astype(np.float64)
    density = columns["density"]
    effective_macs, nnz = phys["effective_macs"], phys["nnz"]
    cin, height, input_bytes = columns["cin"].astype(np.float64), columns["h"], phys["input_bytes"]
    aliasing = np.ones(n)
    if impl == "dense":
        # The dense kernel multiplies the zeros too: its latency is that of the unpruned layer, and
        # features of the density would only let the trees fit noise between repeated shapes.
        density, effective_macs, nnz = np.ones(n), phys["macs"], phys["weights"]
    else:
        cin = cin * columns["k"] ** 2
        height = phys["out_h"]
        input_bytes = np.where(q["im2col_bytes"] > 0, q["im2col_bytes"], input_bytes)
        aliasing = rows_per_l1_set(cin, phys["out_hw"] * BYTES_PER_FLOAT)
    return np.column_stack([np.asarray(values, dtype=np.float64) for values in (
        columns["op"] == "dwconv", np.full(n, 1.0 if impl == "sparse" else 0.0),
        np.log2(cin), np.log2(cout), columns["k"], columns["stride"], np.log2(height),
        np.log2(phys["out_hw"]), density,
        *(_tile_waste(cout, tile) for tile in CHANNEL_TILES),
        _dense_conv_tile_waste(columns, cout, impl),
        np.log2(phys["macs"]), np.log2(effective_macs), np.log2(nnz), np.log2(q["work"]),
        np.log2(input_bytes), np.log2(phys["output_bytes"]), np.log2(q["weight_bytes"]),
        np.log2(1.0 + q["im2col_bytes"]), np.log2(q["work"] / q["bytes"]), np.log2(phys["weights"] / cout),
        np.log2(nnz / cout),
        *(_tile_waste(phys["out_hw"], tile) for tile in PIXEL_TILES),
        np.log2(aliasing),
    )])
