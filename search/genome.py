"""Genomes: per free channel group a width ratio, per groups-1 conv a weight density, each an
index into a candidate list (JCW: steps of 0.1), with lower bounds for sensitive layers.

A population is an int array (individuals x genes); `SearchSpace` decodes it to channel counts,
densities, vectorized layer-spec columns for the predictor and the whole program (`program_spec`).
Without density genes (`prune_densities=False`, the executorch runtime) the genome is width-only.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from jcw.profiler.layerspec import LayerBatch, LayerSpec

from .errors import SearchError
from .graph import ModelGraph

STEPS = tuple(round(0.1 * i, 1) for i in range(1, 11))


@dataclass(frozen=True)
class Bounds:
    """Lowest width ratio / density a layer may get; sensitive layers get tighter bounds (JCW-like)."""

    min_width: float = 0.2
    min_density: float = 0.1
    first_width: float = 0.5      # output channels of the layer that reads the image
    first_density: float = 0.8    # the first layer has few weights and every later layer depends on it
    last_density: float = 0.3     # the classifier
    strided_width: float = 0.3    # outputs of stride-2 layers carry the downsampled features
    strided_density: float = 0.2
    residual_width: float = 0.4   # channels shared by a whole residual stage

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise SearchError(f"bound '{f.name}' must be in (0, 1], got {value!r}")


def _check_choices(name: str, choices) -> tuple[float, ...]:
    values = tuple(float(c) for c in choices)
    if not values or any(not 0.0 < c <= 1.0 for c in values) or list(values) != sorted(set(values)):
        raise SearchError(f"'{name}' must be increasing values in (0, 1], got {choices!r}")
    return values


class SearchSpace:
    """Decodes genomes of one model graph: gene j < n_width is a width index, the rest density indices."""

    def __init__(self, graph: ModelGraph, width_choices=STEPS, density_choices=STEPS,
                 bounds: Bounds | None = None, prune_widths: bool = True, prune_densities: bool = True,
                 name: str = "model") -> None:
        self.graph, self.name = graph, name
        self._program = None      # the program template, built on first use (see `program`)
        self.width_choices = np.array(_check_choices("width_choices", width_choices))
        self.density_choices = np.array(_check_choices("density_choices", density_choices))
        self.bounds = bounds or Bounds()
        self.width_groups = [g.index for g in graph.groups if not g.fixed] if prune_widths else []
        # Density genes only where the sparse engine runs a pruned layer sparse: groups-1 convolutions
        # (it runs depthwise and fully-connected layers dense, so pruning their weights buys no time).
        self.density_layers = [i for i, layer in enumerate(graph.layers)
                               if layer.spec.op == "conv" and not layer.is_linear] if prune_densities else []
        self.n_width, self.n_density = len(self.width_groups), len(self.density_layers)
        self.n_var = self.n_width + self.n_density
        if self.n_var == 0:
            raise SearchError("the model has nothing to prune: every channel group is fixed and densities are off")
        self.xu = np.array([len(self.width_choices) - 1] * self.n_width
                           + [len(self.density_choices) - 1] * self.n_density, dtype=np.int64)
        self.xl = np.array([self._lowest(self.width_choices, self._width_bound(g)) for g in self.width_groups]
                           + [self._lowest(self.density_choices, self._density_bound(i))
                              for i in self.density_layers], dtype=np.int64)
        layers = graph.layers
        self.n_layers = len(layers)
        self.group_channels = np.array([g.channels for g in graph.groups], dtype=np.int64)
        self.in_group = np.array([layer.in_group for layer in layers], dtype=np.int64)
        self.out_group = np.array([layer.out_group for layer in layers], dtype=np.int64)
        self.is_dw = np.array([layer.spec.op == "dwconv" for layer in layers])
        for name in ("k", "h", "w", "stride", "pad"):
            setattr(self, "_" + name, np.array([getattr(layer.spec, name) for layer in layers], dtype=np.int64))

    @staticmethod
    def _lowest(choices: np.ndarray, bound: float) -> int:
        allowed = np.nonzero(choices >= bound - 1e-9)[0]
        return int(allowed[0]) if allowed.size else len(choices) - 1

    def _width_bound(self, group_index: int) -> float:
        b, group = self.bounds, self.graph.groups[group_index]
        bound = b.min_width
        producers = [self.graph.layer(n) for n in group.producers]
        if group.residual:
            bound = max(bound, b.residual_width)
        if any(p.first for p in producers):
            bound = max(bound, b.first_width)
        if any(p.strided for p in producers):
            bound = max(bound, b.strided_width)
        return bound

    def _density_bound(self, layer_index: int) -> float:
        b, layer = self.bounds, self.graph.layers[layer_index]
        bound = b.min_density
        if layer.first:
            bound = max(bound, b.first_density)
        if layer.last:
            bound = max(bound, b.last_density)
        if layer.strided:
            bound = max(bound, b.strided_density)
        return bound

    # ---- decoding ---------------------------------------------------------------------------
    def check(self, X) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X))
        if X.shape[1] != self.n_var or not np.issubdtype(X.dtype, np.integer):
            raise SearchError(f"a genome must hold {self.n_var} integer genes, got shape {X.shape} of {X.dtype}")
        if (X < self.xl).any() or (X > self.xu).any():
            raise SearchError("a genome gene is outside its candidate list or below its layer's lower bound")
        return X.astype(np.int64)

    def width_ratios(self, X) -> np.ndarray:
        """(n, n_groups) width ratio per group; fixed groups are 1.0."""
        X = np.atleast_2d(X)
        ratios = np.ones((X.shape[0], len(self.graph.groups)))
        if self.n_width:
            ratios[:, self.width_groups] = self.width_choices[X[:, :self.n_width]]
        return ratios

    def channels(self, X) -> np.ndarray:
        """(n, n_groups) channels kept per group."""
        kept = np.floor(self.width_ratios(X) * self.group_channels + 0.5).astype(np.int64)
        return np.maximum(kept, 1)

    def densities(self, X) -> np.ndarray:
        """(n, n_layers) weight density per layer; depthwise layers and unpruned layers are 1.0."""
        X = np.atleast_2d(X)
        dens = np.ones((X.shape[0], self.n_layers))
        if self.n_density:
            dens[:, self.density_layers] = self.density_choices[X[:, self.n_width:]]
        return dens

    def columns(self, X) -> dict[str, np.ndarray]:
        """Layer-spec columns of every layer of every individual (individual-major, n * n_layers rows)."""
        X = np.atleast_2d(X)
        n = X.shape[0]
        ch = self.channels(X)
        cin, cout = ch[:, self.in_group], ch[:, self.out_group]
        op = np.where(self.is_dw, "dwconv", "conv").astype(object)
        cols = {"op": np.tile(op, n), "cin": cin.ravel(), "cout": cout.ravel()}
        for name in ("k", "h", "w", "stride", "pad"):
            cols[name] = np.tile(getattr(self, "_" + name), n)
        cols["density"] = self.densities(X).ravel()
        return cols

    def layer_specs(self, x) -> list[LayerSpec]:
        return LayerBatch.from_arrays(self.columns(np.atleast_2d(x)[:1])).to_specs()

    # ---- construction -------------------------------------------------------------------------
    def uniform(self, width: float = 1.0, density: float = 1.0) -> np.ndarray:
        """The genome closest to a uniform width multiplier and density, clipped to the bounds."""
        w = int(np.argmin(np.abs(self.width_choices - width)))
        d = int(np.argmin(np.abs(self.density_choices - density)))
        x = np.array([w] * self.n_width + [d] * self.n_density, dtype=np.int64)
        return np.clip(x, self.xl, self.xu)

    # ---- the whole program ---------------------------------------------------------------------
    @property
    def program(self):
        """The model's program template (search.program.ProgramTemplate), built on first use."""
        if self._program is None:
            from .program import ProgramTemplate
            self._program = ProgramTemplate(self.graph, self.name)
        return self._program

    def program_spec(self, x) -> dict:
        """The whole program of genome x as a validated program spec (profiler.programs format)."""
        x = np.atleast_2d(x)[:1]
        return self.program.spec(self.channels(x)[0], self.densities(x)[0])

    def describe(self, x) -> dict[str, dict[str, float]]:
        """Per layer name: width ratio of its output channels and weight density."""
        ratios, dens = self.width_ratios(x)[0], self.densities(x)[0]
        widths = {layer.name: float(ratios[layer.out_group]) for layer in self.graph.layers}
        densities = {layer.name: float(dens[i]) for i, layer in enumerate(self.graph.layers)}
        return {"widths": widths, "densities": densities}
