"""The program spec: a whole CNN as the deployed runtime runs it — a small graph of convolutions,
linear layers, additions, activations, pooling, flatten and concatenation, as JSON data.

Owns validation (one sentence naming the node and field), shape inference, the program's layer specs
(what convbench times) and its other operators (what the whole-program predictor must add).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from jcw.profiler.layerspec import MAX_INT, LayerSpec, LayerSpecError

FORMAT = "jcw-program"
VERSION = 1
CONV_OPS = ("conv", "linear")
ACTIVATIONS = (None, "relu", "relu6")
#: Operators other than convolutions and linear layers, each with the attributes it takes.
OTHER_OPS = ("add", "relu", "relu6", "maxpool", "avgpool", "gap", "flatten", "concat")
OPS = CONV_OPS + OTHER_OPS
_ATTRS: dict[str, tuple[str, ...]] = {
    "conv": ("cout", "k", "stride", "pad", "groups", "density", "act"),
    "linear": ("cout", "density", "act"),
    "add": ("act",),
    "relu": (), "relu6": (), "gap": (), "flatten": (), "concat": (),
    "maxpool": ("k", "stride", "pad"),
    "avgpool": ("k", "stride", "pad"),
}
#: More nodes than any CNN a phone runs; a bound keeps a hostile file from exhausting memory.
MAX_NODES = 4096
Shape = tuple[int, int, int]


class ProgramSpecError(ValueError):
    """A program spec is malformed; the message names the node and the field."""


def _int(node: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_INT:
        raise ProgramSpecError(f"program node {node!r}: field '{name}' must be an integer in "
                               f"[{minimum}, {MAX_INT}], got {value!r}"[:200])
    return value


def _normalised_node(raw: Any, index: int, previous: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ProgramSpecError(f"program node {index} must be a JSON object, got {type(raw).__name__}")
    name = raw.get("name", f"n{index}")
    if not isinstance(name, str) or not name or name == "input":
        raise ProgramSpecError(f"program node {index}: 'name' must be a non-empty string other than 'input'")
    op = raw.get("op")
    if op not in OPS:
        raise ProgramSpecError(f"program node {name!r}: 'op' must be one of {', '.join(OPS)}, got {op!r}"[:200])
    unknown = set(raw) - {"name", "op", "inputs"} - set(_ATTRS[op])
    if unknown:
        raise ProgramSpecError(f"program node {name!r}: {op} takes no field {sorted(unknown)[0]!r}")
    inputs = raw.get("inputs", [previous])
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise ProgramSpecError(f"program node {name!r}: 'inputs' must be a non-empty list of node names")
    wanted = (2, None) if op == "concat" else (2, 2) if op == "add" else (1, 1)
    if len(inputs) < wanted[0] or (wanted[1] is not None and len(inputs) > wanted[1]):
        count = f"{wanted[0]}" if wanted[0] == wanted[1] else f"at least {wanted[0]}"
        raise ProgramSpecError(f"program node {name!r}: {op} takes {count} input(s), got {len(inputs)}")
    node = {"name": name, "op": op, "inputs": list(inputs)}
    if op in ("conv", "linear"):
        node["cout"] = _int(name, "cout", raw.get("cout"), 1)
        density = raw.get("density", 1.0)
        if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
            raise ProgramSpecError(f"program node {name!r}: 'density' must be a number in (0, 1], got {density!r}")
        node["density"] = float(density)
    if op == "conv":
        node["k"] = _int(name, "k", raw.get("k"), 1)
        node["stride"] = _int(name, "stride", raw.get("stride", 1), 1)
        node["pad"] = _int(name, "pad", raw.get("pad", node["k"] // 2), 0)
        node["groups"] = _int(name, "groups", raw.get("groups", 1), 1)
    if op in ("maxpool", "avgpool"):
        node["k"] = _int(name, "k", raw.get("k"), 1)
        node["stride"] = _int(name, "stride", raw.get("stride", node["k"]), 1)
        node["pad"] = _int(name, "pad", raw.get("pad", 0), 0)
    if "act" in _ATTRS[op]:
        act = raw.get("act")
        if act not in ACTIVATIONS:
            raise ProgramSpecError(f"program node {name!r}: 'act' must be null, 'relu' or 'relu6', got {act!r}")
        node["act"] = act
    return node


def validate(spec: Any) -> dict[str, Any]:
    """A checked, normalised copy of a program spec (defaults filled in); ProgramSpecError if malformed."""
    if not isinstance(spec, dict):
        raise ProgramSpecError(f"a program spec must be a JSON object, got {type(spec).__name__}")
    if spec.get("format", FORMAT) != FORMAT or spec.get("version", VERSION) != VERSION:
        raise ProgramSpecError(f"not a {FORMAT} version {VERSION} program spec "
                               f"(format {spec.get('format')!r}, version {spec.get('version')!r})")
    shape = spec.get("input")
    if not isinstance(shape, list) or len(shape) != 4 or shape[0] != 1:
        raise ProgramSpecError(f"program field 'input' must be [1, C, H, W], got {shape!r}"[:200])
    for axis, value in zip("NCHW", shape):
        _int("input", axis, value, 1)
    raw_nodes = spec.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ProgramSpecError("program field 'nodes' must be a non-empty list")
    if len(raw_nodes) > MAX_NODES:
        raise ProgramSpecError(f"program has {len(raw_nodes)} nodes, more than the limit of {MAX_NODES}")
    nodes, seen, previous = [], {"input"}, "input"
    for index, raw in enumerate(raw_nodes):
        node = _normalised_node(raw, index, previous)
        if node["name"] in seen:
            raise ProgramSpecError(f"program node name {node['name']!r} is used twice")
        missing = [i for i in node["inputs"] if i not in seen]
        if missing:
            raise ProgramSpecError(f"program node {node['name']!r} reads {missing[0]!r}, which is not an earlier node")
        seen.add(node["name"])
        nodes.append(node)
        previous = node["name"]
    out = {"format": FORMAT, "version": VERSION, "name": str(spec.get("name", "program")),
           "family": str(spec.get("family", spec.get("name", "program"))), "input": list(shape), "nodes": nodes}
    shapes(out)  # every shape must work out
    return out


def _window(node: Mapping[str, Any], size: int, axis: str) -> int:
    k, stride, pad = node["k"], node["stride"], node["pad"]
    if k > size + 2 * pad:
        raise ProgramSpecError(f"program node {node['name']!r}: kernel {k} exceeds the padded input "
                               f"{axis} of {size + 2 * pad}")
    return (size + 2 * pad - k) // stride + 1


def _node_shape(node: Mapping[str, Any], ins: list[Shape]) -> Shape:
    name, op = node["name"], node["op"]
    c, h, w = ins[0]
    if op == "conv":
        groups = node["groups"]
        if groups != 1 and not (groups == c == node["cout"]):
            raise ProgramSpecError(f"program node {name!r}: only groups=1 or depthwise (groups = input channels = "
                                   f"cout) convolutions are supported, got groups={groups} for {c}->{node['cout']}")
        return node["cout"], _window(node, h, "height"), _window(node, w, "width")
    if op == "linear":
        if h != 1 or w != 1:
            raise ProgramSpecError(f"program node {name!r}: linear needs a flattened or pooled 1x1 input, got {h}x{w}")
        return node["cout"], 1, 1
    if op == "add":
        if ins[0] != ins[1]:
            raise ProgramSpecError(f"program node {name!r}: add operands differ in shape, {ins[0]} vs {ins[1]}")
        return ins[0]
    if op in ("maxpool", "avgpool"):
        return c, _window(node, h, "height"), _window(node, w, "width")
    if op == "gap":
        return c, 1, 1
    if op == "flatten":
        return c * h * w, 1, 1
    if op == "concat":
        if any(s[1:] != (h, w) for s in ins):
            raise ProgramSpecError(f"program node {name!r}: concat operands differ in height or width")
        return sum(s[0] for s in ins), h, w
    return ins[0]  # element-wise activations


def shapes(spec: Mapping[str, Any]) -> dict[str, Shape]:
    """(channels, height, width) of the input and of every node's output."""
    _, c, h, w = spec["input"]
    out: dict[str, Shape] = {"input": (c, h, w)}
    for node in spec["nodes"]:
        shape = _node_shape(node, [out[i] for i in node["inputs"]])
        if max(shape) > MAX_INT:
            raise ProgramSpecError(f"program node {node['name']!r}: output dimension exceeds {MAX_INT}")
        out[node["name"]] = shape
    return out


def conv_layers(spec: Mapping[str, Any]) -> list[tuple[str, LayerSpec]]:
    """Each convolution and linear layer as the layer spec convbench times (linear: 1x1 conv on 1x1)."""
    dims = shapes(spec)
    layers = []
    for node in spec["nodes"]:
        if node["op"] not in CONV_OPS:
            continue
        c, h, w = dims[node["inputs"][0]]
        try:
            if node["op"] == "linear":
                spec_ = LayerSpec(op="conv", cin=c, cout=node["cout"], k=1, h=1, w=1, stride=1, pad=0,
                                  density=node["density"])
            else:
                op = "dwconv" if node["groups"] > 1 else "conv"
                spec_ = LayerSpec(op=op, cin=c, cout=node["cout"], k=node["k"], h=h, w=w, stride=node["stride"],
                                  pad=node["pad"], density=node["density"])
        except LayerSpecError as exc:
            raise ProgramSpecError(f"program node {node['name']!r}: {exc}") from None
        layers.append((node["name"], spec_))
    return layers


def other_ops(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every operator that is not a convolution or linear layer, with its input and output sizes.

    c/h/w describe the first input; n_inputs and in_elems (all inputs together) cover add and concat.
    """
    dims = shapes(spec)
    ops = []
    for node in spec["nodes"]:
        if node["op"] in CONV_OPS:
            continue
        c, h, w = dims[node["inputs"][0]]
        out_c, out_h, out_w = dims[node["name"]]
        ops.append({"name": node["name"], "op": node["op"], "c": c, "h": h, "w": w,
                    "out_c": out_c, "out_h": out_h, "out_w": out_w,
                    "k": node.get("k", 1), "stride": node.get("stride", 1), "n_inputs": len(node["inputs"]),
                    "in_elems": sum(dims[i][0] * dims[i][1] * dims[i][2] for i in node["inputs"])})
    return ops


def fused_activations(spec: Mapping[str, Any]) -> int:
    """How many activations ride on a convolution, linear layer or addition (fused by XNNPACK)."""
    return sum(1 for node in spec["nodes"] if node.get("act"))


def canonical_json(spec: Mapping[str, Any]) -> str:
    """The spec as canonical JSON (sorted keys, no whitespace): the text that is hashed and stored."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def program_id(spec: Mapping[str, Any], threads: int | None = None, runtime: str | None = None) -> str:
    """Identity of a program (and, when given, the thread count and runtime it runs with): a short sha256.

    The runtime "executorch" (or None) adds nothing, so ids stored before the sparse runtime stay valid."""
    text = canonical_json({k: v for k, v in spec.items() if k not in ("name", "family")})
    if threads is not None:
        text += f"|threads={threads}"
    if runtime not in (None, "executorch"):
        text += f"|runtime={runtime}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_many(specs: Iterable[Any]) -> list[dict[str, Any]]:
    """validate() over several specs, naming the position of the first bad one."""
    out = []
    for index, spec in enumerate(specs):
        try:
            out.append(validate(spec))
        except ProgramSpecError as exc:
            raise ProgramSpecError(f"program {index}: {exc}") from None
    return out
