"""Applying a genome to a real torch model: channels sliced (highest-L1 kept, whole coupling groups
at once), weights zeroed by magnitude through `torch.nn.utils.prune` masks, batch-norm recalibration,
and the check that the pruned network's layers are exactly the specs the predictor was asked about.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from jcw.profiler.layerspec import LayerSpec

from .errors import SearchError
from .genome import SearchSpace
from .graph import read_model


def _weight(module: nn.Module) -> torch.Tensor:
    return getattr(module, "weight_orig", module.weight).detach()


def channel_order(model: nn.Module, space: SearchSpace) -> list[np.ndarray]:
    """Per group, channel indices from most to least important (sum of producers' normalised L1 norms)."""
    orders = []
    for group in space.graph.groups:
        score = np.zeros(group.channels)
        for name in group.producers or group.depthwise:
            w = _weight(model.get_submodule(name)).abs().reshape(group.channels, -1).sum(1).double().numpy()
            score += w / max(w.mean(), 1e-12)
        orders.append(np.argsort(-score, kind="stable"))
    return orders


def _slice_param(module: nn.Module, name: str, index: torch.Tensor, dim: int) -> None:
    tensor = getattr(module, name, None)
    if tensor is None:
        return
    sliced = tensor.detach().index_select(dim, index).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, name, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
    else:
        setattr(module, name, sliced)


def _slice_out(module: nn.Module, index: torch.Tensor) -> None:
    _slice_param(module, "weight", index, 0)
    _slice_param(module, "bias", index, 0)
    if isinstance(module, nn.Conv2d):
        module.out_channels = len(index)
    elif isinstance(module, nn.Linear):
        module.out_features = len(index)


def _slice_in(module: nn.Module, index: torch.Tensor) -> None:
    _slice_param(module, "weight", index, 1)
    if isinstance(module, nn.Conv2d):
        module.in_channels = len(index)
    else:
        module.in_features = len(index)


def _slice_norm(module: nn.Module, index: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _slice_param(module, name, index, 0)
    module.num_features = len(index)


def magnitude_mask(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """1 for the `keep` largest-magnitude weights, 0 elsewhere (ties broken by position)."""
    flat = weight.detach().abs().flatten()
    mask = torch.zeros_like(flat)
    mask[torch.topk(flat, keep, sorted=False).indices] = 1.0
    return mask.view_as(weight)


def apply_genome(model: nn.Module, space: SearchSpace, x, orders: list[np.ndarray] | None = None) -> nn.Module:
    """A pruned copy of `model`: channels sliced per group, weights masked per layer density."""
    x = space.check(x)[0]
    orders = orders if orders is not None else channel_order(model, space)
    pruned = copy.deepcopy(model)
    kept = space.channels(x[None])[0]
    for group in space.graph.groups:
        if kept[group.index] == group.channels:
            continue
        index = torch.from_numpy(np.sort(orders[group.index][:kept[group.index]]))
        for name in group.producers:
            _slice_out(pruned.get_submodule(name), index)
        for name in group.consumers:
            _slice_in(pruned.get_submodule(name), index)
        for name in group.depthwise:
            conv = pruned.get_submodule(name)
            _slice_out(conv, index)
            conv.in_channels = conv.groups = len(index)
        for name in group.norms:
            _slice_norm(pruned.get_submodule(name), index)
    for spec, layer in zip(space.layer_specs(x), space.graph.layers):
        if spec.density < 1.0:
            module = pruned.get_submodule(layer.name)
            torch_prune.custom_from_mask(module, "weight", magnitude_mask(module.weight, spec.nnz))
    return pruned


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold the pruning masks into plain weights (for export); the zeros stay."""
    for module in model.modules():
        if torch_prune.is_pruned(module) and hasattr(module, "weight_mask"):
            torch_prune.remove(module, "weight")
    return model


def recalibrate_batchnorm(model: nn.Module, batches) -> nn.Module:
    """Re-estimate batch-norm statistics of a pruned model from unlabeled batches (cumulative average)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    saved = [(m.momentum, m.training) for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for m, (momentum, _) in zip(norms, saved):
        m.momentum = momentum
        m.eval()
    return model


def check_against_specs(pruned: nn.Module, example: torch.Tensor, expected: list[LayerSpec]) -> None:
    """Raise SearchError unless every prunable layer of `pruned` has exactly the expected spec and non-zeros."""
    graph = read_model(pruned, example)
    if len(graph.layers) != len(expected):
        raise SearchError(f"the pruned model has {len(graph.layers)} layers, the candidate {len(expected)}")
    for layer, want in zip(graph.layers, expected):
        got = layer.spec.replace(density=want.density)
        if got != want:
            raise SearchError(f"pruned layer {layer.name} is {got.key()}, the candidate says {want.key()}")
        module = pruned.get_submodule(layer.name)
        mask = getattr(module, "weight_mask", None)
        kept = int(mask.sum()) if mask is not None else int(torch.count_nonzero(module.weight))
        if want.density < 1.0 and kept != want.nnz:
            raise SearchError(f"pruned layer {layer.name} keeps {kept} weights, the candidate says {want.nnz}")


def save_pruned(model: nn.Module, path: str | Path) -> Path:
    """Save the pruned model's tensors, masks included (loadable with torch.load(weights_only=True))."""
    path = Path(path)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
    return path


def load_pruned(model: nn.Module, space: SearchSpace, x, path: str | Path) -> nn.Module:
    """Rebuild the pruned structure of candidate `x` on `model` and load the saved tensors into it."""
    pruned = apply_genome(model, space, x)
    state = torch.load(Path(path), weights_only=True)
    pruned.load_state_dict(state)
    return pruned
