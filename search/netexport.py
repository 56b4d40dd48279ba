"""A pruned torch model as a jcw network file (android_harness/native/NETFILE.md): the traced graph
read into the sparse engine's operators, BatchNorm folded into convolutions, ReLU/ReLU6 fused into the
convolution or addition before them, and the reference input/output pair computed by torch.

Anything the engine cannot run is a SearchError naming the operation; the file itself is profiler.netfile's.
"""
from __future__ import annotations

import operator
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import fx, nn

from jcw.profiler.netfile import NetFileError, write_net

from .errors import SearchError
from .graph import trace
from .traced_ops import activation, op_name, square, tensor_shape

F = nn.functional
INPUT = "input"
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
_ALIAS_FUNCTIONS = {F.dropout, F.dropout2d, "contiguous", "clone", "detach"}
_FLATTEN = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}
_MAXPOOL = {F.max_pool2d, torch.max_pool2d}
_SKIP = {"size", "dim", getattr}
_ALIAS_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity)


@dataclass
class NetworkExport:
    """What write_net takes: the engine's nodes, their float32 tensors and the reference pair."""

    name: str
    input_shape: tuple[int, ...]
    output: str
    nodes: list[dict[str, Any]]
    tensors: dict[str, np.ndarray]
    check_input: np.ndarray
    check_output: np.ndarray
    input_name: str = INPUT

    @property
    def sparse_layers(self) -> list[str]:
        return [node["name"] for node in self.nodes if node["op"] == "conv2d" and node["sparse"]]


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).cpu().numpy()


class _Reader:
    """Walks the traced graph once, emitting engine nodes and tensors."""

    def __init__(self, gm: fx.GraphModule, sparse_layers: Collection[str]) -> None:
        self.modules = dict(gm.named_modules())
        self.sparse_layers = set(sparse_layers)
        self.nodes: list[dict[str, Any]] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.value: dict[fx.Node, str] = {}          # fx node -> engine value it computes
        self.shape: dict[str, tuple[int, ...]] = {}  # engine value -> its shape in the engine
        self.fusable: dict[fx.Node, dict] = {}       # fx node -> engine node whose sole output it is
        self.names: set[str] = set()
        self.output: str | None = None
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node)
            elif node.op == "output":
                self._output(node)
            elif node.op in ("call_module", "call_function", "call_method"):
                self._visit(node)
            elif node.op == "get_attr" and tensor_shape(node) is not None:
                self.fail(node, "a constant tensor")

    def fail(self, node: fx.Node, op: str | None = None) -> NoReturn:
        where = node.target if node.op == "call_module" else node.name  # the module's own name when it has one
        raise SearchError(f"the sparse engine cannot run {where} ({op or op_name(node, self.modules)})")

    def _placeholder(self, node: fx.Node) -> None:
        shape = tensor_shape(node)
        if shape is None:
            return  # a non-tensor argument with a default
        if INPUT in self.shape or len(shape) != 4 or shape[0] != 1:
            raise SearchError("the sparse engine runs networks of one (1, C, H, W) image input; the model takes "
                              + ("more than one tensor" if INPUT in self.shape else f"a tensor of shape {shape}"))
        self.value[node], self.shape[INPUT] = INPUT, shape

    def _output(self, node: fx.Node) -> None:
        result = node.args[0]
        if isinstance(result, (tuple, list)):
            if len(result) != 1:
                raise SearchError(f"the model returns {len(result)} tensors; the sparse engine runs one output")
            result = result[0]
        if not isinstance(result, fx.Node) or self.value.get(result, INPUT) == INPUT:
            raise SearchError("the model's output is not a tensor computed from its input")
        self.output = self.value[result]

    def _name(self, wanted: str) -> str:
        name = wanted
        while name in self.names or name == INPUT:
            name += "_"
        self.names.add(name)
        return name

    def _emit(self, node: fx.Node, entry: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
        entry["output"] = entry["name"]  # node names are unique and never "input": fine as SSA value names
        self.nodes.append(entry)
        self.value[node], self.shape[entry["output"]] = entry["output"], shape
        if len(node.users) == 1:
            self.fusable[node] = entry
        return entry

    def _alias(self, node: fx.Node, src: fx.Node, keeps_fusion: bool = True) -> None:
        self.value[node] = self.value[src]
        if keeps_fusion and src in self.fusable and len(node.users) == 1:
            self.fusable[node] = self.fusable[src]

    def _visit(self, node: fx.Node) -> None:
        target = node.target
        if node.op != "call_module" and target in _SKIP:
            return  # sizes and shapes, not tensors
        args = [a for a in node.all_input_nodes if a in self.value]
        if tensor_shape(node) is None or not args:
            self.fail(node)
        module = self.modules.get(target) if node.op == "call_module" else None
        function = None if module is not None else target
        src = args[0]
        if isinstance(module, nn.Conv2d):
            return self._conv(node, module, src)
        if isinstance(module, nn.Linear):
            return self._linear(node, module, src)
        if isinstance(module, nn.BatchNorm2d):
            return self._batchnorm(node, module, src)
        fused = activation(node, module)
        if fused is not None and len(args) == 1:
            entry = self.fusable.get(src)
            if entry is None or entry["op"] not in ("conv2d", "add") or entry["activation"] != "none":
                self.fail(node)  # the engine has no standalone activation
            entry["activation"] = fused
            return self._alias(node, src)
        if isinstance(module, _ALIAS_MODULES) or (function is not None and function in _ALIAS_FUNCTIONS):
            return self._alias(node, src)
        if function is not None and function in _ADD and len(args) == 2 and not node.kwargs \
                and self.shape[self.value[args[0]]] == self.shape[self.value[args[1]]]:
            shape = self.shape[self.value[args[0]]]
            self._emit(node, {"op": "add", "name": self._name(node.name),
                              "inputs": [self.value[a] for a in args], "activation": "none"}, shape)
            return None
        if self._global_pool(node, module, src):
            return None
        if self._max_pool(node, module, src):
            return None
        if (isinstance(module, nn.Flatten) or (function is not None and function in _FLATTEN)) and len(args) == 1:
            before = self.shape[self.value[src]]
            if len(tensor_shape(node)) == 2 and (len(before) == 2 or before[2:] == (1, 1)):
                return self._alias(node, src, keeps_fusion=False)
        self.fail(node)

    def _conv(self, node: fx.Node, conv: nn.Conv2d, src: fx.Node) -> None:
        before = self.shape[self.value[src]]
        k, stride, pad = square(conv.kernel_size), square(conv.stride), square(conv.padding)
        groups, cin, cout = conv.groups, conv.in_channels, conv.out_channels
        plain = None not in (k, stride, pad) and square(conv.dilation) == 1 and conv.padding_mode == "zeros"
        if not plain or (groups != 1 and not groups == cin == cout) or len(before) != 4:
            self.fail(node, f"Conv2d with kernel {conv.kernel_size}, stride {conv.stride}, padding {conv.padding}, "
                            f"dilation {conv.dilation}, groups {groups}")
        name = self._name(node.target)
        self.tensors[f"{name}.weight"] = _array(conv.weight)
        if conv.bias is not None:
            self.tensors[f"{name}.bias"] = _array(conv.bias)
        entry = {"op": "conv2d", "name": name, "input": self.value[src], "cin": cin, "cout": cout, "k": k,
                 "stride": stride, "pad": pad, "groups": groups, "weight": f"{name}.weight",
                 "bias": f"{name}.bias" if conv.bias is not None else None, "activation": "none",
                 "sparse": groups == 1 and node.target in self.sparse_layers}
        self._emit(node, entry, (1, cout, *tensor_shape(node)[2:]))

    def _linear(self, node: fx.Node, linear: nn.Linear, src: fx.Node) -> None:
        before = self.shape[self.value[src]]
        if before not in ((1, linear.in_features), (1, linear.in_features, 1, 1)) or len(tensor_shape(node)) != 2:
            self.fail(node, f"Linear on a tensor of shape {tensor_shape(src)}")
        name = self._name(node.target)
        self.tensors[f"{name}.weight"] = _array(linear.weight)
        if linear.bias is not None:
            self.tensors[f"{name}.bias"] = _array(linear.bias)
        self._emit(node, {"op": "linear", "name": name, "input": self.value[src], "cin": linear.in_features,
                          "cout": linear.out_features, "weight": f"{name}.weight",
                          "bias": f"{name}.bias" if linear.bias is not None else None}, (1, linear.out_features))

    def _batchnorm(self, node: fx.Node, norm: nn.BatchNorm2d, src: fx.Node) -> None:
        """Fold an eval-mode BatchNorm into the convolution whose sole output it normalises."""
        entry = self.fusable.get(src)
        if entry is None or entry["op"] != "conv2d" or entry["activation"] != "none" or norm.running_mean is None:
            self.fail(node)
        scale = _array(norm.running_var + norm.eps) ** -0.5
        if norm.weight is not None:
            scale = scale * _array(norm.weight)
        shift = -_array(norm.running_mean) * scale
        if norm.bias is not None:
            shift = shift + _array(norm.bias)
        self.tensors[entry["weight"]] = self.tensors[entry["weight"]] * scale[:, None, None, None]
        if entry["bias"] is None:
            entry["bias"] = f"{entry['name']}.bias"
            self.tensors[entry["bias"]] = shift
        else:
            self.tensors[entry["bias"]] = self.tensors[entry["bias"]] * scale + shift
        self._alias(node, src)

    def _global_pool(self, node: fx.Node, module: nn.Module | None, src: fx.Node) -> bool:
        before, after = self.shape[self.value[src]], tensor_shape(node)
        if len(before) != 4:
            return False
        function = node.target if module is None else None
        if isinstance(module, nn.AdaptiveAvgPool2d) or function is F.adaptive_avg_pool2d:
            size = module.output_size if module is not None else node.kwargs.get(
                "output_size", node.args[1] if len(node.args) > 1 else None)
            pooled = square(size) == 1
        elif function == "mean" or function is torch.mean:
            dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
            pooled = sorted(d % 4 for d in dims) == [2, 3] and "dtype" not in node.kwargs
        else:
            return False
        if not pooled or after[:2] != before[:2]:
            return False
        self._emit(node, {"op": "global_avg_pool", "name": self._name(node.name), "input": self.value[src]},
                   (1, before[1], 1, 1))
        return True

    def _max_pool(self, node: fx.Node, module: nn.Module | None, src: fx.Node) -> bool:
        if isinstance(module, nn.MaxPool2d):
            given = {"kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
                     "dilation": module.dilation, "ceil_mode": module.ceil_mode,
                     "return_indices": module.return_indices}
        elif module is None and node.target in _MAXPOOL:
            names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
            given = dict(zip(names, node.args)) | dict(node.kwargs)
            given["stride"] = given.get("stride") or given.get("kernel_size")
        else:
            return False
        k, stride, pad = (square(given.get(key, 0)) for key in ("kernel_size", "stride", "padding"))
        if None in (k, stride, pad) or given.get("ceil_mode") or given.get("return_indices") \
                or square(given.get("dilation", 1)) != 1:
            self.fail(node, "MaxPool2d with ceil_mode, dilation, indices or a non-square window")
        self._emit(node, {"op": "max_pool2d", "name": self._name(node.name), "input": self.value[src],
                          "k": k, "stride": stride, "pad": pad}, (1, *tensor_shape(node)[1:]))
        return True


def export_network(model: nn.Module, example: torch.Tensor, *, name: str = "model",
                   sparse_layers: Collection[str] = ()) -> NetworkExport:
    """The engine's view of `model` (evaluated in eval mode on `example`, which becomes the check input).

    `sparse_layers`: module names of the convolutions to run sparse (groups == 1 only; others run dense).
    """
    was_training = model.training
    model.eval()
    try:
        gm = trace(model, example)
        reader = _Reader(gm, sparse_layers)
        with torch.no_grad():
            reference = model(example)
    finally:
        model.train(was_training)
    if not isinstance(reference, torch.Tensor):
        raise SearchError("the model's output is not one tensor; the sparse engine runs one output")
    shape = reader.shape[reader.output]
    if reference.numel() != int(np.prod(shape)):
        raise SearchError(f"the model's output has shape {tuple(reference.shape)}, the engine's {shape}")
    tensors = {key: value.astype(np.float32) for key, value in reader.tensors.items()}
    return NetworkExport(name=name, input_shape=tuple(example.shape), output=reader.output, nodes=reader.nodes,
                         tensors=tensors, check_input=example.detach().numpy().astype(np.float32),
                         check_output=reference.detach().numpy().astype(np.float32).reshape(shape))


def write_network(network: NetworkExport, path: str | Path, tolerance: float = 1e-3) -> Path:
    """Write an exported network as a .jcwnet file; SearchError (one sentence) if it cannot be written."""
    try:
        write_net(path, name=network.name, input_name=network.input_name, input_shape=network.input_shape,
                  output=network.output, nodes=network.nodes, tensors=network.tensors,
                  check_input=network.check_input, check_output=network.check_output, tolerance=tolerance)
    except NetFileError as exc:
        raise SearchError(str(exc)) from None
    return Path(path)


def pruned_conv_layers(space, x) -> list[str]:
    """Module names of the candidate's weight-pruned (density < 1) groups == 1 convolutions: the ones to run sparse."""
    densities = space.densities(np.atleast_2d(x)[:1])[0]
    return [layer.name for layer, density in zip(space.graph.layers, densities)
            if density < 1.0 and layer.spec.op == "conv" and not layer.is_linear]
