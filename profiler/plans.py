"""Sampling plans: which layer configurations a profile measures.

Owns the declared random space, the *prior* plan (real-network layers with widths and densities
perturbed), the held-out real-network evaluation set, and the candidate pools offered to an
adaptive acquisition plug-in. Every plan is seeded, de-duplicated and grows as a prefix when
the budget grows, so a rerun with a larger budget extends a profile instead of replacing it.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator

from profiler import networks
from profiler.layerspec import LayerSpec, LayerSpecError

#: Layers (not configurations) a profile measures unless told otherwise: the smallest budget of
#: the sample-efficiency curve at which every draw reached 95 % of unseen real-network layers
#: within ±10 % (benchmarks/RESULTS.md; 800 layers reached it on average only).
DEFAULT_BUDGET = 1600
#: Share of the budget drawn from real-network layers; the rest is the random space.
PRIOR_SHARE = 0.6
#: Weight densities: 1.0 plus low values, since the dense/sparse crossover sits low.
DENSITIES = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Channel width multipliers, JCW's steps of 0.1.
WIDTH_MULTIPLIERS = tuple(round(0.1 * i, 1) for i in range(1, 11))
SAMPLES = ("prior", "random", "holdout", "adaptive")
#: Held-out layers are drawn from their own stream and reserved so training never takes them.
HOLDOUT_POOL = 3000
HOLDOUT_SEED_OFFSET = 7_919


@dataclass(frozen=True)
class RandomSpace:
    """The declared space of the random plan; MACs are capped so no layer is far costlier than a real one."""

    ops: tuple[str, ...] = ("conv", "conv", "conv", "dwconv")
    kernels: tuple[int, ...] = (1, 1, 3, 3, 5, 7)
    strides: tuple[int, ...] = (1, 1, 2)
    sizes: tuple[int, ...] = (7, 14, 28, 56, 112, 224)
    min_channels: int = 3
    max_channels: int = 2048
    densities: tuple[float, ...] = DENSITIES
    max_macs: int = 240_000_000  # about twice the costliest ResNet-50 layer


DEFAULT_SPACE = RandomSpace()


def layer_impls(spec: LayerSpec) -> tuple[str, ...]:
    """Implementations a layer is measured with: dwconv runs dense only."""
    return ("dense",) if spec.op == "dwconv" else ("dense", "sparse")


def _log_uniform_int(rng: random.Random, low: int, high: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def _random_layer(rng: random.Random, space: RandomSpace) -> LayerSpec | None:
    op = rng.choice(space.ops)
    k = rng.choice(space.kernels if op == "conv" else (3, 3, 5))
    h = rng.choice(space.sizes)
    cin = _log_uniform_int(rng, space.min_channels, space.max_channels)
    cout = cin if op == "dwconv" else _log_uniform_int(rng, space.min_channels, space.max_channels)
    try:
        spec = LayerSpec(op=op, cin=cin, cout=cout, k=k, h=h, w=h, stride=rng.choice(space.strides),
                         density=rng.choice(space.densities))
    except LayerSpecError:
        return None
    return spec if spec.macs <= space.max_macs else None


def _scaled(channels: int, multiplier: float) -> int:
    return max(1, int(round(channels * multiplier)))


def perturb_real_layer(rng: random.Random, layer: dict, densities: tuple[float, ...] = DENSITIES) -> LayerSpec:
    """A real layer with its prunable widths scaled by JCW-style multipliers and a density drawn.

    Input channels follow the producer's width (its own multiplier); the network input and the
    classifier's outputs are fixed; a depthwise layer ties input to output.
    """
    cin = layer["cin"] if networks.is_fixed_input(layer) else _scaled(layer["cin"], rng.choice(WIDTH_MULTIPLIERS))
    if layer["op"] == "dwconv":
        cout = cin
    elif networks.is_classifier(layer):
        cout = layer["cout"]
    else:
        cout = _scaled(layer["cout"], rng.choice(WIDTH_MULTIPLIERS))
    return networks.to_spec(layer, cin=cin, cout=cout, density=rng.choice(densities))


def _unique_real_layers() -> list[dict]:
    """Real layers de-duplicated by shape, so a shape repeated in a network is not over-weighted."""
    seen, out = set(), []
    for layer in networks.real_layers():
        key = (layer["op"], layer["cin"], layer["cout"], layer["k"], layer["stride"], layer["h"],
               networks.is_fixed_input(layer), networks.is_classifier(layer))
        if key not in seen:
            seen.add(key)
            out.append(layer)
    return out


def _stream(rng: random.Random, draw, exclude: set[str]) -> Iterator[LayerSpec]:
    """Unique specs from a drawing function, skipping excluded keys; gives up when the space runs dry."""
    seen = set(exclude)
    misses = 0
    while misses < 10_000:
        spec = draw(rng)
        if spec is None or spec.key() in seen:
            misses += 1
            continue
        misses = 0
        seen.add(spec.key())
        yield spec


def prior_stream(seed: int, exclude: set[str] = frozenset()) -> Iterator[LayerSpec]:
    layers = _unique_real_layers()
    return _stream(random.Random(f"prior:{seed}"), lambda rng: perturb_real_layer(rng, rng.choice(layers)), exclude)


def random_stream(seed: int, space: RandomSpace = DEFAULT_SPACE, exclude: set[str] = frozenset()) -> Iterator[LayerSpec]:
    return _stream(random.Random(f"random:{seed}"), lambda rng: _random_layer(rng, space), exclude)


def _take(stream: Iterator[LayerSpec], n: int) -> list[LayerSpec]:
    out = []
    for spec in stream:
        if len(out) >= n:
            break
        out.append(spec)
    return out


def holdout_size(budget: int) -> int:
    return min(HOLDOUT_POOL, max(50, budget // 5))


def holdout_layers(seed: int, n: int) -> list[LayerSpec]:
    """Real-network layers with random widths and densities, from a stream of its own seed."""
    layers = _unique_real_layers()
    stream = _stream(random.Random(f"holdout:{seed + HOLDOUT_SEED_OFFSET}"),
                     lambda rng: perturb_real_layer(rng, rng.choice(layers)), set())
    return _take(stream, n)


@dataclass(frozen=True)
class Plan:
    """Layers of a profile by sample; `configurations` expands them to (spec, impl, threads, sample)."""

    prior: list[LayerSpec]
    random: list[LayerSpec]
    holdout: list[LayerSpec]

    def configurations(self, threads: int) -> list[tuple[LayerSpec, str, int, str]]:
        out = []
        for sample, specs in (("prior", self.prior), ("random", self.random), ("holdout", self.holdout)):
            for spec in specs:
                out.extend((spec, impl, threads, sample) for impl in layer_impls(spec))
        return out

    @property
    def training(self) -> list[LayerSpec]:
        return self.prior + self.random


def make_plan(budget: int = DEFAULT_BUDGET, seed: int = 0, *, prior_share: float = PRIOR_SHARE,
              space: RandomSpace = DEFAULT_SPACE, holdout: int | None = None) -> Plan:
    """The training plan (`budget` layers: prior then random) and the disjoint held-out set.

    The held-out stream's first HOLDOUT_POOL layers are reserved, so training layers never
    collide with the held-out set at any budget and a larger budget is a superset of a smaller.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    if not 0.0 <= prior_share <= 1.0:
        raise ValueError(f"prior_share must be in [0, 1], got {prior_share!r}")
    n_holdout = holdout_size(budget) if holdout is None else holdout
    reserved = holdout_layers(seed, HOLDOUT_POOL)
    reserved_keys = {s.key() for s in reserved}
    n_prior = int(round(budget * prior_share))
    prior = _take(prior_stream(seed, reserved_keys), n_prior)
    prior_keys = {s.key() for s in prior}
    rand = _take(random_stream(seed, space, reserved_keys | prior_keys), budget - len(prior))
    return Plan(prior=prior, random=rand, holdout=reserved[:n_holdout])


def candidate_pool(seed: int, n: int, exclude: set[str], *, prior_share: float = PRIOR_SHARE,
                   space: RandomSpace = DEFAULT_SPACE) -> list[LayerSpec]:
    """Unmeasured layers an acquisition plug-in chooses from (same mix as the plan, own seed)."""
    n_prior = int(round(n * prior_share))
    reserved = {s.key() for s in holdout_layers(seed, HOLDOUT_POOL)}
    excluded = set(exclude) | reserved
    prior = _take(_stream(random.Random(f"pool-prior:{seed}"),
                          lambda rng, layers=_unique_real_layers(): perturb_real_layer(rng, rng.choice(layers)),
                          excluded), n_prior)
    excluded |= {s.key() for s in prior}
    rand = _take(_stream(random.Random(f"pool-random:{seed}"), lambda rng: _random_layer(rng, space), excluded),
                 n - len(prior))
    return prior + rand
