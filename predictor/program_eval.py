"""Whole-program evaluation for `jcw train`: fit the program model of a runtime (executorch, or the sparse
engine's) on a profile's "train" programs with the fitted layer predictor, score it on "holdout" (zoo
architectures at unseen genomes) and "unseen" (architectures no plan drew from) next to the old
sum-of-convolutions prediction and the label floor.

Returns plain dicts: the CLI table, report.md and the card all show the same figures.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jcw.predictor.errors import PredictorError
from jcw.predictor.programs import ProgramModel, design, errors, per_program, spec_parts

Row = Mapping[str, Any]
OURS = "ours"
#: What the kit reported before whole-program latency: the faster kernel of every conv layer, summed.
BASELINE = "baseline: sum of faster conv kernel (old)"
SUM_DENSE = "sum of dense layers"
LABEL_FLOOR = "label floor"
EVAL_SAMPLES = ("holdout", "unseen")
MIN_TRAIN_PROGRAMS = 4


def program_data(layer_model: Any, rows: Sequence[Row]) -> dict[str, Any]:
    """Design matrix, measured ms and the two sum-of-layers predictions of measured program rows.

    One call of the layer predictor covers all layers of all programs: dense ms for the design (ExecuTorch
    runs pruned weights dense), the faster of dense and sparse at each layer's density for the old baseline.
    """
    parts = spec_parts([r["spec"] for r in rows])
    n = parts["n"]
    if len(parts["layer_program"]):
        predicted = layer_model.predict(parts["layers"])
        dense, best = predicted["dense_ms"], predicted["best_ms"]
    else:
        dense = best = np.zeros(0)
    linear = parts["is_linear"]
    conv_ms = per_program(dense[~linear], parts["layer_program"][~linear], n)
    baseline, sum_dense = per_program(best, parts["layer_program"], n), per_program(dense, parts["layer_program"], n)
    return {"x": design(conv_ms, parts["ops"], parts["n_nodes"], parts["n_conv"]),
            "baseline_ms": baseline, "sum_dense_ms": sum_dense,
            "references": {BASELINE: baseline, SUM_DENSE: sum_dense}, **_measured(rows)}


def _measured(rows: Sequence[Row]) -> dict[str, Any]:
    return {"measured_ms": np.array([r["latency_us"] for r in rows], dtype=np.float64) / 1000.0,
            "family": [r["family"] for r in rows], "sample": np.array([r["sample"] for r in rows], dtype=object),
            "rounds": [list(r.get("round_latencies") or ()) for r in rows]}


def sparse_program_data(layer_model: Any, rows: Sequence[Row], xnnpack_sparse_inference: bool = False
                        ) -> dict[str, Any]:
    """program_data for the sparse engine's programs: its design (predictor.sparse_runtime) and, as
    references, the old anchor (faster kernel per layer) and the engine's layers summed."""
    from jcw.predictor import sparse_runtime
    parts = sparse_runtime.spec_parts([r["spec"] for r in rows], xnnpack_sparse_inference)
    engine = sparse_runtime.engine_columns(layer_model, parts)
    return {"x": sparse_runtime.sparse_design(engine, parts["ops"], parts["n_nodes"], parts["n_conv"]),
            "baseline_ms": engine["best_sum_ms"],
            "references": {BASELINE: engine["best_sum_ms"], sparse_runtime.ENGINE_SUM: engine["engine_sum_ms"]},
            **_measured(rows)}


def label_floor(rounds: Sequence[Sequence[float]]) -> dict[str, Any] | None:
    """Two labels made the way stored latencies are (fastest of the odd rounds against fastest of the even
    rounds), for programs with at least 4 rounds; None when no program has that many."""
    pairs = [(min(r[1::2]), min(r[0::2])) for r in rounds if len(r) >= 4]
    if not pairs:
        return None
    odd, even = np.array(pairs).T
    return errors(odd, even)


def scored(model: ProgramModel, data: Mapping[str, Any], mask: np.ndarray) -> dict[str, Any]:
    measured = data["measured_ms"][mask]
    return {"n": int(mask.sum()), "models": {
        OURS: errors(model.predict(data["x"][mask]), measured),
        **{name: errors(values[mask], measured) for name, values in data["references"].items()}},
        "label_floor": label_floor([r for r, m in zip(data["rounds"], mask) if m])}


def evaluate_programs(layer_model: Any, rows: Sequence[Row], *, seed: int = 0, kind: str = "auto",
                      say: Callable[[str], None] = lambda message: None,
                      runtime: str = "executorch", xnnpack_sparse_inference: bool = False
                      ) -> dict[str, Any] | None:
    """Fit the `runtime`'s program model ("executorch" or "sparse") on "train" programs, score "holdout" and
    "unseen" (and "train" itself, in sample). `xnnpack_sparse_inference`: the device's XNNPACK rewrites
    qualifying networks (sparse runtime only; profiler.engine_plan).

    None when the profile has fewer than MIN_TRAIN_PROGRAMS measured training programs.
    """
    from jcw.predictor.sparse_runtime import RUNTIME as SPARSE
    from jcw.predictor.sparse_runtime import SparseProgramModel
    if runtime not in ("executorch", SPARSE):
        raise ValueError(f"runtime must be executorch or {SPARSE}, got {runtime!r}")
    train_rows = [r for r in rows if r["sample"] == "train"]
    if len(train_rows) < MIN_TRAIN_PROGRAMS:
        return None
    say("fitting the whole-program model" + (" of the sparse engine" if runtime == SPARSE else ""))
    data = sparse_program_data(layer_model, rows, xnnpack_sparse_inference) if runtime == SPARSE \
        else program_data(layer_model, rows)
    train = data["sample"] == "train"
    model = (SparseProgramModel if runtime == SPARSE else ProgramModel)(kind, random_state=seed).fit(
        data["x"][train], data["measured_ms"][train], [f for f, t in zip(data["family"], train) if t])
    sets = {}
    for sample in EVAL_SAMPLES:
        mask = data["sample"] == sample
        if mask.any():
            sets[sample] = scored(model, data, mask)
    sets["train (in sample)"] = scored(model, data, train)
    counts = {s: int((data["sample"] == s).sum()) for s in ("train", *EVAL_SAMPLES)}
    return {"model": model, "sets": sets, "counts": counts, "data": data, "runtime": runtime}


def card_metrics(evaluated: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The card's `program_metrics`: per set, ours / baseline / sum of dense layers and the label floor."""
    if evaluated is None:
        return None
    return {name: {"n": entry["n"], **entry["models"], LABEL_FLOOR: entry["label_floor"]}
            for name, entry in evaluated["sets"].items()} | {"counts": evaluated["counts"],
                                                             "cv": evaluated["model"].cv_}


def rows_table(evaluated: Mapping[str, Any]) -> list[list[str]]:
    """One row per (set, predictor) plus the set's label floor: the table `jcw train` prints."""
    out = []
    kind = evaluated["model"].kind_
    for name, entry in evaluated["sets"].items():
        floor = entry["label_floor"]
        if floor is not None:
            out.append([name, LABEL_FLOOR, str(floor["n"]), _pct(floor["within10"]), _pct(floor["median"]),
                        _pct(floor["p90"])])
        for model, m in entry["models"].items():
            label = f"{OURS} (program model, {kind})" if model == OURS else model
            out.append([name, label, str(m["n"]), _pct(m["within10"]), _pct(m["median"]), _pct(m["p90"])])
    return out


HEADER = ["programs", "predictor", "n", "±10%", "median |err|", "p90 |err|"]


def _pct(value: Any) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


def by_runtime(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Measured program rows split by runtime ("executorch", "sparse"); rows of a profile from before the
    sparse runtime carry none and are ExecuTorch's."""
    out: dict[str, list[Row]] = {"executorch": [], "sparse": []}
    for row in rows:
        out.setdefault(row.get("runtime") or "executorch", []).append(row)
    return out


def check_threads(rows: Sequence[Row], threads: int | None) -> list[Row]:
    """Program rows at the layer rows' thread count (the program model composes layers timed alike)."""
    if threads is None:
        return list(rows)
    kept = [r for r in rows if r["threads"] == threads]
    if rows and not kept:
        counts = sorted({r["threads"] for r in rows})
        raise PredictorError(f"the profile's programs were timed at threads {counts}, its layers at {threads}; "
                             "re-profile so both use one thread count")
    return kept
