"""Program specs made real: a torch module that executes a spec with seeded weights, its reference
output, and its export to an ExecuTorch program (.pte, XNNPACK delegate) with a delegation report.

torch and executorch are imported inside the functions: the rest of the profiler works without them.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jcw.profiler.programs import ProgramSpecError, validate

#: RMS every convolution and linear layer's output is scaled to, so activations stay O(1) at any depth.
TARGET_RMS = 1.0


class ProgramBuildError(RuntimeError):
    """A program could not be built, exported or written; the message is one sentence."""


def _checked(spec: Any) -> dict[str, Any]:
    try:
        return validate(spec)
    except ProgramSpecError as exc:
        raise ProgramBuildError(str(exc)) from None


def _module_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    def activate(x, act):
        if act == "relu":
            return torch.relu(x)
        if act == "relu6":
            return F.relu6(x)
        return x

    def as4d(x):
        return x if x.dim() == 4 else x.reshape(x.shape[0], -1, 1, 1)

    class ProgramModule(nn.Module):
        """Runs the nodes of a validated program spec in order; parameters live in `layers`."""

        def __init__(self, spec: Mapping[str, Any]) -> None:
            super().__init__()
            from jcw.profiler.programs import shapes
            self.nodes = [dict(node) for node in spec["nodes"]]
            dims = shapes(spec)
            self.layers = nn.ModuleDict()
            self.keys: dict[str, str] = {}
            for index, node in enumerate(self.nodes):
                cin = dims[node["inputs"][0]][0]
                key = f"n{index}"
                if node["op"] == "conv":
                    self.layers[key] = nn.Conv2d(cin, node["cout"], node["k"], node["stride"], node["pad"],
                                                 groups=node["groups"], bias=True)
                elif node["op"] == "linear":
                    self.layers[key] = nn.Linear(cin, node["cout"], bias=True)
                else:
                    continue
                self.keys[node["name"]] = key
            self.calibrating = False

        def forward(self, x):
            return self.node_outputs(x)[self.nodes[-1]["name"]]

        def node_outputs(self, x) -> dict:
            """Every node's output tensor (and the input), by node name."""
            values = {"input": x}
            for node in self.nodes:
                op, ins = node["op"], [values[i] for i in node["inputs"]]
                if op in ("conv", "linear"):
                    layer = self.layers[self.keys[node["name"]]]
                    # a linear layer keeps the rank it reads: [1, c] after flatten, [1, c, 1, 1] after gap
                    if op == "conv":
                        y = layer(as4d(ins[0]))
                    elif ins[0].dim() == 2:
                        y = layer(ins[0])
                    else:
                        y = layer(torch.flatten(ins[0], 1)).reshape(ins[0].shape[0], -1, 1, 1)
                    if self.calibrating:  # scale weights so this layer's output has RMS TARGET_RMS
                        with torch.no_grad():
                            rms = float(y.double().pow(2).mean().sqrt())
                            # a power of 2**(1/16): rounding noise of another machine or thread count
                            # practically never changes it, so a spec and a seed fix the weights
                            scale = 2.0 ** (round(16 * math.log2(TARGET_RMS / rms)) / 16) if rms > 0 else 1.0
                            layer.weight.mul_(scale)
                            layer.bias.mul_(scale)
                        y = y * scale
                    y = activate(y, node["act"])
                elif op in ("add", "concat"):
                    if len({t.dim() for t in ins}) > 1:  # (c, 1, 1) operands held at different ranks
                        ins = [torch.flatten(t, 1) for t in ins]
                    y = activate(ins[0] + ins[1], node["act"]) if op == "add" else torch.cat(ins, 1)
                elif op in ("relu", "relu6"):
                    y = activate(ins[0], op)
                elif op == "maxpool":
                    y = F.max_pool2d(as4d(ins[0]), node["k"], node["stride"], node["pad"])
                elif op == "avgpool":
                    y = F.avg_pool2d(as4d(ins[0]), node["k"], node["stride"], node["pad"])
                elif op == "gap":
                    y = F.adaptive_avg_pool2d(as4d(ins[0]), 1)
                elif op == "flatten":
                    y = torch.flatten(ins[0], 1)
                else:  # validate() admits no other op
                    raise ProgramBuildError(f"program node {node['name']!r}: operator {op!r} cannot be built")
                values[node["name"]] = y
            return values

    return ProgramModule


def _prune_by_magnitude(weight, density: float) -> None:
    """Zero the (1 - density) fraction of smallest-magnitude entries, in place."""
    import torch
    n_zero = int(round((1.0 - density) * weight.numel()))
    if n_zero <= 0:
        return
    flat = weight.detach().view(-1)
    order = torch.argsort(flat.abs(), stable=True)
    flat[order[:n_zero]] = 0.0


def example_input(spec: Mapping[str, Any], seed: int = 0):
    """The program's input: uniform in [-1, 1), drawn from `seed` (float32, shape spec['input'])."""
    import torch
    spec = _checked(spec)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.rand(*spec["input"], generator=generator, dtype=torch.float32) * 2.0 - 1.0


def to_torch(spec: Mapping[str, Any], seed: int = 0):
    """A torch module (eval mode, float32) executing the spec; weights drawn from `seed`.

    Weights are kaiming-uniform, pruned by magnitude to each layer's density, then every layer is
    rescaled (on the seeded example input) so its output has RMS about 1: activations stay finite
    through any depth. The same spec and seed always give the same weights.
    """
    import torch
    spec = _checked(spec)
    module = _module_class()(spec)
    generator = torch.Generator().manual_seed(int(seed) + 1_000_003)
    with torch.no_grad():
        for node in spec["nodes"]:
            key = module.keys.get(node["name"])
            if key is None:
                continue
            layer = module.layers[key]
            fan_in = layer.weight[0].numel()
            bound = (6.0 / fan_in) ** 0.5
            layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
            layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * 0.1)
            _prune_by_magnitude(layer.weight, node["density"])
        module.calibrating = True
        module(example_input(spec, seed))
        module.calibrating = False
    return module.eval()


def reference_output(spec: Mapping[str, Any], seed: int = 0):
    """The torch module's output on example_input(spec, seed): what the .pte must reproduce."""
    import torch
    module = to_torch(spec, seed)
    with torch.no_grad():
        return module(example_input(spec, seed))


@contextlib.contextmanager
def quiet_executorch():
    """ExecuTorch's import chatter (optional torchao kernels, deprecations, cpuinfo probes on stderr)
    is not the user's business; real errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def delegation(graph_module) -> tuple[int, list[str]]:
    """XNNPACK delegate calls and the operators left outside any delegate in a lowered graph."""
    partitions, undelegated = 0, []
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        target = str(getattr(node.target, "__name__", node.target))
        if "executorch_call_delegate" in target:
            partitions += 1
        elif target != "getitem":
            undelegated.append(target.split("::")[-1].split(".")[-2] if "." in target else target)
    return partitions, undelegated


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def export_pte(spec: Mapping[str, Any], path: str | Path, seed: int = 0) -> dict[str, Any]:
    """torch.export -> edge dialect lowered with the XNNPACK partitioner -> .pte written atomically.

    Returns {"path", "partitions" (XNNPACK delegate calls), "undelegated_ops" (operator names run by
    ExecuTorch's portable kernels, in graph order), "export_s", "bytes"}. ProgramBuildError when the
    spec is invalid or the export fails; OSError when the file cannot be written.
    """
    import torch
    path = Path(path)
    spec = _checked(spec)
    start = time.perf_counter()
    try:
        module = to_torch(spec, seed)
        example = example_input(spec, seed)
        with quiet_executorch():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
            exported = torch.export.export(module, (example,))
            edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
            partitions, undelegated = delegation(edge.exported_program().graph_module)
            program = edge.to_executorch()
            data = program.buffer
    except Exception as exc:  # export failures come from deep inside torch; report them in one line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ProgramBuildError(f"ExecuTorch export of program {spec['name']!r} failed "
                                f"({type(exc).__name__}: {first})") from None
    _write_atomically(path, data)  # OSError goes to the caller: a disk problem, not this program's
    return {"path": path, "partitions": partitions, "undelegated_ops": undelegated,
            "export_s": time.perf_counter() - start, "bytes": len(data)}
