"""Model reader: a torch module plus an example input -> prunable layers with layer specs and
channel-coupling groups, found by tracing the graph with torch.fx (no per-model layer lists).

A group is a set of tensors whose channel dimension must be pruned together: a producer's output
feeds its consumers, an addition joins its operands, a depthwise conv ties its input to its output.
Groups touching the network input, the outputs, or an operation we cannot follow are fixed.
"""
from __future__ import annotations

import contextlib
import io
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from jcw.profiler.layerspec import LayerSpec, LayerSpecError

from .errors import SearchError

# Modules and functions that keep the channel dimension untouched (element-wise or spatial only).
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Sigmoid,
                 nn.Tanh, nn.PReLU, nn.ELU, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_NORM_MODULES = (nn.BatchNorm2d, nn.BatchNorm1d)
_PASS_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.sigmoid, torch.tanh,
                   torch.nn.functional.hardswish, torch.nn.functional.silu, torch.nn.functional.gelu,
                   torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.max_pool2d,
                   torch.nn.functional.avg_pool2d, torch.nn.functional.dropout, torch.clamp}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "clamp", "contiguous", "clone"}
_JOIN_FUNCTIONS = {operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul, operator.sub,
                   torch.sub}
_JOIN_METHODS = {"add", "add_", "mul", "mul_", "sub"}
_FLATTEN = {torch.flatten, "flatten", "view", "reshape", torch.reshape}


@dataclass
class Layer:
    """One prunable layer (a Conv2d or a Linear, the latter as a 1x1 conv on a 1x1 input)."""

    name: str
    spec: LayerSpec
    in_group: int
    out_group: int
    is_linear: bool = False
    first: bool = False
    last: bool = False

    @property
    def depthwise(self) -> bool:
        return self.spec.op == "dwconv"

    @property
    def strided(self) -> bool:
        return self.spec.stride > 1


@dataclass
class ChannelGroup:
    """Channels that are pruned together; `fixed` groups keep every channel."""

    index: int
    channels: int
    producers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    fixed: bool = False
    residual: bool = False
    why_fixed: str = ""


@dataclass
class ModelGraph:
    layers: list[Layer]
    groups: list[ChannelGroup]
    input_shape: tuple[int, ...]
    #: fx node name -> index of the channel group its output tensor belongs to (absent: not prunable-coupled)
    tensor_groups: dict[str, int] = field(default_factory=dict, repr=False)
    #: the traced module with tensor shapes on every node (read by search.program)
    traced: fx.GraphModule | None = field(default=None, repr=False, compare=False)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def specs(self) -> list[LayerSpec]:
        return [layer.spec for layer in self.layers]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed: dict[int, str] = {}
        self.residual: set[int] = set()

    def new(self, fixed_reason: str = "") -> int:
        self.parent.append(len(self.parent))
        if fixed_reason:
            self.fixed[len(self.parent) - 1] = fixed_reason
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.fixed:
                self.fixed.setdefault(ra, self.fixed.pop(rb))
            if rb in self.residual:
                self.residual.add(ra)
        return ra

    def fix(self, a: int, reason: str) -> None:
        self.fixed.setdefault(self.find(a), reason)


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _pair(value, what: str, name: str) -> int:
    if isinstance(value, str):
        raise SearchError(f"layer {name} uses padding={value!r}; give explicit integer padding")
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise SearchError(f"layer {name} has a non-square {what} {tuple(value)}, which a layer spec cannot express")
        value = value[0]
    return int(value)


def trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """Symbolically trace `model` and annotate every node with its tensor shape."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # torch.fx raises many types for untraceable Python
        raise SearchError(f"cannot trace the model with torch.fx "
                          f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]})") from None
    try:
        # ShapeProp prints the traceback of a failing node itself; the cause it wraps is the sentence.
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(example)
    except Exception as exc:
        cause = exc.__cause__ or exc
        raise SearchError(f"the model does not run on an input of shape {tuple(example.shape)} "
                          f"({type(cause).__name__}: {(str(cause).splitlines() or [''])[0]})") from None
    return gm


def read_model(model: nn.Module, example: torch.Tensor) -> ModelGraph:
    """Prunable layers (graph order) and channel-coupling groups of `model` run on `example`."""
    was_training = model.training
    model.eval()
    try:
        gm = trace(model, example)
    finally:
        model.train(was_training)
    modules = dict(gm.named_modules())
    uf = _UnionFind()
    elem: dict[fx.Node, int] = {}
    raw_layers: list[tuple[str, LayerSpec, int, int, bool, bool]] = []  # name, spec, in, out, linear, first
    norms: list[tuple[str, int]] = []
    calls: dict[str, int] = {}
    input_elems: set[int] = set()

    def tensor_args(node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if a in elem]

    def opaque(node: fx.Node, why: str) -> None:
        for a in tensor_args(node):
            uf.fix(elem[a], why)
        if _shape(node) is not None:
            elem[node] = uf.new(why)

    for node in gm.graph.nodes:
        shape = _shape(node)
        if node.op == "placeholder":
            elem[node] = uf.new("network input")
            input_elems.add(elem[node])
        elif node.op == "output":
            for a in tensor_args(node):
                uf.fix(elem[a], "network output")
        elif node.op == "get_attr":
            if shape is not None:
                elem[node] = uf.new("constant tensor")
        elif node.op == "call_module":
            module = modules[node.target]
            calls[node.target] = calls.get(node.target, 0) + 1
            src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
            if src is None or src not in elem:
                opaque(node, f"module {node.target} has no traced tensor input")
            elif isinstance(module, nn.Conv2d):
                in_shape = _shape(src)
                if _pair(module.dilation, "dilation", node.target) != 1:
                    raise SearchError(f"layer {node.target} is dilated, which a layer spec cannot express")
                k = _pair(module.kernel_size, "kernel", node.target)
                stride = _pair(module.stride, "stride", node.target)
                pad = _pair(module.padding, "padding", node.target)
                cin, cout, groups = module.in_channels, module.out_channels, module.groups
                if groups == 1:
                    op, out = "conv", uf.new()
                elif groups == cin == cout:
                    op, out = "dwconv", elem[src]
                else:
                    raise SearchError(f"layer {node.target} is a grouped convolution (groups={groups}), "
                                      "which a layer spec cannot express")
                try:
                    spec = LayerSpec(op=op, cin=cin, cout=cout, k=k, h=in_shape[2], w=in_shape[3], stride=stride,
                                     pad=pad)
                except LayerSpecError as exc:
                    raise SearchError(f"layer {node.target}: {exc}") from None
                raw_layers.append((node.target, spec, elem[src], out, False, elem[src] in input_elems))
                elem[node] = out
            elif isinstance(module, nn.Linear):
                in_shape = _shape(src)
                if in_shape is None or len(in_shape) != 2:
                    opaque(node, f"linear layer {node.target} sees a tensor of shape {in_shape}")
                    continue
                out = uf.new()
                spec = LayerSpec(op="conv", cin=module.in_features, cout=module.out_features, k=1, h=1, w=1)
                raw_layers.append((node.target, spec, elem[src], out, True, elem[src] in input_elems))
                elem[node] = out
            elif isinstance(module, _NORM_MODULES):
                norms.append((node.target, elem[src]))
                elem[node] = elem[src]
            elif isinstance(module, _PASS_MODULES):
                elem[node] = elem[src]
            elif isinstance(module, nn.Flatten):
                _flatten(node, src, elem, uf)
            else:
                opaque(node, f"module {node.target} ({type(module).__name__}) is not understood")
        elif node.op in ("call_function", "call_method"):
            target = node.target
            args = tensor_args(node)
            if target in _JOIN_FUNCTIONS or target in _JOIN_METHODS:
                if len(args) == 2 and _shape(args[0]) == _shape(args[1]) == shape:
                    elem[node] = uf.union(elem[args[0]], elem[args[1]])
                    if target in (operator.add, operator.iadd, torch.add, "add", "add_"):
                        uf.residual.add(uf.find(elem[node]))
                elif len(args) == 1 and shape == _shape(args[0]):
                    elem[node] = elem[args[0]]
                else:
                    opaque(node, f"{node.name} broadcasts between tensors of different shapes")
            elif (target in _PASS_FUNCTIONS or target in _PASS_METHODS) and len(args) == 1 \
                    and _keeps_channels(args[0], node):
                elem[node] = elem[args[0]]
            elif target in _FLATTEN and len(args) == 1:
                _flatten(node, args[0], elem, uf)
            elif target == "mean" and len(args) == 1 and _keeps_channels(args[0], node):
                elem[node] = elem[args[0]]
            elif target in ("size", "dim") or target is getattr:
                continue
            else:
                opaque(node, f"operation {node.name} is not understood")

    for name, count in calls.items():
        if count > 1:
            for lname, _spec, gin, gout, *_ in raw_layers:
                if lname == name:
                    uf.fix(gin, f"layer {name} is called more than once")
                    uf.fix(gout, f"layer {name} is called more than once")
    graph, index = _assemble(raw_layers, norms, uf, tuple(example.shape))
    graph.tensor_groups = {node.name: index[uf.find(e)] for node, e in elem.items() if uf.find(e) in index}
    graph.traced = gm
    return graph


def _keeps_channels(src: fx.Node, node: fx.Node) -> bool:
    """Same batch and channel dimensions before and after (element-wise or spatial-only operations)."""
    before, after = _shape(src), _shape(node)
    return before is not None and after is not None and len(before) >= 2 and before[:2] == after[:2]


def _flatten(node: fx.Node, src: fx.Node, elem: dict, uf: _UnionFind) -> None:
    in_shape, out_shape = _shape(src), _shape(node)
    if in_shape is not None and out_shape is not None and len(out_shape) == 2 and len(in_shape) >= 2 \
            and out_shape[1] == in_shape[1] and all(d == 1 for d in in_shape[2:]):
        elem[node] = elem[src]
    else:
        uf.fix(elem[src], f"{node.name} flattens spatial positions into channels")
        if out_shape is not None:
            elem[node] = uf.new(f"{node.name} flattens spatial positions into channels")


def _assemble(raw_layers, norms, uf: _UnionFind, input_shape) -> tuple[ModelGraph, dict[int, int]]:
    index: dict[int, int] = {}
    groups: list[ChannelGroup] = []

    def group_of(e: int, channels: int) -> ChannelGroup:
        root = uf.find(e)
        if root not in index:
            index[root] = len(groups)
            groups.append(ChannelGroup(len(groups), channels, fixed=root in uf.fixed,
                                       residual=root in uf.residual, why_fixed=uf.fixed.get(root, "")))
        return groups[index[root]]

    layers = []
    for name, spec, gin, gout, linear, first in raw_layers:
        g_in, g_out = group_of(gin, spec.cin), group_of(gout, spec.cout)
        if spec.op == "dwconv":
            g_in.depthwise.append(name)
        else:
            g_in.consumers.append(name)
            g_out.producers.append(name)
        layers.append(Layer(name, spec, g_in.index, g_out.index, linear, first=first))
    for name, e in norms:
        root = uf.find(e)
        if root in index:
            groups[index[root]].norms.append(name)
    if not layers:
        raise SearchError("the model has no Conv2d or Linear layer to prune")
    for layer in layers:
        layer.last = groups[layer.out_group].fixed and groups[layer.out_group].why_fixed == "network output"
    return ModelGraph(layers, groups, input_shape), index
