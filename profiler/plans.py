"""Sampling plans: which layer configurations a profile measures.

Owns the declared random space, the *prior* plan (real-network layers with widths, densities and input sizes
perturbed), the *coverage* plan (profiler/coverage.py: layer kinds the prior never reaches), the
held-out real-network evaluation set, the held-out *unseen* set (layers of architectures no plan is
drawn from, profiler/unseen_layers.py, whose shapes training never gets), and the candidate pools
offered to an adaptive acquisition plug-in. Every plan is seeded, de-duplicated and grows as a prefix
when the budget grows, so a rerun with a larger budget extends a profile instead of replacing it.
"""
from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache

from jcw.profiler import coverage, networks, unseen_layers
from jcw.profiler.layerspec import LayerSpec, LayerSpecError

#: Layers (not configurations) a profile measures unless told otherwise: the smallest budget of
#: the sample-efficiency curve at which every draw reached 95 % of unseen real-network layers
#: within ±10 % (benchmarks/RESULTS.md, measured with plan version 1; 800 layers reached it on average only).
DEFAULT_BUDGET = 1600
#: Share of the budget drawn from real-network layers, then from the coverage regions; the rest is the
#: random space (40 % of the budget before plan version 2, which took the coverage share from it).
PRIOR_SHARE = 0.6
COVERAGE_SHARE = 0.25
#: Version of the sampling: a profile planned by another version is not extended (session.ProfileParams).
#: 3: fully connected layers among the coverage regions, stems down to 2 outputs, dense 3x3s down to 2 inputs.
#: 5: real-network layers at the input resolutions users deploy (half of them; the rest at 224 px), random
#: layers on those resolutions' maps (version 4, coverage maps down to 3 px, was tried and not kept).
#: 6: coverage maps down to 3 px (depthwise and dense 3x3), half the fully connected layers classifier-sized,
#: a third of the dense 3x3s with few outputs; measured first with aligned buffers (runner 0.2.2).
PLAN_VERSION = 6
#: The first plan version whose transfer plan (`transfer_plan`, held-out sets included) draws what this one
#: draws: a `jcw profile --prior` profile of any version since extends.
TRANSFER_PLAN_SINCE = 3
#: Input sizes users deploy a CNN at; 224 px alone puts every map at 7, 14, 28, 56 or 112 px, and a layer
#: model trained there misjudges an 8 or 20 px map by 10-20 % (benchmarks/RESULTS.md, plan version 5).
DEPLOY_RESOLUTIONS = tuple(range(96, 321, 16))
#: Share of the prior's real-network layers drawn at the networks' own 224 px.
CANONICAL_SHARE = 0.5
#: Weight densities: 1.0 plus low values, since the dense/sparse crossover sits low.
DENSITIES = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Channel width multipliers, JCW's steps of 0.1.
WIDTH_MULTIPLIERS = tuple(round(0.1 * i, 1) for i in range(1, 11))
SAMPLES = ("prior", "coverage", "random", "holdout", "unseen", "adaptive")
#: Samples measured only to evaluate: the real-network holdout and the unseen-architecture layers.
HELD_OUT_SAMPLES = ("holdout", "unseen")
#: Held-out layers are drawn from their own stream and reserved so training never takes them.
HOLDOUT_POOL = 3000
HOLDOUT_SEED_OFFSET = 7_919
UNSEEN_POOL = 3000


@dataclass(frozen=True)
class RandomSpace:
    """The declared space of the random plan; MACs are capped so no layer is far costlier than a real one."""

    ops: tuple[str, ...] = ("conv", "conv", "conv", "dwconv")
    kernels: tuple[int, ...] = (1, 1, 3, 3, 5, 7)
    strides: tuple[int, ...] = (1, 1, 2)
    resolutions: tuple[int, ...] = DEPLOY_RESOLUTIONS
    halvings: tuple[int, ...] = (0, 1, 2, 3, 4, 5)  # a layer's map: an input size halved this often
    min_channels: int = 3
    max_channels: int = 2048
    densities: tuple[float, ...] = DENSITIES
    max_macs: int = 240_000_000  # about twice the costliest ResNet-50 layer

    def map_size(self, rng: random.Random) -> int:
        """A layer's input map: one of the resolutions, halved (rounding up) as often as a network would."""
        return networks.halved(rng.choice(self.resolutions), rng.choice(self.halvings))


DEFAULT_SPACE = RandomSpace()


def layer_impls(spec: LayerSpec) -> tuple[str, ...]:
    """Implementations a layer is measured with: dwconv runs dense only."""
    return ("dense",) if spec.op == "dwconv" else ("dense", "sparse")


def _log_uniform_int(rng: random.Random, low: int, high: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def _random_layer(rng: random.Random, space: RandomSpace) -> LayerSpec | None:
    op = rng.choice(space.ops)
    k = rng.choice(space.kernels if op == "conv" else (3, 3, 5))
    h = space.map_size(rng)
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


def perturb_real_layer(rng: random.Random, layer: dict, densities: tuple[float, ...] = DENSITIES,
                       resolutions: tuple[int, ...] = ()) -> LayerSpec:
    """A real layer with its prunable widths scaled by JCW-style multipliers and a density drawn.

    Input channels follow the producer's width (its own multiplier); the network input and the
    classifier's outputs are fixed; a depthwise layer ties input to output. Given `resolutions`, the
    network is fed one of them instead of 224 px with probability 1 - CANONICAL_SHARE.
    """
    fixed_input = networks.is_fixed_input(layer)
    if resolutions and rng.random() >= CANONICAL_SHARE:
        layer = networks.at_resolution(layer, rng.choice(resolutions))
    cin = layer["cin"] if fixed_input else _scaled(layer["cin"], rng.choice(WIDTH_MULTIPLIERS))
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


def shape_key(spec: LayerSpec) -> tuple:
    """A layer's shape without its density: what the unseen set keeps out of training."""
    return (spec.op, spec.cin, spec.cout, spec.k, spec.stride, spec.pad, spec.h, spec.w)


def _stream(rng: random.Random, draw, exclude: set[str], exclude_shapes: frozenset = frozenset()
            ) -> Iterator[LayerSpec]:
    """Unique specs from a drawing function, skipping excluded keys and shapes; gives up when the space runs dry."""
    seen = set(exclude)
    misses = 0
    while misses < 10_000:
        spec = draw(rng)
        if spec is None or spec.key() in seen or (exclude_shapes and shape_key(spec) in exclude_shapes):
            misses += 1
            continue
        misses = 0
        seen.add(spec.key())
        yield spec


def prior_stream(seed: int, exclude: set[str] = frozenset(), exclude_shapes: frozenset = frozenset(),
                 resolutions: tuple[int, ...] = DEPLOY_RESOLUTIONS) -> Iterator[LayerSpec]:
    layers = _unique_real_layers()
    return _stream(random.Random(f"prior:{seed}"),
                   lambda rng: perturb_real_layer(rng, rng.choice(layers), resolutions=resolutions),
                   exclude, exclude_shapes)


def random_stream(seed: int, space: RandomSpace = DEFAULT_SPACE, exclude: set[str] = frozenset(),
                  exclude_shapes: frozenset = frozenset()) -> Iterator[LayerSpec]:
    return _stream(random.Random(f"random:{seed}"), lambda rng: _random_layer(rng, space), exclude, exclude_shapes)


def coverage_stream(seed: int, space: RandomSpace = DEFAULT_SPACE, exclude: set[str] = frozenset(),
                    exclude_shapes: frozenset = frozenset()) -> Iterator[LayerSpec]:
    return _stream(random.Random(f"coverage:{seed}"),
                   lambda rng: coverage.coverage_layer(rng, space.densities, space.max_macs), exclude, exclude_shapes)


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


@lru_cache(maxsize=1)
def in_family_shapes() -> frozenset:
    """Every shape the prior and the real-network holdout can draw (each real layer at every width pair)."""
    shapes = set()
    for layer in _unique_real_layers():
        fixed_in, classifier = networks.is_fixed_input(layer), networks.is_classifier(layer)
        cins = {layer["cin"]} if fixed_in else {_scaled(layer["cin"], m) for m in WIDTH_MULTIPLIERS}
        for cin in cins:
            if layer["op"] == "dwconv":
                couts = {cin}
            else:
                couts = {layer["cout"]} if classifier else {_scaled(layer["cout"], m) for m in WIDTH_MULTIPLIERS}
            shapes.update(shape_key(networks.to_spec(layer, cin=cin, cout=cout)) for cout in couts)
    return frozenset(shapes)


@lru_cache(maxsize=8)
def unseen_bank(seed: int) -> tuple[tuple[tuple[str, tuple[LayerSpec, ...]], ...], frozenset]:
    """The seed's unseen networks with every shape the in-family space can also draw taken out (such a layer
    is not unseen), and the set of the shapes left: what training never gets."""
    known = in_family_shapes()
    bank = tuple((family, tuple(s for s in layers if shape_key(s) not in known))
                 for family, layers in unseen_layers.network_bank(seed))
    return bank, frozenset(shape_key(s) for _, layers in bank for s in layers)


def unseen_shapes(seed: int) -> frozenset:
    """Shapes of the seed's unseen-architecture bank; no training or in-family held-out layer has one."""
    return unseen_bank(seed)[1]


def unseen_held_out(seed: int, n: int) -> list[LayerSpec]:
    """Layers of unseen architectures with random densities: a family in turn, one of its networks, one layer."""
    bank = unseen_bank(seed)[0]
    by_family: dict[str, list[tuple[LayerSpec, ...]]] = {}
    for family, layers in bank:
        if layers:
            by_family.setdefault(family, []).append(layers)
    families = list(by_family)
    turn = itertools.count()  # families in turn, so every one gets its share of any prefix

    def draw(rng: random.Random) -> LayerSpec:
        family = families[next(turn) % len(families)]
        layer = rng.choice(rng.choice(by_family[family]))
        return layer.replace(density=rng.choice(DENSITIES))

    return _take(_stream(random.Random(f"unseen:{seed}"), draw, set()), n)


@dataclass(frozen=True)
class Plan:
    """Layers of a profile by sample; `configurations` expands them to (spec, impl, threads, sample)."""

    prior: list[LayerSpec]
    random: list[LayerSpec]
    holdout: list[LayerSpec]
    coverage: list[LayerSpec] = field(default_factory=list)
    unseen: list[LayerSpec] = field(default_factory=list)

    def configurations(self, threads: int) -> list[tuple[LayerSpec, str, int, str]]:
        out = []
        for sample in ("prior", "coverage", "random", "holdout", "unseen"):
            for spec in getattr(self, sample):
                out.extend((spec, impl, threads, sample) for impl in layer_impls(spec))
        return out

    @property
    def training(self) -> list[LayerSpec]:
        return self.prior + self.coverage + self.random


def make_plan(budget: int = DEFAULT_BUDGET, seed: int = 0, *, prior_share: float = PRIOR_SHARE,
              coverage_share: float = COVERAGE_SHARE, space: RandomSpace = DEFAULT_SPACE,
              holdout: int | None = None, unseen: int | None = None) -> Plan:
    """The training plan (`budget` layers: prior, coverage, random) and the two disjoint held-out sets.

    The held-out stream's first HOLDOUT_POOL layers are reserved, so training layers never
    collide with the held-out set at any budget and a larger budget is a superset of a smaller.
    The unseen set (`unseen` layers, default as many as the holdout) comes from the unseen bank, none of
    whose shapes training draws.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    if not 0.0 <= prior_share <= 1.0:
        raise ValueError(f"prior_share must be in [0, 1], got {prior_share!r}")
    if not 0.0 <= coverage_share <= 1.0 - prior_share:
        raise ValueError(f"coverage_share must be in [0, 1 - prior_share], got {coverage_share!r}")
    n_holdout = holdout_size(budget) if holdout is None else holdout
    reserved = holdout_layers(seed, HOLDOUT_POOL)
    reserved_keys = {s.key() for s in reserved}
    kept_out = unseen_shapes(seed)
    n_prior = int(round(budget * prior_share))
    prior = _take(prior_stream(seed, reserved_keys, kept_out, space.resolutions), n_prior)
    taken = reserved_keys | {s.key() for s in prior}
    cover = _take(coverage_stream(seed, space, taken, kept_out), min(budget - len(prior),
                                                                     int(round(budget * coverage_share))))
    taken |= {s.key() for s in cover}
    rand = _take(random_stream(seed, space, taken, kept_out), budget - len(prior) - len(cover))
    return Plan(prior=prior, random=rand, holdout=reserved[:n_holdout], coverage=cover,
                unseen=unseen_held_out(seed, n_holdout if unseen is None else unseen))


def candidate_pool(seed: int, n: int, exclude: set[str], *, prior_share: float = PRIOR_SHARE,
                   coverage_share: float = COVERAGE_SHARE, space: RandomSpace = DEFAULT_SPACE,
                   plan_seed: int | None = None) -> list[LayerSpec]:
    """Unmeasured layers an acquisition plug-in chooses from (same mix as the plan, own seed); none has a
    shape of the unseen bank of `plan_seed` (the profile's seed; default `seed`)."""
    n_prior = int(round(n * prior_share))
    reserved = {s.key() for s in holdout_layers(seed, HOLDOUT_POOL)}
    excluded = set(exclude) | reserved
    kept_out = unseen_shapes(seed if plan_seed is None else plan_seed)
    real = _unique_real_layers()
    prior = _take(_stream(random.Random(f"pool-prior:{seed}"),
                          lambda rng: perturb_real_layer(rng, rng.choice(real), resolutions=space.resolutions),
                          excluded, kept_out), n_prior)
    excluded |= {s.key() for s in prior}
    cover = _take(_stream(random.Random(f"pool-coverage:{seed}"),
                          lambda rng: coverage.coverage_layer(rng, space.densities, space.max_macs), excluded,
                          kept_out), min(n - len(prior), int(round(n * coverage_share))))
    excluded |= {s.key() for s in cover}
    rand = _take(_stream(random.Random(f"pool-random:{seed}"), lambda rng: _random_layer(rng, space), excluded,
                         kept_out), n - len(prior) - len(cover))
    return prior + cover + rand


# ---- the plan of `jcw profile --prior`: a few layers that teach a known device's predictor this one --------
#: Layers `jcw profile --prior` measures unless told otherwise (the transfer curve, benchmarks/RESULTS.md).
TRANSFER_BUDGET = 200


def transfer_stratum(op: str, k: int) -> str:
    """The operator group a transfer plan spreads its budget over (each gets its own rescaling)."""
    return "dwconv" if op == "dwconv" else ("conv 1x1" if k == 1 else "conv kxk")


def transfer_plan(budget: int, seed: int = 0, *, holdout: int | None = None, unseen: int | None = None) -> Plan:
    """Only real-network layers (what users deploy), perturbed as in the prior plan but taking the operator
    groups in turn: uniform draws give ResNet-50's 1x1 convolutions half of a small budget, and a transfer
    has to rescale every group. The held-out sets are those of `make_plan`, so both plans score alike."""
    base = make_plan(budget, seed, holdout=holdout, unseen=unseen)
    layers = _unique_real_layers()
    strata: dict[str, list[dict]] = {}
    for layer in layers:
        strata.setdefault(transfer_stratum(layer["op"], layer["k"]), []).append(layer)
    names = sorted(strata)
    turns = iter(range(10**12))
    reserved = {s.key() for s in holdout_layers(seed, HOLDOUT_POOL)}
    stream = _stream(random.Random(f"transfer:{seed}"),
                     lambda rng: perturb_real_layer(rng, rng.choice(strata[names[next(turns) % len(names)]])),
                     reserved)
    return replace(base, prior=_take(stream, budget), random=[], coverage=[])
