"""Program specs of whole networks for `jcw profile`: the four families the layer plans are drawn from
(ResNet-18/50, MobileNetV1/V2, torchvision topology), held-out "unseen" families and training-only operator
families (profiler/operator_families.py), each at any input resolution with per-channel-group width
multipliers (a genome), and the seeded train/holdout/unseen plan.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np

from jcw.profiler.networks import INPUT_CHANNELS, NUM_CLASSES
from jcw.profiler.operator_families import BUILDERS as OPERATOR_BUILDERS
from jcw.profiler.operator_families import OPERATOR_FAMILIES
from jcw.profiler.program_builder import Builder
from jcw.profiler.programs import program_id, validate

#: Families the profiler's layer plans are drawn from (names as in profiler/networks.py).
TRAIN_FAMILIES = ("resnet18", "resnet50", "mobilenet_v1", "mobilenet_v2")
#: Held-out architectures no plan is drawn from: other operators and other shapes.
UNSEEN_FAMILIES = ("vgg11_lite", "squeezenet_lite", "efficientnet_lite0", "densenet_lite")
FAMILIES = TRAIN_FAMILIES + UNSEEN_FAMILIES + OPERATOR_FAMILIES
WIDTH_STEPS = tuple(round(0.1 * i, 1) for i in range(1, 11))
RESOLUTIONS = (128, 160, 192, 224)
RESOLUTION_WEIGHTS = (0.2, 0.2, 0.2, 0.4)
SAMPLES = ("train", "holdout", "unseen")


class ProgramZooError(ValueError):
    """A zoo request is malformed (unknown family, bad widths or resolution); one sentence."""


def _resnet(b: Builder, blocks: tuple[int, ...], bottleneck: bool) -> None:
    expansion = 4 if bottleneck else 1
    group, full = ("stem" if bottleneck else "stage1"), 64
    b.conv("conv1", b.ch(group, 64), 7, 2, act="relu", inputs=["input"])
    cur = b.pool("maxpool", "maxpool", 3, 2, 1)
    for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        out_group, out_full = f"stage{stage}", width * expansion
        for block in range(count):
            stride = 2 if stage > 1 and block == 0 else 1
            p = f"layer{stage}.{block}"
            if bottleneck:  # torchvision v1.5: the stride sits on the 3x3
                b.conv(f"{p}.conv1", b.ch(f"{p}.mid1", width), 1, act="relu", inputs=[cur])
                b.conv(f"{p}.conv2", b.ch(f"{p}.mid2", width), 3, stride, act="relu")
                body = b.conv(f"{p}.conv3", b.ch(out_group, out_full), 1)
            else:
                b.conv(f"{p}.conv1", b.ch(f"{p}.mid", width), 3, stride, act="relu", inputs=[cur])
                body = b.conv(f"{p}.conv2", b.ch(out_group, out_full), 3)
            identity = cur
            if stride != 1 or full != out_full:  # the full-width topology decides; widths never do
                identity = b.conv(f"{p}.downsample", b.ch(out_group, out_full), 1, stride, inputs=[cur])
            cur = b.node(f"{p}.add", "add", [body, identity], act="relu")
            full = out_full
    b.head()


def _resnet18(b: Builder) -> None:
    _resnet(b, (2, 2, 2, 2), bottleneck=False)


def _resnet50(b: Builder) -> None:
    _resnet(b, (3, 4, 6, 3), bottleneck=True)


def _mobilenet_v1(b: Builder) -> None:
    b.conv("conv1", b.ch("conv1", 32), 3, 2, act="relu")
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for index, (cout, stride) in enumerate(plan, start=1):
        b.dwconv(f"block{index}.dw", 3, stride, act="relu")
        b.conv(f"block{index}.pw", b.ch(f"block{index}", cout), 1, act="relu")
    b.head()


def _inverted_residuals(b: Builder, settings, stem_full: int, act: str, prefix: str = "block") -> int:
    """MobileNetV2-style stages: (expand, k, stride, cout, repeats); returns the last full width."""
    cin_full, index = stem_full, 0
    for stage, (expand, k, first_stride, cout, count) in enumerate(settings, start=1):
        for repeat in range(count):
            stride = first_stride if repeat == 0 else 1
            p, start = f"{prefix}{index}", b.last
            if expand != 1:
                b.conv(f"{p}.expand", b.ch(f"{p}.expand", cin_full * expand), 1, act=act)
            b.dwconv(f"{p}.dw", k, stride, act=act)
            body = b.conv(f"{p}.project", b.ch(f"stage{stage}", cout), 1)
            if stride == 1 and cin_full == cout:
                b.node(f"{p}.add", "add", [body, start], act=None)
            cin_full, index = cout, index + 1
    return cin_full


def _mobilenet_v2(b: Builder) -> None:
    b.conv("conv1", b.ch("stem", 32), 3, 2, act="relu6")
    settings = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 3, 2, 32, 3), (6, 3, 2, 64, 4), (6, 3, 1, 96, 3),
                (6, 3, 2, 160, 3), (6, 3, 1, 320, 1)]
    _inverted_residuals(b, settings, 32, "relu6")
    b.conv("conv_last", b.ch("conv_last", 1280), 1, act="relu6")
    b.head()


def _vgg11_lite(b: Builder) -> None:
    """VGG-11 at a quarter of the width (half for the last stages): 3x3 convs, 2x2 max-pools, two FCs."""
    cfg = [16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 256, 256, "M"]
    index = pool = 0
    for item in cfg:
        if item == "M":
            pool += 1
            b.pool(f"pool{pool}", "maxpool", 2, 2)
        else:
            index += 1
            b.conv(f"conv{index}", b.ch(f"conv{index}", item), 3, act="relu")
    b.node("flatten", "flatten")  # 7x7 at 224, 4x4 at 128
    b.node("fc1", "linear", channels=(c := b.ch("fc1", 512)), cout=c, act="relu")
    b.node("fc", "linear", channels=NUM_CLASSES, cout=NUM_CLASSES, act=None)


def _squeezenet_lite(b: Builder) -> None:
    """SqueezeNet 1.1 (fire modules: 1x1 squeeze, concat of 1x1 and 3x3 expands), one pool an avgpool,
    a 1x1 conv classifier and global pooling."""
    b.conv("conv1", b.ch("conv1", 64), 3, 2, act="relu")
    b.pool("pool1", "maxpool", 3, 2, 1)

    def fire(n: int, squeeze: int, expand: int) -> None:
        s = b.conv(f"fire{n}.squeeze", b.ch(f"fire{n}.squeeze", squeeze), 1, act="relu")
        e1 = b.conv(f"fire{n}.expand1x1", b.ch(f"fire{n}.expand1x1", expand), 1, act="relu", inputs=[s])
        e3 = b.conv(f"fire{n}.expand3x3", b.ch(f"fire{n}.expand3x3", expand), 3, act="relu", inputs=[s])
        b.node(f"fire{n}.cat", "concat", [e1, e3])

    for n, squeeze, expand in ((2, 16, 64), (3, 16, 64)):
        fire(n, squeeze, expand)
    b.pool("pool2", "avgpool", 3, 2, 0)  # pad 0: XNNPACK delegates a padded avgpool only without count_include_pad
    for n, squeeze, expand in ((4, 32, 128), (5, 32, 128)):
        fire(n, squeeze, expand)
    b.pool("pool3", "maxpool", 3, 2, 1)
    for n, squeeze, expand in ((6, 48, 192), (7, 48, 192), (8, 64, 256), (9, 64, 256)):
        fire(n, squeeze, expand)
    b.conv("classifier", NUM_CLASSES, 1, act="relu")
    b.head(classifier=False)


def _efficientnet_lite0(b: Builder) -> None:
    """EfficientNet-Lite0: MBConv with 3x3 and 5x5 depthwise convs, relu6, no squeeze-excitation."""
    b.conv("stem", b.ch("stem", 32), 3, 2, act="relu6")
    settings = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
    _inverted_residuals(b, settings, 32, "relu6", prefix="mb")
    b.conv("head", b.ch("head", 1280), 1, act="relu6")
    b.head()


def _densenet_lite(b: Builder) -> None:
    """A small DenseNet-BC (growth 16, bottleneck 64): pre-activation relu on multi-input concats,
    1x1 transitions with 2x2 average pooling."""
    growth, bottleneck = 16, 64
    b.conv("stem", b.ch("stem", 32), 3, 2, act="relu")
    features, full = [b.pool("pool0", "maxpool", 3, 2, 1)], 32
    blocks = (4, 6, 8, 6)
    for bi, count in enumerate(blocks, start=1):
        for layer in range(count):
            p = f"block{bi}.layer{layer}"
            x = features[0] if len(features) == 1 else b.node(f"{p}.cat", "concat", features)
            b.node(f"{p}.relu", "relu", [x])
            b.conv(f"{p}.bottleneck", b.ch(f"{p}.bottleneck", bottleneck), 1, act="relu")
            features.append(b.conv(f"{p}.growth", b.ch(f"{p}.growth", growth), 3))
            full += growth
        b.node(f"block{bi}.cat", "concat", features)
        b.node(f"block{bi}.relu", "relu")
        if bi < len(blocks):
            full //= 2
            b.conv(f"transition{bi}", b.ch(f"transition{bi}", full), 1)
            features = [b.pool(f"transition{bi}.pool", "avgpool", 2, 2)]
    b.head()


_BUILDERS = {"resnet18": _resnet18, "resnet50": _resnet50, "mobilenet_v1": _mobilenet_v1,
             "mobilenet_v2": _mobilenet_v2, "vgg11_lite": _vgg11_lite, "squeezenet_lite": _squeezenet_lite,
             "efficientnet_lite0": _efficientnet_lite0, "densenet_lite": _densenet_lite, **OPERATOR_BUILDERS}


def _check_family(family: Any) -> str:
    if family not in _BUILDERS:
        raise ProgramZooError(f"program family must be one of {', '.join(FAMILIES)}, got {family!r}"[:200])
    return family


@cache
def _groups(family: str) -> tuple[tuple[str, int], ...]:
    b = Builder({})
    _BUILDERS[family](b)
    return tuple(b.groups.items())


def family_groups(family: str) -> list[tuple[str, int]]:
    """The family's channel-coupling groups as (name, full channels), in network order: the genes."""
    return list(_groups(_check_family(family)))


def _multipliers(family: str, widths: Any) -> dict[str, float]:
    names = [g for g, _ in _groups(family)]
    if widths is None:
        return {}
    if isinstance(widths, (int, float)) and not isinstance(widths, bool):
        values = dict.fromkeys(names, float(widths))
    elif isinstance(widths, Mapping):
        unknown = sorted(set(widths) - set(names))
        if unknown:
            raise ProgramZooError(f"{family} has no channel group {unknown[0]!r}"[:200])
        values = dict(widths)
    elif isinstance(widths, (list, tuple, np.ndarray)):
        if len(widths) != len(names):
            raise ProgramZooError(f"{family} has {len(names)} channel groups, got {len(widths)} width multipliers")
        values = dict(zip(names, widths))
    else:
        raise ProgramZooError(f"widths must be a multiplier, a list or a dict of multipliers, "
                              f"got {type(widths).__name__}")
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 < value <= 1.0:
            raise ProgramZooError(f"width multiplier of {family} group {name!r} must be in (0, 1], got {value!r}"[:200])
    return {name: float(value) for name, value in values.items()}


def zoo_program(family: str, widths: Any = None, resolution: int = 224) -> dict[str, Any]:
    """A validated program spec of `family` at `resolution` (square input), every channel group at its
    width multiplier: `widths` is None (full width), one multiplier, a list in family_groups() order,
    or a dict {group: multiplier} (missing groups at full width)."""
    family = _check_family(family)
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or not 32 <= resolution <= 4096:
        raise ProgramZooError(f"resolution must be an integer in [32, 4096], got {resolution!r}"[:200])
    multipliers = _multipliers(family, widths)
    b = Builder(multipliers)
    _BUILDERS[family](b)
    spec = validate({"name": family, "family": family, "input": [1, INPUT_CHANNELS, int(resolution), int(resolution)],
                     "nodes": b.nodes})
    full = all(v == 1.0 for v in multipliers.values())
    spec["name"] = f"{family}-{int(resolution)}-" + ("full" if full else program_id(spec)[:8])
    return spec


def _rng(rng: Any) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def random_widths(family: str, rng: Any) -> dict[str, float]:
    """A random genome, biased toward pruned widths: mostly a network-wide level (0.2-1.0, lower
    levels likelier) jittered by up to +-0.2 per group, sometimes every group drawn independently."""
    rng = _rng(rng)
    names = [g for g, _ in _groups(_check_family(family))]
    steps = np.array(WIDTH_STEPS)
    if rng.random() < 0.25:
        picks = rng.integers(0, len(steps), size=len(names))
    else:
        levels = np.arange(1, len(steps))  # indices of 0.2 .. 1.0
        weights = 1.5 - steps[levels]
        level = rng.choice(levels, p=weights / weights.sum())
        picks = np.clip(level + rng.integers(-2, 3, size=len(names)), 0, len(steps) - 1)
    return {name: float(steps[i]) for name, i in zip(names, picks)}


def random_program(family: str, rng: Any, resolution: int | None = None) -> dict[str, Any]:
    """zoo_program() at a random genome; resolution drawn from RESOLUTIONS (224 most often) when None."""
    rng = _rng(rng)
    widths = random_widths(family, rng)
    if resolution is None:
        resolution = int(rng.choice(RESOLUTIONS, p=RESOLUTION_WEIGHTS))
    return zoo_program(family, widths, resolution)


def draw(families: Sequence[str], n: int, rng: np.random.Generator, taken: set[str],
         first: Iterable[dict[str, Any]] = (), resolutions: Sequence[int] | None = None,
         make: Callable[[str, np.random.Generator, int | None], dict[str, Any]] = random_program
         ) -> list[dict[str, Any]]:
    """n distinct programs (none in `taken`, which grows), families in shuffled rounds so each gets its share;
    `make(family, rng, resolution)` draws one (random_program: a random genome)."""
    out: list[dict[str, Any]] = []
    for spec in first:
        if len(out) < n and program_id(spec) not in taken:
            taken.add(program_id(spec))
            out.append(spec)
    order: list[str] = []
    attempts = 0
    while len(out) < n:
        if not order:
            order = [families[i] for i in rng.permutation(len(families))]
        attempts += 1
        if attempts > 100 * n + 100:
            raise ProgramZooError(f"could not draw {n} distinct programs from {', '.join(families)}")
        resolution = None if resolutions is None else int(rng.choice(resolutions))
        spec = make(order[0], rng, resolution)
        if program_id(spec) in taken:
            continue
        order.pop(0)
        taken.add(program_id(spec))
        out.append(spec)
    return out


def program_plan(n_train: int, n_holdout: int, n_unseen: int, seed: int = 0,
                 resolutions: Sequence[int] | None = None, n_operator: int = 0) -> list[tuple[dict[str, Any], str]]:
    """[(spec, sample)], sample in SAMPLES: train (the four plan families at full width first, then random
    genomes), holdout (other genomes of the same families, no program shared with train) and unseen
    (UNSEEN_FAMILIES). Deterministic for a seed; the three samples are interleaved so a session cut short
    still has some of each. `resolutions` (default RESOLUTIONS, 224 most often) bounds the input sizes: small
    ones keep an emulated phone's programs fast.

    Each sample draws from its own random stream, holdout and unseen first: asking for more programs later
    extends each sample and never turns a held-out program into a training one. `n_operator` programs of
    the OPERATOR_FAMILIES join the training sample from a stream of their own, so adding them never changes
    which zoo programs a plan holds.
    """
    for name, n in (("n_train", n_train), ("n_holdout", n_holdout), ("n_unseen", n_unseen), ("n_operator", n_operator)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ProgramZooError(f"{name} must be a non-negative integer, got {n!r}")
    if resolutions is not None and (not resolutions or any(int(r) < 32 for r in resolutions)):
        raise ProgramZooError(f"resolutions must be a non-empty list of sizes >= 32, got {resolutions!r}")

    def stream(sample: str) -> np.random.Generator:
        return np.random.default_rng([int(seed), 9, SAMPLES.index(sample)])

    taken: set[str] = set()
    top = 224 if resolutions is None else max(int(r) for r in resolutions)
    full = [zoo_program(f, resolution=top) for f in TRAIN_FAMILIES]
    drawn = {"holdout": draw(TRAIN_FAMILIES, n_holdout, stream("holdout"), taken, resolutions=resolutions),
             "unseen": draw(UNSEEN_FAMILIES, n_unseen, stream("unseen"), taken, resolutions=resolutions)}
    drawn["train"] = draw(TRAIN_FAMILIES, n_train, stream("train"), taken, first=full, resolutions=resolutions)
    operator = draw(OPERATOR_FAMILIES, n_operator, np.random.default_rng([int(seed), 9, len(SAMPLES) + 1]), taken,
                    resolutions=resolutions)
    drawn["train"] = [spec for spec, _ in interleave({"zoo": drawn["train"], "operator": operator},
                                                     ("zoo", "operator"))]
    return interleave(drawn, SAMPLES)


def interleave(drawn: Mapping[str, Sequence[dict[str, Any]]], samples: Sequence[str]
               ) -> list[tuple[dict[str, Any], str]]:
    """[(spec, sample)] with every sample spread evenly through the plan, so a session cut short has some of
    each; ties go in `samples` order."""
    keyed = [((i + 0.5) / len(specs), samples.index(sample), spec, sample)
             for sample, specs in drawn.items() for i, spec in enumerate(specs)]
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [(spec, sample) for _, _, spec, sample in keyed]
