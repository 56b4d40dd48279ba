"""Program template: the traced torch model as a program spec (profiler.programs, Contract C) whose
channel counts are tied to the search's channel-coupling groups, so a genome gives its whole
deployed program — a full spec for records and export, or vectorised operator arrays for the predictor.

Conv2d (+BatchNorm folded) (+ReLU/ReLU6 fused) → conv, Linear → linear, add (+relu) → add, pools,
global average pooling, flatten, concat on channels; Dropout/Identity vanish. Any other operator that
keeps its input's shape is listed in `unmodelled` (the program runs it, the predictor does not know it);
one that changes shapes in a way a program spec cannot express is a SearchError.
"""
from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from jcw.profiler import programs

from .errors import SearchError
from .graph import ModelGraph
from .traced_ops import activation, op_name, pool, square, tensor_shape

F = nn.functional
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
_ALIAS_FUNCTIONS = {F.dropout, F.dropout2d, "contiguous", "clone", "detach"}
_FLATTEN = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}
_CAT = {torch.cat, torch.concat}
_SKIP = {"size", "dim", getattr}
_ALIAS_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity)
_FOLDED_INTO = {"bn": ("conv", "linear"), "act": ("conv", "linear", "add")}


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(c, h, w) of a traced (N, C, H, W) or (N, C) tensor."""
    if len(shape) == 4:
        return int(shape[1]), int(shape[2]), int(shape[3])
    if len(shape) == 2:
        return int(shape[1]), 1, 1
    raise ValueError(shape)


class ProgramTemplate:
    """The program of a traced model with channel counts as linear forms of the groups' channels."""

    def __init__(self, graph: ModelGraph, name: str = "model") -> None:
        if graph.traced is None:
            raise SearchError("the model graph carries no traced module; read it with search.graph.read_model")
        self.graph, self.name = graph, name
        self.n_groups = len(graph.groups)
        self._coef: list[np.ndarray] = []        # channel forms: channels = groups' channels @ coef + const
        self._const: list[int] = []
        self.nodes: list[dict[str, Any]] = []    # static attributes; "cout"/"groups" hold form indices
        self.unmodelled: list[dict[str, str]] = []
        self._chan: dict[str, int] = {}          # program value -> channel form
        self._dims: dict[str, tuple[int, int, int]] = {}
        self._build(graph.traced)
        self._finish()

    # ---- channel forms ------------------------------------------------------------------------
    def _form(self, coef: np.ndarray, const: int = 0) -> int:
        self._coef.append(np.asarray(coef, dtype=np.int64))
        self._const.append(int(const))
        return len(self._coef) - 1

    def _tensor_form(self, node: fx.Node, channels: int) -> int:
        coef = np.zeros(self.n_groups, dtype=np.int64)
        group = self.graph.tensor_groups.get(node.name)
        if group is None:
            return self._form(coef, channels)
        coef[group] = 1
        return self._form(coef)

    def _scaled(self, parts: list[tuple[int, int]]) -> int:
        """Σ factor × form, as a new form."""
        return self._form(sum(f * self._coef[i] for i, f in parts), sum(f * self._const[i] for i, f in parts))

    # ---- reading the traced graph -------------------------------------------------------------
    def _build(self, gm: fx.GraphModule) -> None:
        modules = dict(gm.named_modules())
        self._value: dict[fx.Node, str] = {}
        self._sole: dict[fx.Node, bool] = {}
        self._names: set[str] = {"input"}
        self._by_name: dict[str, dict[str, Any]] = {}
        self._layer_calls = 0
        output = None
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                shape = tensor_shape(node)
                if shape is None:
                    continue                          # a non-tensor argument with a default
                if "input" in self._dims or len(shape) != 4:
                    raise SearchError("a deployed program here takes one (N, C, H, W) image; the model takes "
                                      f"{'more than one tensor' if 'input' in self._dims else f'a tensor of {shape}'}")
                self.input = [1, *shape[1:]]
                self._dims["input"] = _chw(shape)
                self._chan["input"] = self._tensor_form(node, shape[1])
                self._value[node], self._sole[node] = "input", False
            elif node.op == "output":
                output = node
            elif node.op in ("call_module", "call_function", "call_method"):
                self._visit(node, modules)
        self._place_output(output)

    def _add(self, node: fx.Node, op: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        name = name or node.name
        while name in self._names:
            name += "_"
        self._names.add(name)
        self.nodes.append({"name": name, "op": op, "inputs": inputs, **attrs})
        self._by_name[name] = self.nodes[-1]
        shape = tensor_shape(node)
        self._dims[name] = _chw(shape)
        self._chan[name] = self._tensor_form(node, self._dims[name][0])
        self._value[node], self._sole[node] = name, len(node.users) == 1
        return name

    def _alias(self, node: fx.Node, src: fx.Node, keeps_fusion: bool) -> None:
        self._value[node] = self._value[src]
        self._sole[node] = keeps_fusion and self._sole[src] and len(node.users) == 1

    def _fusable(self, src: fx.Node, kind: str) -> dict[str, Any] | None:
        """The program node `src` is the sole output of, when a BatchNorm or activation can fold into it."""
        if not self._sole.get(src):
            return None
        target = self._by_name.get(self._value[src])
        if target is None or target["op"] not in _FOLDED_INTO[kind] or target.get("act"):
            return None
        return target

    def _unmodelled(self, node: fx.Node, args: list[fx.Node], modules) -> None:
        op = op_name(node, modules)
        shape = tensor_shape(node)
        same = next((a for a in args if tensor_shape(a) == shape), None)
        if same is None:
            raise SearchError(f"the model's {op} ({node.name}) changes tensor shape in a way a program spec cannot "
                              f"express, so the latency of the whole deployed program cannot be predicted")
        self.unmodelled.append({"name": node.target if node.op == "call_module" else node.name, "op": op})
        self._alias(node, same, keeps_fusion=False)

    def _visit(self, node: fx.Node, modules: dict[str, nn.Module]) -> None:
        target, shape = node.target, tensor_shape(node)
        if (node.op != "call_module" and target in _SKIP) or shape is None:
            return                                    # not a tensor (sizes, shapes, ...)
        args = [a for a in node.all_input_nodes if a in self._value]
        if not args:
            return                                    # a constant made inside forward, not from the input
        if len(shape) not in (2, 4):
            return self._unmodelled(node, args, modules)
        module = modules.get(target) if node.op == "call_module" else None
        function = target if node.op != "call_module" else None
        src = args[0]
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return self._layer(node, module, src, modules, args)
        if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if self._fusable(src, "bn") is not None:
                return self._alias(node, src, keeps_fusion=True)
            return self._unmodelled(node, args, modules)
        act = activation(node, module)
        if act is not None and len(args) == 1:
            fused = self._fusable(src, "act")
            if fused is not None:
                fused["act"] = act
                return self._alias(node, src, keeps_fusion=True)
            self._add(node, act, [self._value[src]])
            return None
        if isinstance(module, _ALIAS_MODULES) or (function is not None and function in _ALIAS_FUNCTIONS):
            return self._alias(node, src, keeps_fusion=True)
        if function is not None and function in _ADD and len(args) == 2 and not node.kwargs \
                and tensor_shape(args[0]) == tensor_shape(args[1]) == shape:
            self._add(node, "add", [self._value[a] for a in args], act=None)
            return None
        pooling = pool(node, module, src)
        if pooling is not None:
            if pooling[0] == "identity":
                return self._alias(node, src, keeps_fusion=True)
            self._add(node, pooling[0], [self._value[src]], **pooling[1])
            return None
        if (isinstance(module, nn.Flatten) or (function is not None and function in _FLATTEN)) \
                and len(shape) == 2 and len(args) == 1:
            before = tensor_shape(src)
            if before == shape:
                return self._alias(node, src, keeps_fusion=True)
            if len(before) == 4 and shape[1] == before[1] * before[2] * before[3]:
                self._add(node, "flatten", [self._value[src]])
                return None
        if function is not None and function in _CAT and len(shape) == 4 and node.args:
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            tensors = node.args[0] if isinstance(node.args[0], (list, tuple)) else []
            if dim in (1, -3) and len(tensors) >= 2 and all(t in self._value for t in tensors):
                self._add(node, "concat", [self._value[t] for t in tensors])
                return None
        return self._unmodelled(node, args, modules)

    def _layer(self, node, module, src, modules, args) -> None:
        in_shape = tensor_shape(src)
        if isinstance(module, nn.Linear) and (in_shape is None or len(in_shape) != 2):
            return self._unmodelled(node, args, modules)
        layers = self.graph.layers
        index = self._layer_calls
        if index >= len(layers) or layers[index].name != node.target:
            raise SearchError(f"layer {node.target} of the program does not match the search's layer list")
        self._layer_calls += 1
        name = node.target if node.target not in self._names else f"{node.target}@{index}"
        if isinstance(module, nn.Linear):
            self._add(node, "linear", [self._value[src]], name=name, cout=None, density=1.0, act=None)
        else:
            k, stride, pad = square(module.kernel_size), square(module.stride), square(module.padding)
            self._add(node, "conv", [self._value[src]], name=name, cout=None, k=k, stride=stride, pad=pad,
                      groups=1, density=1.0, act=None)
        entry = self.nodes[-1]
        entry["_layer"] = index
        entry["_cout"] = self._chan[entry["name"]]
        if layers[index].depthwise:
            entry["_groups"] = self._chan[entry["name"]]
        return None

    def _place_output(self, output: fx.Node | None) -> None:
        args = output.args[0] if output is not None else None
        if isinstance(args, (tuple, list)):
            if len(args) != 1:
                raise SearchError(f"the model returns {len(args)} tensors; a deployed program here has one output")
            args = args[0]
        if not isinstance(args, fx.Node) or args not in self._value or self._value[args] == "input":
            raise SearchError("the model's output is not a tensor computed from its input")
        last = self._value[args]
        if self.nodes[-1]["name"] != last:
            if any(last in n["inputs"] for n in self.nodes):
                raise SearchError(f"the model's output {last} is also read by later operations; a program spec "
                                  f"cannot express that")
            index = next(i for i, n in enumerate(self.nodes) if n["name"] == last)
            self.nodes.append(self.nodes.pop(index))

    # ---- arrays for the hot loop ------------------------------------------------------------------
    def _finish(self) -> None:
        if self._layer_calls != len(self.graph.layers):
            raise SearchError(f"the program holds {self._layer_calls} of the search's {len(self.graph.layers)} "
                              f"layers; a layer sits inside an operation the program cannot express")
        self.n_nodes = len(self.nodes)
        self.conv_nodes = [i for i, n in enumerate(self.nodes) if n["op"] in programs.CONV_OPS]
        self.n_conv = len(self.conv_nodes)
        # the predictor's parts: conv layers by their dense latency, everything else (linear layers
        # included, as XNNPACK's fully-connected operator) as operator rows
        other = [n for n in self.nodes if n["op"] != "conv"]
        self.op_names = np.array([n["op"] for n in other], dtype=object)
        dims = self._dims
        c_forms, out_forms, elem_forms = [], [], []
        static = {key: [] for key in ("h", "w", "out_h", "out_w", "k", "stride", "n_inputs")}
        for n in other:
            first = n["inputs"][0]
            c_forms.append(self._chan[first])
            out_forms.append(self._chan[n["name"]])
            elem_forms.append(self._scaled([(self._chan[i], dims[i][1] * dims[i][2]) for i in n["inputs"]]))
            static["h"].append(dims[first][1])
            static["w"].append(dims[first][2])
            static["out_h"].append(dims[n["name"]][1])
            static["out_w"].append(dims[n["name"]][2])
            static["k"].append(n.get("k", 1))
            static["stride"].append(n.get("stride", 1))
            static["n_inputs"].append(len(n["inputs"]))
        for j, n in enumerate(other):
            if n["op"] == "flatten":       # out_c = c x h x w of its input
                out_forms[j] = elem_forms[j]
        self._static = {k: np.array(v, dtype=np.int64) for k, v in static.items()}
        self._op_forms = {"c": np.array(c_forms, dtype=np.int64), "out_c": np.array(out_forms, dtype=np.int64),
                          "in_elems": np.array(elem_forms, dtype=np.int64)}
        self._coef_matrix = np.array(self._coef, dtype=np.int64).reshape(len(self._coef), self.n_groups)
        self._const_vector = np.array(self._const, dtype=np.int64)
        # every value of the program (the input and each node's output), for the sparse engine's layout plan
        self.value_names = ["input", *(n["name"] for n in self.nodes)]
        self._value_forms = np.array([self._chan[v] for v in self.value_names], dtype=np.int64)
        self.value_hw = np.array([dims[v][1] * dims[v][2] for v in self.value_names], dtype=np.int64)
        self._engine = None
        full = np.array([g.channels for g in self.graph.groups], dtype=np.int64)
        self._check_against_trace(full)

    def form_values(self, channels: np.ndarray) -> np.ndarray:
        """(n, n_forms) channel counts for (n, n_groups) kept channels per group."""
        channels = np.atleast_2d(np.asarray(channels, dtype=np.int64))
        return channels @ self._coef_matrix.T + self._const_vector

    def value_channels(self, channels: np.ndarray) -> np.ndarray:
        """(n, len(value_names)) channels of every program value for (n, n_groups) kept channels."""
        return self.form_values(channels)[:, self._value_forms]

    @property
    def engine(self):
        """The program as the sparse engine runs it (search.engine_program); SearchError if it cannot."""
        if self._engine is None:
            from .engine_program import EngineProgram
            self._engine = EngineProgram(self)
        return self._engine

    def op_arrays(self, channels: np.ndarray) -> dict[str, np.ndarray]:
        """Operators other than conv/linear of every program (individual-major), for predict_program_parts."""
        values = self.form_values(channels)
        n, n_ops = values.shape[0], len(self.op_names)
        out = {"program": np.repeat(np.arange(n, dtype=np.int64), n_ops), "op": np.tile(self.op_names, n)}
        for key, forms in self._op_forms.items():
            out[key] = values[:, forms].ravel()
        for key, column in self._static.items():
            out[key] = np.tile(column, n)
        return out

    def spec(self, channels: np.ndarray, densities: np.ndarray | None = None) -> dict[str, Any]:
        """The program spec (profiler.programs format, validated) for one genome's channels and densities."""
        values = self.form_values(channels)[0]
        nodes = []
        for n in self.nodes:
            node = {k: v for k, v in n.items() if not k.startswith("_")}
            if "_cout" in n:
                node["cout"] = int(values[n["_cout"]])
                if densities is not None:
                    node["density"] = float(densities[n["_layer"]])
            if "_groups" in n:
                node["groups"] = int(values[n["_groups"]])
            nodes.append(node)
        spec = {"format": programs.FORMAT, "version": programs.VERSION, "name": self.name, "family": self.name,
                "input": list(self.input), "nodes": nodes}
        try:
            return programs.validate(spec)
        except programs.ProgramSpecError as exc:
            raise SearchError(f"the program of this candidate is not a valid program spec ({exc})") from None

    def _check_against_trace(self, full: np.ndarray) -> None:
        """At full width the spec's shapes are torch's and its layers the search's (else a bug, said once)."""
        spec = self.spec(full)
        shapes = programs.shapes(spec)
        for name, dims in self._dims.items():
            if shapes[name] != dims:
                raise SearchError(f"the program node {name} has shape {shapes[name]} but torch computes {dims}")
        for (name, layer_spec), layer in zip(programs.conv_layers(spec), self.graph.layers):
            if layer_spec != layer.spec.replace(density=layer_spec.density):
                raise SearchError(f"program layer {name} is {layer_spec.key()}, the model's is {layer.spec.key()}")
