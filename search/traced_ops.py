"""Traced torch operators read as program-spec operators for search.program: a tensor's traced shape, a
square kernel/stride/padding, the activation a ReLU/ReLU6 (module, function or clamp) is, and the pooling a
max/average/adaptive pool or a spatial mean is.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

F = nn.functional
_RELU = {torch.relu, torch.relu_, F.relu, "relu", "relu_"}
_RELU6 = {F.relu6}
_HARDTANH = {F.hardtanh, F.hardtanh_, "hardtanh", "hardtanh_"}
_CLAMP = {torch.clamp, torch.clip, "clamp", "clamp_", "clip", "clip_"}
_MAXPOOL = {F.max_pool2d, torch.max_pool2d}
_AVGPOOL = {F.avg_pool2d}


def tensor_shape(node: fx.Node) -> tuple[int, ...] | None:
    """The traced shape of a node's output, None when it is not a tensor."""
    meta = node.meta.get("tensor_meta")
    return tuple(int(d) for d in meta.shape) if meta is not None and hasattr(meta, "shape") else None


def op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A traced node's operator as a user would name it: the module's class or the function's name."""
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def square(value: Any) -> int | None:
    """The side of a square kernel, stride or padding (an int or an equal pair), else None."""
    if isinstance(value, (tuple, list)):
        return int(value[0]) if len(set(value)) == 1 else None
    return None if value is None or isinstance(value, str) else int(value)


def activation(node: fx.Node, module) -> str | None:
    """"relu" or "relu6" when the traced node is one of them (a clamp or hardtanh to [0, inf) or [0, 6]
    included), else None."""
    if module is not None:
        if isinstance(module, nn.ReLU):
            return "relu"
        if isinstance(module, nn.ReLU6) or (isinstance(module, nn.Hardtanh) and module.min_val == 0.0
                                            and module.max_val == 6.0):
            return "relu6"
        return None
    if node.op == "call_module":
        return None
    if node.target in _RELU:
        return "relu"
    if node.target in _RELU6:
        return "relu6"
    bounds = None
    if node.target in _HARDTANH:
        bounds = (node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0),
                  node.kwargs.get("max_val", node.args[2] if len(node.args) > 2 else 1.0))
    elif node.target in _CLAMP:
        bounds = (node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None),
                  node.kwargs.get("max", node.args[2] if len(node.args) > 2 else None))
    return {(0, None): "relu", (0, 6): "relu6"}.get(bounds) if bounds is not None else None


def pool(node: fx.Node, module, src: fx.Node) -> tuple[str, dict] | None:
    """(op, attributes) of a pooling node reading `src` — gap, maxpool, avgpool, or identity for an adaptive pool
    that keeps the shape — or None when it is none of them or pools in a way a program spec cannot express."""
    before, after = tensor_shape(src), tensor_shape(node)
    if before is None or len(before) != 4:
        return None
    function = node.target if node.op != "call_module" else None
    if isinstance(module, nn.AdaptiveAvgPool2d) or function is F.adaptive_avg_pool2d:
        if len(after) == 2 or after[2:] == (1, 1):
            return "gap", {}
        return ("identity", {}) if after == before else None
    if function == "mean" or function is torch.mean:
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        return ("gap", {}) if sorted(d % 4 for d in dims) == [2, 3] and after[:2] == before[:2] else None
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        op = "maxpool" if isinstance(module, nn.MaxPool2d) else "avgpool"
        given = {"kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
                 "ceil_mode": module.ceil_mode, "dilation": getattr(module, "dilation", 1),
                 "count_include_pad": getattr(module, "count_include_pad", True),
                 "divisor_override": getattr(module, "divisor_override", None),
                 "return_indices": getattr(module, "return_indices", False)}
    elif function is not None and (function in _MAXPOOL or function in _AVGPOOL):
        op = "maxpool" if function in _MAXPOOL else "avgpool"
        names = ("input", "kernel_size", "stride", "padding") + (
            ("dilation", "ceil_mode", "return_indices") if op == "maxpool"
            else ("ceil_mode", "count_include_pad", "divisor_override"))
        given = dict(zip(names, node.args)) | dict(node.kwargs)
        given["stride"] = given.get("stride") or given.get("kernel_size")
    else:
        return None
    k, stride, pad = (square(given.get(key, 0)) for key in ("kernel_size", "stride", "padding"))
    plain = not given.get("ceil_mode") and not given.get("return_indices") \
        and square(given.get("dilation", 1)) == 1 and given.get("count_include_pad", True) \
        and given.get("divisor_override") is None
    if None in (k, stride, pad) or not plain:
        return None
    return op, {"k": k, "stride": stride, "pad": pad}
