"""Program specs as jcw network files (.jcwnet, android_harness/native/NETFILE.md) for the sparse engine:
the spec's own nodes mapped one to one onto the engine's operators, with the weights and the reference
pair of program_build's seeded torch module, every weight-pruned groups-1 convolution marked sparse.

The profiler's twin of search/netexport.py: that one reads a traced user model, this one a program spec
(the profiler may not import the search). torch is imported inside the functions.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jcw.profiler import engine_plan, program_build, programs
from jcw.profiler.netfile import NetFileError, write_net

RUNTIME = "sparse"
SUFFIX = ".jcwnet"
INPUT = "input"
#: The engine's check: max |out - ref| <= tolerance * max(1, max |ref|). float32 kernels against torch's
#: float32 reference over a few dozen layers of unit-RMS activations stay well inside it.
TOLERANCE = 1e-3


def _activation(node: Mapping[str, Any]) -> str:
    return node.get("act") or "none"


def net_nodes(spec: Mapping[str, Any], module: Any) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], str]:
    """(engine nodes, their float32 tensors, output value) of a validated, engine-runnable spec whose torch
    module is `module` (program_build.to_torch). A flatten reads a pooled tensor, whose two layouts are the
    same bytes, so it is no engine node: its readers read its input."""
    value = {INPUT: INPUT}
    nodes: list[dict[str, Any]] = []
    tensors: dict[str, np.ndarray] = {}
    for node in spec["nodes"]:
        name, op = node["name"], node["op"]
        src = value[node["inputs"][0]]
        if op in ("conv", "linear"):
            layer = module.layers[module.keys[name]]
            tensors[f"{name}.weight"] = layer.weight.detach().numpy().astype(np.float32)
            tensors[f"{name}.bias"] = layer.bias.detach().numpy().astype(np.float32)
            params = {"weight": f"{name}.weight", "bias": f"{name}.bias"}
        if op == "conv":
            entry = {"op": "conv2d", "name": name, "input": src, "cin": layer.in_channels, "cout": node["cout"],
                     "k": node["k"], "stride": node["stride"], "pad": node["pad"], "groups": node["groups"],
                     "activation": _activation(node), "sparse": bool(engine_plan.runs_sparse(node)), **params}
        elif op == "linear":
            if node.get("act"):
                raise program_build.ProgramBuildError(
                    f"the sparse engine has no activation after a linear layer ({name!r})")
            entry = {"op": "linear", "name": name, "input": src, "cin": layer.in_features, "cout": node["cout"],
                     **params}
        elif op == "add":
            entry = {"op": "add", "name": name, "inputs": [src, value[node["inputs"][1]]],
                     "activation": _activation(node)}
        elif op == "maxpool":
            entry = {"op": "max_pool2d", "name": name, "input": src, "k": node["k"], "stride": node["stride"],
                     "pad": node["pad"]}
        elif op == "gap":
            entry = {"op": "global_avg_pool", "name": name, "input": src}
        else:  # flatten of a pooled tensor (engine_plan.check_runnable refused every other operator)
            value[name] = src
            continue
        entry["output"] = name  # spec node names are unique and never "input": valid SSA value names
        nodes.append(entry)
        value[name] = name
    return nodes, tensors, value[spec["nodes"][-1]["name"]]


def export_net(spec: Mapping[str, Any], path: str | Path, seed: int = 0) -> dict[str, Any]:
    """Write the spec as a network file (atomically) with program_build.to_torch(spec, seed)'s weights and
    its reference output on example_input(spec, seed) as the check pair.

    Returns {"path", "sparse_layers", "export_s", "bytes"}; ProgramBuildError (one sentence) when the spec is
    invalid, has an operator the engine cannot run, or a sparse layer pruned to no weight at all; OSError
    when the file cannot be written (as program_build.export_pte).
    """
    import torch
    start = time.perf_counter()
    try:
        spec = programs.validate(spec)
        engine_plan.check_runnable(spec)
    except (programs.ProgramSpecError, engine_plan.EnginePlanError) as exc:
        raise program_build.ProgramBuildError(str(exc)) from None
    module = program_build.to_torch(spec, seed)
    example = program_build.example_input(spec, seed)
    with torch.no_grad():
        reference = module(example)
    nodes, tensors, output = net_nodes(spec, module)
    path = Path(path)
    try:
        write_net(path, name=spec["name"], input_name=INPUT, input_shape=spec["input"], output=output, nodes=nodes,
                  tensors=tensors, check_input=example.numpy(), check_output=reference.numpy(), tolerance=TOLERANCE)
    except NetFileError as exc:
        if isinstance(exc.__context__, OSError):  # a disk problem, not this program's: the caller's to report
            raise exc.__context__ from None
        raise program_build.ProgramBuildError(str(exc)) from None
    return {"path": path, "sparse_layers": [n["name"] for n in nodes if n["op"] == "conv2d" and n["sparse"]],
            "export_s": time.perf_counter() - start, "bytes": path.stat().st_size}
