"""The sparse network engine's layout plan (android_harness/native/net_engine.cpp) replayed in Python, for
many genomes of one network at once: which convolutions run sparse, and how many NHWC <-> NCHW
conversions (and elements transposed) one run of each makes — on segments, or inside XNNPACK's own sparse
inference where the device rewrites (net_cluster.cpp). The predictor prices them; tests hold the replay to
the engine's own `conversions` count.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jcw.profiler import programs

#: Program-spec operators the engine runs (flatten is no engine node: it follows a global pool, where both
#: layouts are the same bytes).
ENGINE_OPS = ("conv", "linear", "add", "maxpool", "gap", "flatten")


class EnginePlanError(ValueError):
    """A program the sparse engine cannot run; one sentence naming the node."""


def runs_sparse(node: Mapping[str, Any], density: Any = None) -> Any:
    """Whether the engine runs a program node sparse: a groups-1 convolution whose weights are pruned."""
    if node["op"] != "conv" or node.get("groups", 1) != 1:
        return False if density is None else np.zeros(np.shape(density), dtype=bool)
    d = node.get("density", 1.0) if density is None else np.asarray(density, dtype=np.float64)
    return d < 1.0


def check_runnable(spec: Mapping[str, Any]) -> None:
    """EnginePlanError for the first node the engine cannot run (concat, average pooling, a standalone
    activation, a flatten of a spatial tensor)."""
    dims = programs.shapes(spec)
    for node in spec["nodes"]:
        if node["op"] not in ENGINE_OPS:
            raise EnginePlanError(f"the sparse engine cannot run program node {node['name']!r} ({node['op']})")
        c, h, w = dims[node["inputs"][0]]
        if node["op"] == "flatten" and h * w != 1:
            raise EnginePlanError(f"the sparse engine flattens pooled tensors only; {node['name']!r} reads a "
                                  f"{c}x{h}x{w} tensor")


def _pointwise(node: Mapping[str, Any]) -> bool:
    return node.get("groups", 1) == 1 and node["k"] == 1 and node["stride"] == 1 and node["pad"] == 0


def _depthwise(node: Mapping[str, Any]) -> bool:
    return node.get("groups", 1) > 1 and node["k"] in (3, 5) and node["stride"] in (1, 2) \
        and node["pad"] == node["k"] // 2


def xnnpack_sparse_inference(program_runner: Any) -> bool:
    """Whether a device's XNNPACK rewrites qualifying networks to NCHW: the .pte runner's header says so
    (ptebench 0.3.0 on; an older header, or none, means the engine ran segments there)."""
    return isinstance(program_runner, Mapping) and bool(program_runner.get("xnnpack_sparse_inference"))


def layout_plan(nodes: Sequence[Mapping[str, Any]], elements: Mapping[str, np.ndarray],
                layout_free: Mapping[str, np.ndarray], sparse: Mapping[str, np.ndarray],
                n: int) -> dict[str, Any]:
    """The engine's layout plan for n genomes at once: {"conversions": (n,) count and "conversion_elems": (n,)
    elements transposed per run, "nchw_depthwise": {name: (n,) whether that depthwise convolution runs NCHW,
    on XNNPACK's CHW kernels, instead of NHWC}}.

    nodes: program nodes (name, op, inputs, k, stride, pad, groups) in order; elements[v], layout_free[v]:
    (n,) element count of value v ("input" included) and whether its two layouts are the same bytes
    (C == 1 or H*W == 1); sparse[name]: (n,) whether that convolution runs sparse. The rules are
    net_engine.cpp's: the input is NCHW; a value keeps its producer's layout; sparse convolutions read and
    write NCHW; a depthwise 3x3/5x5 (stride 1 or 2, pad k/2) whose input is NCHW stays NCHW when the
    network has a sparse layer (the NCHW build is loaded then); dense convolutions and max pools read
    NHWC; an add takes its first non-layout-free operand's layout; a global pool reads either; the output
    is read NCHW. A value is converted at most once per run, on first need.
    """
    any_sparse = np.zeros(n, dtype=bool)
    for mask in sparse.values():
        any_sparse |= np.asarray(mask, dtype=bool)
    nchw = {"input": np.ones(n, dtype=bool)}  # home layout: True = NCHW
    converted: dict[str, np.ndarray] = {}
    count, moved = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float64)
    nchw_depthwise: dict[str, np.ndarray] = {}

    def need(value: str, want_nchw: np.ndarray) -> None:
        nonlocal count, moved
        fresh = (nchw[value] != want_nchw) & ~layout_free[value] & ~converted.get(value, np.zeros(n, dtype=bool))
        converted[value] = converted.get(value, np.zeros(n, dtype=bool)) | fresh
        count = count + fresh
        moved = moved + np.where(fresh, elements[value], 0.0)

    for node in nodes:
        op, src = node["op"], node["inputs"][0]
        if op == "conv":
            is_sparse = np.asarray(sparse.get(node["name"], np.zeros(n, dtype=bool)), dtype=bool)
            depthwise_nchw = np.zeros(n, dtype=bool)
            if _depthwise(node):
                depthwise_nchw = any_sparse & nchw[src] & ~layout_free[src]
                nchw_depthwise[node["name"]] = depthwise_nchw
            # a depthwise layer that stays NCHW reads its input as it is: no need() for it
            need(src, np.where(depthwise_nchw, nchw[src], is_sparse))
            home = is_sparse | depthwise_nchw
        elif op == "add":
            other = node["inputs"][1]
            home = np.where(~layout_free[src], nchw[src], np.where(~layout_free[other], nchw[other], False))
            need(src, home)
            need(other, home)
        elif op == "maxpool":
            home = np.zeros(n, dtype=bool)
            need(src, home)
        elif op in ("gap", "flatten", "linear"):
            home = nchw[src]  # layout-free outputs: which one does not matter
        else:
            raise EnginePlanError(f"the sparse engine cannot run program node {node['name']!r} ({op})")
        nchw[node["name"]] = home
    last = nodes[-1]["name"]
    need(last, np.ones(n, dtype=bool))
    return {"conversions": count, "conversion_elems": moved, "nchw_depthwise": nchw_depthwise}


def xnnpack_cluster(nodes: Sequence[Mapping[str, Any]], input_channels: int) -> dict[str, Any] | None:
    """The nodes XNNPACK's own sparse inference would run as one NCHW cluster, by net_cluster.cpp's structural
    conditions: a 3x3 stride-2 stem (pad 1, groups 1) on the 3-channel input, then only 1x1 stride-1
    convolutions, 3x3/5x5 depthwise ones (groups > 1, as layout_plan tells them) and adds, reading only the
    cluster's values, up to a global pool that only flatten and linear layers follow. {"end": index after the
    pool, "stem": its first convolution's name, "pointwise": names of its 1x1 convolutions, "depthwise": names
    of its depthwise ones}, or None."""
    first = nodes[0] if nodes else None
    if first is None or input_channels != 3 or first["op"] != "conv" or first.get("groups", 1) != 1 \
            or (first["k"], first["stride"], first["pad"]) != (3, 2, 1) or first["inputs"] != ["input"]:
        return None
    inside, pointwise, depthwise, end = {first["name"]}, [], [], 0
    for index, node in enumerate(nodes[1:], start=1):
        if end:
            if node["op"] not in ("flatten", "linear") or inside & set(node["inputs"]) - {nodes[end - 1]["name"]}:
                return None
            continue
        if not set(node["inputs"]) <= inside:
            return None
        inside.add(node["name"])
        if node["op"] == "gap":
            end = index + 1
        elif node["op"] == "conv" and _pointwise(node):
            pointwise.append(node["name"])
        elif node["op"] == "conv" and _depthwise(node):
            depthwise.append(node["name"])
        elif node["op"] != "add":
            return None
    return {"end": end, "stem": first["name"], "pointwise": pointwise, "depthwise": depthwise} if end else None


def xnnpack_rewrites(weights: np.ndarray, densities: np.ndarray) -> np.ndarray:
    """(n,) whether the cluster's 1x1 weights are more than 2/3 zeros (XNNPACK's condition), from (n, P) weight
    counts and densities of its P 1x1 convolutions."""
    weights = np.asarray(weights, dtype=np.float64)
    zeros = (weights * (1.0 - np.asarray(densities, dtype=np.float64))).sum(axis=1)
    return zeros * 3 > weights.sum(axis=1) * 2


def apply_xnnpack(plan: dict[str, Any], sparse: dict[str, np.ndarray], cluster: Mapping[str, Any],
                  rewritten: np.ndarray, input_elements: np.ndarray) -> None:
    """Where `rewritten` ((n,) bool), the engine runs the cluster inside XNNPACK's runtime instead: every 1x1
    convolution of it with the SpMM kernel (at its density, 1.0 included), the stem dense (XNNPACK's
    HWC2CHW convolution, whatever its density), every depthwise one NCHW, and one conversion (the input, for
    the stem's NHWC read). Updates layout_plan's `plan` and `sparse` in place."""
    rewritten = np.asarray(rewritten, dtype=bool)
    if cluster["stem"] in sparse:
        sparse[cluster["stem"]] = np.asarray(sparse[cluster["stem"]], dtype=bool) & ~rewritten
    for name in cluster["pointwise"]:
        sparse[name] = np.asarray(sparse.get(name, False), dtype=bool) | rewritten
    for name in cluster["depthwise"]:
        plan["nchw_depthwise"][name] = np.asarray(plan["nchw_depthwise"].get(name, False), dtype=bool) | rewritten
    plan["conversions"] = np.where(rewritten, 1, plan["conversions"])
    plan["conversion_elems"] = np.where(rewritten, input_elements, plan["conversion_elems"])


def spec_plan(spec: Mapping[str, Any], xnnpack_sparse_inference: bool = False) -> dict[str, Any]:
    """The engine's plan for one program spec (sparse where a groups-1 convolution's density < 1):
    {"sparse": names of the convolutions run sparse, "nchw_depthwise": names of the depthwise ones run NCHW,
    "conversions": count, "conversion_elems": elements transposed per run, "path": "xnnpack", "segments" or
    None (nothing sparse)}. `xnnpack_sparse_inference`: the device's XNNPACK rewrites qualifying clusters (the
    program runner's header says so), where the engine's default path runs them that way."""
    check_runnable(spec)
    dims = programs.shapes(spec)
    elements = {v: np.array([c * h * w], dtype=np.float64) for v, (c, h, w) in dims.items()}
    free = {v: np.array([c == 1 or h * w == 1]) for v, (c, h, w) in dims.items()}
    sparse = {node["name"]: np.array([bool(runs_sparse(node))]) for node in spec["nodes"] if node["op"] == "conv"}
    any_sparse = any(mask[0] for mask in sparse.values())
    plan = layout_plan(spec["nodes"], elements, free, sparse, 1)
    path = "segments" if any_sparse else None
    cluster = xnnpack_cluster(spec["nodes"], dims["input"][0]) if xnnpack_sparse_inference and any_sparse else None
    if cluster is not None:
        by_name = {node["name"]: node for node in spec["nodes"]}
        weights = np.array([[dims[name][0] * dims[by_name[name]["inputs"][0]][0] for name in cluster["pointwise"]]])
        densities = np.array([[by_name[name].get("density", 1.0) for name in cluster["pointwise"]]])
        rewritten = xnnpack_rewrites(weights, densities)
        apply_xnnpack(plan, sparse, cluster, rewritten, elements["input"])
        path = "xnnpack" if rewritten[0] else path
    return {"sparse": {name for name, mask in sparse.items() if mask[0]},
            "nchw_depthwise": {name for name, mask in plan["nchw_depthwise"].items() if mask[0]},
            "conversions": int(plan["conversions"][0]), "conversion_elems": int(plan["conversion_elems"][0]),
            "path": path}
