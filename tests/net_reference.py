"""A tiny reference executor for jcw network files (android_harness/native/NETFILE.md) written with torch
functional ops: what the sparse engine must compute, so tests can check an exported graph against the
torch model it came from without the engine.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _activate(value: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(value)
    if activation == "relu6":
        return torch.clamp(value, 0.0, 6.0)
    assert activation == "none", activation
    return value


def run_network(nodes: list[Mapping[str, Any]], tensors: Mapping[str, np.ndarray], input_name: str,
                output: str, x: np.ndarray) -> np.ndarray:
    """The network's output for input `x` (float64 throughout, so the reference is tighter than float32)."""
    def tensor(key):
        return None if key is None else torch.from_numpy(np.asarray(tensors[key], dtype=np.float64))

    values = {input_name: torch.from_numpy(np.asarray(x, dtype=np.float64))}
    for node in nodes:
        op = node["op"]
        if op == "conv2d":
            out = F.conv2d(values[node["input"]], tensor(node["weight"]), tensor(node["bias"]),
                           stride=node["stride"], padding=node["pad"], groups=node["groups"])
            out = _activate(out, node["activation"])
        elif op == "add":
            a, b = node["inputs"]
            out = _activate(values[a] + values[b], node["activation"])
        elif op == "max_pool2d":
            out = F.max_pool2d(values[node["input"]], node["k"], node["stride"], node["pad"])
        elif op == "global_avg_pool":
            out = values[node["input"]].mean(dim=(2, 3), keepdim=True)
        elif op == "linear":
            out = F.linear(values[node["input"]].flatten(1), tensor(node["weight"]), tensor(node["bias"]))
        else:
            raise AssertionError(f"unknown op {op}")
        values[node["output"]] = out
    return values[output].numpy()
