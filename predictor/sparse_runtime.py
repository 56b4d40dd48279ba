"""Whole-program latency under the runtime "sparse": the kit's network engine running a pruned network, as the
program model's non-negative linear law over the engine's own parts — the NHWC dense ms of the convolutions it
runs dense, the dense ms of the depthwise ones it runs NCHW between sparse layers, the sparse ms of the layers
it runs sparse (each at its density), the layout conversions it makes (profiler/engine_plan.py: elements
transposed and count), and the other operators as under executorch.

Owns those parts of program specs (and, for the search, of per-layer arrays: engine_parts), SparseProgramModel,
and prediction from specs or from vectorised parts.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jcw.predictor import programs as executorch_programs
from jcw.predictor.errors import PredictorError
from jcw.predictor.programs import ELEMENT_KINDS, ProgramModel, design, per_program, term_of

RUNTIME = "sparse"
#: The engine's own terms, in the order `predict_sparse_program_parts` takes them (each (n,) per program):
#: dense_conv_ms: dense-kernel ms (`predict_dense`) of the conv and dwconv layers run NHWC; nchw_dwconv_ms: the
#: same for the depthwise layers run NCHW (engine_plan's nchw_depthwise); sparse_conv_ms: sparse-kernel ms
#: (`predict_impl(..., "sparse")`, at each layer's density) of the layers run sparse (engine_plan.runs_sparse);
#: conversion_elems and conversions: engine_plan.layout_plan's elements transposed and count per run.
ENGINE_TERMS = ("dense_conv_ms", "nchw_dwconv_ms", "sparse_conv_ms", "conversion_elems", "conversions")
TERMS = (*ENGINE_TERMS, *map(term_of, ELEMENT_KINDS), "linear_macs", "nodes", "convs", "program")
#: What the sparse runtime answers without a program model: every layer as the engine runs it, summed.
FALLBACK = "sum of layers as the engine runs them (no sparse program model: the profile had no sparse programs)"
ENGINE_SUM = "sum of layers as the engine runs them"


class SparseProgramModel(ProgramModel):
    """latency_ms ≈ a·dense_conv_ms + b·nchw_dwconv_ms + c·sparse_conv_ms + d·conversion_elems + e·conversions
    + the executorch law's other terms (all ≥ 0), corrected like ProgramModel when cross-validation says so."""

    RUNTIME = RUNTIME
    TERMS = TERMS
    CONV_TERMS = ENGINE_TERMS[:3]
    LAYOUT_TERMS = ENGINE_TERMS[3:]


def spec_parts(specs: Any, xnnpack_sparse_inference: bool = False) -> dict[str, Any]:
    """jcw.predictor.programs.spec_parts plus the engine's plan of each spec: per layer whether it runs sparse
    ("runs_sparse") or as an NCHW depthwise ("nchw_depthwise"), per program "conversions" and
    "conversion_elems" — inside XNNPACK's own sparse inference where the device's XNNPACK rewrites
    (`xnnpack_sparse_inference`, the program runner's header) and the network qualifies. PredictorError
    naming the program for one the engine cannot run."""
    from jcw.profiler import engine_plan
    from jcw.profiler.programs import conv_layers

    parts = executorch_programs.spec_parts(specs)
    runs_sparse, nchw_depthwise = [], []
    counts, moved = np.zeros(parts["n"]), np.zeros(parts["n"])
    for index, spec in enumerate(parts["specs"]):
        try:
            plan = engine_plan.spec_plan(spec, xnnpack_sparse_inference)
        except engine_plan.EnginePlanError as exc:
            raise PredictorError(f"program {index}: {exc}") from None
        counts[index], moved[index] = plan["conversions"], plan["conversion_elems"]
        for name, _ in conv_layers(spec):
            runs_sparse.append(name in plan["sparse"])
            nchw_depthwise.append(name in plan["nchw_depthwise"])
    return {**parts, "runs_sparse": np.array(runs_sparse, dtype=bool),
            "nchw_depthwise": np.array(nchw_depthwise, dtype=bool), "conversions": counts, "conversion_elems": moved}


def engine_columns(layer_model: Any, parts: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One call of the layer predictor over every layer of spec_parts: the ENGINE_TERMS per program, plus
    "engine_sum_ms" (every layer as the engine runs it, linear layers dense) and "best_sum_ms" (the faster
    kernel of every layer: what the kit reported before whole programs)."""
    n, program = parts["n"], parts["layer_program"]
    if len(program):
        predicted = layer_model.predict(parts["layers"])
        dense, sparse, best = predicted["dense_ms"], predicted["sparse_ms"], predicted["best_ms"]
    else:
        dense = sparse = best = np.zeros(0)
    run_sparse, nchw = parts["runs_sparse"], parts["nchw_depthwise"]
    nhwc = ~run_sparse & ~nchw & ~parts["is_linear"]
    out = {"dense_conv_ms": per_program(dense[nhwc], program[nhwc], n),
           "nchw_dwconv_ms": per_program(dense[nchw], program[nchw], n),
           "sparse_conv_ms": per_program(sparse[run_sparse], program[run_sparse], n),
           "conversion_elems": np.asarray(parts["conversion_elems"], dtype=np.float64),
           "conversions": np.asarray(parts["conversions"], dtype=np.float64),
           "best_sum_ms": per_program(best, program, n)}
    engine_ms = np.where(run_sparse, sparse, dense)
    out["engine_sum_ms"] = per_program(engine_ms, program, n)
    return out


def engine_parts(dense_ms: Any, sparse_ms: Any, runs_sparse: Any, nchw_depthwise: Any, is_conv: Any,
                 plan: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """ENGINE_TERMS of n genomes of one network, from (n, L) per-layer arrays over its L weighted layers:
    dense_ms and sparse_ms (the layer predictor's ms; sparse_ms may be NaN where a layer does not run sparse),
    runs_sparse (engine_plan.runs_sparse) and nchw_depthwise (layout_plan's "nchw_depthwise"), is_conv ((L,):
    False for linear layers, which the law prices by their MACs), plan = engine_plan.layout_plan(...)."""
    dense, sparse = np.asarray(dense_ms, dtype=np.float64), np.asarray(sparse_ms, dtype=np.float64)
    run_sparse, nchw = np.asarray(runs_sparse, dtype=bool), np.asarray(nchw_depthwise, dtype=bool)
    conv = np.broadcast_to(np.asarray(is_conv, dtype=bool), dense.shape)
    if not dense.shape == sparse.shape == run_sparse.shape == nchw.shape or dense.ndim != 2:
        raise PredictorError("dense_ms, sparse_ms, runs_sparse and nchw_depthwise must be (n, layers) arrays of one "
                             "shape")
    return {"dense_conv_ms": np.where(conv & ~run_sparse & ~nchw, dense, 0.0).sum(axis=1),
            "nchw_dwconv_ms": np.where(conv & nchw, dense, 0.0).sum(axis=1),
            "sparse_conv_ms": np.where(conv & run_sparse, sparse, 0.0).sum(axis=1),
            "conversion_elems": np.asarray(plan["conversion_elems"], dtype=np.float64),
            "conversions": np.asarray(plan["conversions"], dtype=np.float64)}


def sparse_design(engine: Mapping[str, Any], ops: Mapping[str, Any], n_nodes: Any, n_conv: Any) -> np.ndarray:
    """(n, len(TERMS)) design of the sparse runtime from its vectorised parts (see predict_parts)."""
    missing = [name for name in ENGINE_TERMS if name not in engine]
    if missing:
        raise PredictorError(f"the sparse runtime's parts lack {missing[0]!r} (they are {', '.join(ENGINE_TERMS)})")
    columns = [np.asarray(engine[name], dtype=np.float64) for name in ENGINE_TERMS]
    if any(c.ndim != 1 or c.shape != columns[0].shape for c in columns):
        raise PredictorError("the sparse runtime's parts must be 1-d arrays of one length, one value per program")
    return design(np.column_stack(columns), ops, n_nodes, n_conv, TERMS)


def predict_parts(model: SparseProgramModel | None, linear_dense_ms: Any, engine: Mapping[str, Any],
                  ops: Mapping[str, Any], n_nodes: Any, n_conv: Any) -> np.ndarray:
    """Whole-program ms from the parts; without a model, the engine's layers summed (`linear_dense_ms` is a
    callable giving the linear layers' dense ms per program, used only then)."""
    x = sparse_design(engine, ops, n_nodes, n_conv)
    if model is not None:
        return model.predict(x)
    return x[:, :3].sum(axis=1) + linear_dense_ms(ops, len(x))


def predict_specs(layer_model: Any, model: SparseProgramModel | None, specs: Any,
                  xnnpack_sparse_inference: bool = False) -> dict[str, np.ndarray]:
    """Whole-program latency of program specs on the sparse engine: latency_ms, conv_ms (its conv layers'
    share), other_ms (the rest: conversions, other operators, linear layers, fixed costs), layers_ms (every
    layer as the engine runs it, summed: the answer without a program model), sparse_layers (how many run
    sparse) and conversions (per run). `xnnpack_sparse_inference`: as for spec_parts."""
    parts = spec_parts(specs, xnnpack_sparse_inference)
    engine = engine_columns(layer_model, parts)
    x = sparse_design(engine, parts["ops"], parts["n_nodes"], parts["n_conv"])
    count = per_program(parts["runs_sparse"].astype(float), parts["layer_program"], parts["n"])
    common = {"layers_ms": engine["engine_sum_ms"], "sparse_layers": count.astype(np.int64),
              "conversions": engine["conversions"].astype(np.int64)}
    if model is None:
        conv = x[:, :3].sum(axis=1)
        return {"latency_ms": engine["engine_sum_ms"], "conv_ms": conv, "other_ms": engine["engine_sum_ms"] - conv,
                **common}
    latency, conv, other = model.split(x)
    return {"latency_ms": latency, "conv_ms": conv, "other_ms": other, **common}
