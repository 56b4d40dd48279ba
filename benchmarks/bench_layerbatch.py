"""What one column form costs: LayerBatch's checks and derived quantities against the column copies they
replaced (issue 12 part 1), on a search-sized batch and on profile-sized rows.

Anchor: the pre-issue-12 `predictor.features._validate_columns` + `physical` and `rows_to_columns`, kept
verbatim below and timed in the same run on the same data (best of --repeats). A ratio under 1 means
LayerBatch is faster. Reproduce: `.venv/bin/python benchmarks/bench_layerbatch.py [--individuals 200]`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jcw.profiler import networks  # noqa: E402
from jcw.profiler.layerspec import BYTES_PER_FLOAT, OPS, LayerBatch  # noqa: E402

INT_COLUMNS = ("cin", "cout", "k", "stride", "pad", "h", "w")


# ---- the anchor: the column copies as they were before LayerBatch (predictor/features.py) ----------
def old_validate_columns(columns):
    missing = [name for name in ("op", "cin", "cout", "k", "h", "w") if name not in columns]
    if missing:
        raise ValueError(f"layer columns lack the column '{missing[0]}'")
    op = np.asarray(columns["op"], dtype=object)
    n = len(op)
    out = {"op": op}
    for name in INT_COLUMNS:
        if name not in columns:
            continue
        values = np.asarray(columns[name])
        if values.shape != (n,):
            raise ValueError(f"layer column '{name}' has shape {values.shape}, expected ({n},)")
        if values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.all(values == np.round(values))):
            raise ValueError(f"layer column '{name}' must hold integers")
        out[name] = values.astype(np.int64, copy=False)
    out.setdefault("stride", np.ones(n, dtype=np.int64))
    out.setdefault("pad", out["k"] // 2)
    density = np.asarray(columns.get("density", np.ones(n)), dtype=np.float64)
    out["density"] = density
    if (~np.isin(op, OPS)).any():
        raise ValueError("bad op")
    for name, minimum in (("cin", 1), ("cout", 1), ("k", 1), ("stride", 1), ("h", 1), ("w", 1), ("pad", 0)):
        if (out[name] < minimum).any():
            raise ValueError(name)
    if (~((density > 0) & (density <= 1))).any():
        raise ValueError("density")
    if np.any((op == "dwconv") & (out["cin"] != out["cout"])):
        raise ValueError("dwconv")
    if np.any(out["k"] > np.minimum(out["h"], out["w"]) + 2 * out["pad"]):
        raise ValueError("k")
    return out


def old_physical(columns):
    cin, cout, k = (columns[n].astype(np.float64) for n in ("cin", "cout", "k"))
    dw = columns["op"] == "dwconv"
    out_h = (columns["h"] + 2 * columns["pad"] - columns["k"]) // columns["stride"] + 1
    out_w = (columns["w"] + 2 * columns["pad"] - columns["k"]) // columns["stride"] + 1
    out_hw = (out_h * out_w).astype(np.float64)
    weights = cout * np.where(dw, 1.0, cin) * k * k
    nnz = np.maximum(1.0, np.round(columns["density"] * weights))
    macs = out_hw * weights
    return {"out_h": out_h, "out_w": out_w, "out_hw": out_hw, "weights": weights, "nnz": nnz, "macs": macs,
            "effective_macs": macs * columns["density"], "input_bytes": cin * columns["h"] * columns["w"] * 4,
            "output_bytes": cout * out_hw * BYTES_PER_FLOAT, "weight_bytes": weights * BYTES_PER_FLOAT,
            "im2col_bytes": np.where((columns["k"] == 1) & (columns["stride"] == 1) & (columns["pad"] == 0), 0.0,
                                     cin * k * k * out_hw * BYTES_PER_FLOAT)}


def old_rows_to_columns(rows):
    cols = {"op": np.array([r["op"] for r in rows], dtype=object)}
    for name in INT_COLUMNS:
        cols[name] = np.array([r[name] for r in rows], dtype=np.int64)
    cols["density"] = np.array([r["density"] for r in rows], dtype=np.float64)
    return cols


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--individuals", type=int, default=200, help="genomes per search batch (default 200)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    layers = [layer for net in networks.NETWORKS for layer in networks.network_layers(net)]
    rows = [{**{k: layer[k] for k in ("op", "cin", "cout", "k", "stride", "h", "w")}, "pad": layer["k"] // 2,
             "density": float(rng.choice(np.arange(1, 11) / 10))} for layer in layers]
    base = old_rows_to_columns(rows)
    # A search batch: every real-network layer once per individual, random densities.
    columns = {name: np.tile(values, args.individuals) for name, values in base.items()}
    columns["density"] = rng.choice(np.arange(1, 11) / 10, size=len(columns["op"]))
    profile_rows = rows * 20  # about the size of a profile's training rows
    np.testing.assert_array_equal(LayerBatch.from_arrays(columns).physical["macs"],
                                  old_physical(old_validate_columns(columns))["macs"])

    print(f"search batch: {len(columns['op'])} layers ({args.individuals} individuals x {len(layers)} real-network "
          f"layers); profile rows: {len(profile_rows)}; best of {args.repeats}")
    for what, new, old in (
        ("check + derived quantities, search batch",
         lambda: LayerBatch.from_arrays(columns).physical, lambda: old_physical(old_validate_columns(columns))),
        ("rows -> checked columns, profile rows",
         lambda: LayerBatch.from_rows(profile_rows), lambda: old_validate_columns(old_rows_to_columns(profile_rows))),
    ):
        t_new, t_old = best_of(args.repeats, new), best_of(args.repeats, old)
        print(f"  {what}: LayerBatch {t_new * 1e3:.2f} ms, anchor (old column copies) {t_old * 1e3:.2f} ms, "
              f"ratio {t_new / t_old:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
