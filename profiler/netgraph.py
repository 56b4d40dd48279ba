"""The operator graph of a jcw network file (android_harness/native/NETFILE.md, "Nodes"): which
operators the sparse engine runs, their fields, SSA value names and shape propagation.

Every refusal is one sentence naming the file (NetFileError); profiler.netfile owns the bytes.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

#: The fields each operator must carry (NETFILE.md); any other op is refused.
NODE_FIELDS: dict[str, tuple[str, ...]] = {
    "conv2d": ("name", "input", "output", "cin", "cout", "k", "stride", "pad", "groups", "weight", "bias",
               "activation", "sparse"),
    "add": ("name", "inputs", "output", "activation"),
    "max_pool2d": ("name", "input", "output", "k", "stride", "pad"),
    "global_avg_pool": ("name", "input", "output"),
    "linear": ("name", "input", "output", "cin", "cout", "weight", "bias"),
}
ACTIVATIONS = ("none", "relu", "relu6")
#: More nodes than any CNN a phone runs; a bound keeps a hostile file from exhausting memory.
MAX_NODES = 4096
MAX_DIM = 1 << 24
Shape = tuple[int, ...]


class NetFileError(ValueError):
    """A network file cannot be written or read; the message is one sentence naming the file."""


def _fail(path: str, text: str) -> NetFileError:
    return NetFileError(f"{path} {text}"[:300])


def _int(path: str, node: str, field: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_DIM:
        raise _fail(path, f"has a node {node!r} whose {field!r} must be an integer in [{minimum}, {MAX_DIM}], "
                          f"got {value!r}")
    return value


def _name(path: str, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, f"has {where} that is not a non-empty string: {value!r}")
    return value


def _shape(path: str, where: str, value: Any) -> Shape:
    if not isinstance(value, list) or not value or not all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM for d in value):
        raise _fail(path, f"has {where} that is not a list of integers >= 1: {value!r}")
    return tuple(value)


def _window(path: str, node: Mapping[str, Any], size: int) -> int:
    k, stride, pad = node["k"], node["stride"], node["pad"]
    if k > size + 2 * pad:
        raise _fail(path, f"has a node {node['name']!r} whose {k}x{k} window exceeds its padded input of "
                          f"{size + 2 * pad}")
    return (size + 2 * pad - k) // stride + 1


def _tensor(path: str, node: Mapping[str, Any], field: str, wanted: Shape, tensors: Mapping[str, Shape]) -> None:
    key = node[field]
    if key is None and field == "bias":
        return
    if not isinstance(key, str) or key not in tensors:
        raise _fail(path, f"has a node {node['name']!r} whose {field} {key!r} is not in its tensor table")
    if tuple(tensors[key]) != wanted:
        raise _fail(path, f"has a node {node['name']!r} whose {field} has shape {list(tensors[key])}, "
                          f"expected {list(wanted)}")


def _conv_shape(path: str, node: Mapping[str, Any], shape: Shape, tensors: Mapping[str, Shape]) -> Shape:
    name = node["name"]
    cin, cout, k = (_int(path, name, f, node[f], 1) for f in ("cin", "cout", "k"))
    _int(path, name, "stride", node["stride"], 1)
    _int(path, name, "pad", node["pad"], 0)
    groups = _int(path, name, "groups", node["groups"], 1)
    if len(shape) != 4 or shape[1] != cin:
        raise _fail(path, f"has a convolution {name!r} with cin {cin} but an input of shape {list(shape)}")
    if groups != 1 and not groups == cin == cout:
        raise _fail(path, f"has a convolution {name!r} with groups {groups}; only 1 or depthwise "
                          f"(groups = cin = cout) is supported")
    if node["activation"] not in ACTIVATIONS:
        raise _fail(path, f"has a node {name!r} whose activation {node['activation']!r} is not none, relu or relu6")
    if not isinstance(node["sparse"], bool):
        raise _fail(path, f"has a convolution {name!r} whose 'sparse' is not true or false")
    if node["sparse"] and groups != 1:
        raise _fail(path, f"has a sparse depthwise convolution {name!r}; only groups == 1 convolutions run sparse")
    _tensor(path, node, "weight", (cout, cin // groups, k, k), tensors)
    _tensor(path, node, "bias", (cout,), tensors)
    return (1, cout, _window(path, node, shape[2]), _window(path, node, shape[3]))


def _node_shape(path: str, node: Mapping[str, Any], shapes: Mapping[str, Shape],
                tensors: Mapping[str, Shape]) -> Shape:
    op, name = node["op"], node["name"]
    sources = node["inputs"] if op == "add" else [node["input"]]
    for source in sources:
        if not isinstance(source, str) or source not in shapes:
            raise _fail(path, f"has a node {name!r} that reads {source!r}, which no earlier node produces")
    shape = shapes[sources[0]]
    if op == "conv2d":
        return _conv_shape(path, node, shape, tensors)
    if op == "add":
        if shapes[sources[0]] != shapes[sources[1]]:
            raise _fail(path, f"has an add {name!r} whose operands differ in shape, "
                              f"{list(shapes[sources[0]])} vs {list(shapes[sources[1]])}")
        if node["activation"] not in ACTIVATIONS:
            raise _fail(path, f"has a node {name!r} whose activation {node['activation']!r} is not none, relu "
                              f"or relu6")
        return shape
    if op == "linear":
        cin, cout = _int(path, name, "cin", node["cin"], 1), _int(path, name, "cout", node["cout"], 1)
        if shape not in ((1, cin), (1, cin, 1, 1)):
            raise _fail(path, f"has a linear layer {name!r} with cin {cin} but an input of shape {list(shape)}")
        _tensor(path, node, "weight", (cout, cin), tensors)
        _tensor(path, node, "bias", (cout,), tensors)
        return (1, cout)
    if len(shape) != 4:
        raise _fail(path, f"has a node {name!r} ({op}) whose input of shape {list(shape)} is not NCHW")
    if op == "global_avg_pool":
        return (1, shape[1], 1, 1)
    k = _int(path, name, "k", node["k"], 1)
    _int(path, name, "stride", node["stride"], 1)
    if _int(path, name, "pad", node["pad"], 0) > k // 2:
        raise _fail(path, f"has a max pool {name!r} whose padding {node['pad']} exceeds half its window {k}")
    return (1, shape[1], _window(path, node, shape[2]), _window(path, node, shape[3]))


def check_graph(path: str, header: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Shape]:
    """Check the header's input, nodes and output against the tensor shapes; the shape of every value."""
    spec = header["input"]
    if not isinstance(spec, dict):
        raise _fail(path, "has an 'input' field that is not an object with a name and a shape")
    input_name = _name(path, "an input name", spec.get("name"))
    input_shape = _shape(path, "an input shape", spec.get("shape"))
    if len(input_shape) != 4 or input_shape[0] != 1:
        raise _fail(path, f"has an input of shape {list(input_shape)}; the engine takes [1, C, H, W]")
    nodes = header["nodes"]
    if not isinstance(nodes, list) or not nodes:
        raise _fail(path, "has no nodes")
    if len(nodes) > MAX_NODES:
        raise _fail(path, f"has {len(nodes)} nodes, more than the limit of {MAX_NODES}")
    shapes: dict[str, Shape] = {input_name: input_shape}
    names: set[str] = set()
    for index, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise _fail(path, f"has a node {index} that is not a JSON object")
        name = _name(path, f"a node {index} name", node.get("name"))
        if not isinstance(node.get("op"), str) or node["op"] not in NODE_FIELDS:
            raise _fail(path, f"has a layer the engine cannot run: {name} (op {node.get('op')!r})")
        missing = [field for field in NODE_FIELDS[node["op"]] if field not in node]
        if missing:
            raise _fail(path, f"has a node {name!r} ({node['op']}) without the field {missing[0]!r}")
        if name in names:
            raise _fail(path, f"has two nodes named {name!r}")
        if node["op"] == "add" and (not isinstance(node["inputs"], list) or len(node["inputs"]) != 2):
            raise _fail(path, f"has an add {name!r} whose 'inputs' is not a list of two value names")
        output = _name(path, f"a node {name!r} output", node["output"])
        if output in shapes:
            raise _fail(path, f"has a node {name!r} whose output {output!r} is already defined (values are SSA)")
        shape = _node_shape(path, node, shapes, tensors)
        names.add(name)
        shapes[output] = shape
    output = header["output"]
    if not isinstance(output, str) or output not in shapes or output == input_name:
        raise _fail(path, f"has an output {output!r} that no node produces")
    return shapes


def check_sparse_weights(path: str, nodes: list[Mapping[str, Any]], arrays: Mapping[str, np.ndarray]) -> None:
    """A sparse convolution needs at least one non-zero weight: the sparse kernel has nothing to run otherwise."""
    for node in nodes:
        if node["op"] == "conv2d" and node["sparse"] and not np.any(arrays[node["weight"]]):
            raise _fail(path, f"has a sparse layer {node['name']} at density 0 (no non-zero weight)")


def density(weight: np.ndarray) -> float:
    """Fraction of non-zero weights."""
    return float(np.count_nonzero(weight)) / max(1, math.prod(weight.shape))
