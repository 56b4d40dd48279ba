"""Layers of architectures no training plan is drawn from: the bank behind the held-out "unseen" layer set.

Owns the unseen families as layer lists at a width and an input resolution: program_zoo's unseen families
(their conv and linear layers, so layer and program level agree) plus ShuffleNetV2, GhostNet and
MobileNetV3-Large written here as conv/dwconv lists, and the seeded bank of network instances the profiler
draws the unseen set from (profiler/plans.py keeps every shape of that bank out of training).
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from jcw.profiler import program_zoo, programs
from jcw.profiler.layerspec import LayerSpec
from jcw.profiler.networks import INPUT_CHANNELS, NUM_CLASSES

#: Written here as layer lists (SE blocks kept as their two 1x1 layers on a 1x1 map; channel splits,
#: shuffles and concatenations carry no layer of their own).
LAYER_ONLY_FAMILIES = ("shufflenet_v2", "ghostnet", "mobilenet_v3_large")
FAMILIES = program_zoo.UNSEEN_FAMILIES + LAYER_ONLY_FAMILIES
#: Input sizes users bring, wider than the program zoo's 128-224 so stems and maps land off the usual grid.
RESOLUTIONS = (96, 128, 160, 192, 224, 256, 288, 320)
#: Network instances (a width and a resolution each) per family in a seed's bank.
INSTANCES_PER_FAMILY = 12


def _down(h: int, stride: int) -> int:
    return (h + stride - 1) // stride  # 'same' padding with odd kernels


def _divisible(value: float, divisor: int) -> int:
    """torchvision's _make_divisible: round to a multiple of divisor, never more than 10% below value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class _Layers:
    """Appends layer specs while tracking the spatial size of the running feature map."""

    def __init__(self, resolution: int) -> None:
        self.h = resolution
        self.specs: list[LayerSpec] = []

    def conv(self, cin: int, cout: int, k: int = 1, stride: int = 1, h: int | None = None) -> None:
        at = self.h if h is None else h
        self.specs.append(LayerSpec(op="conv", cin=cin, cout=cout, k=k, h=at, w=at, stride=stride))

    def dw(self, channels: int, k: int = 3, stride: int = 1) -> None:
        self.specs.append(LayerSpec(op="dwconv", cin=channels, cout=channels, k=k, h=self.h, w=self.h, stride=stride))

    def stem(self, cout: int, stride: int = 2) -> None:
        self.conv(INPUT_CHANNELS, cout, 3, stride)
        self.h = _down(self.h, stride)


#: ShuffleNetV2 stage widths per published width (0.5x, 1.0x, 1.5x, 2.0x): odd counts such as 58 and 116.
_SHUFFLE_WIDTHS = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024), 1.5: (176, 352, 704, 1024),
                   2.0: (244, 488, 976, 2048)}


def _shufflenet_v2(width: float, resolution: int) -> list[LayerSpec]:
    net = _Layers(resolution)
    net.stem(24)
    net.h = _down(net.h, 2)  # 3x3 max-pool, stride 2
    cin, *stages, last = 24, *_SHUFFLE_WIDTHS[width]
    for out, repeats in zip(stages, (4, 8, 4)):
        half = out // 2
        # the stride-2 unit: both branches see the whole input
        net.dw(cin, 3, 2)
        net.conv(cin, half, h=_down(net.h, 2))
        net.conv(cin, half)
        net.dw(half, 3, 2)
        net.h = _down(net.h, 2)
        net.conv(half, half)
        for _ in range(repeats - 1):  # stride-1 units transform half the channels
            net.conv(half, half)
            net.dw(half, 3, 1)
            net.conv(half, half)
        cin = out
    net.conv(cin, last)
    net.conv(last, NUM_CLASSES, h=1)
    return net.specs


#: GhostNet bottlenecks (k, expansion channels, out channels, stride); SE left out as in GhostNet's plain blocks.
_GHOST = [(3, 16, 16, 1), (3, 48, 24, 2), (3, 72, 24, 1), (5, 72, 40, 2), (5, 120, 40, 1), (3, 240, 80, 2),
          (3, 200, 80, 1), (3, 184, 80, 1), (3, 184, 80, 1), (3, 480, 112, 1), (3, 672, 112, 1), (5, 672, 160, 2),
          (5, 960, 160, 1), (5, 960, 160, 1), (5, 960, 160, 1), (5, 960, 160, 1)]


def _ghostnet(width: float, resolution: int) -> list[LayerSpec]:
    net = _Layers(resolution)

    def ghost(cin: int, cout: int) -> None:  # a 1x1 makes half the maps, a cheap 3x3 depthwise the rest
        primary = math.ceil(cout / 2)
        net.conv(cin, primary)
        net.dw(primary, 3, 1)

    cin = _divisible(16 * width, 4)
    net.stem(cin)
    for k, mid, out, stride in _GHOST:
        mid, out = _divisible(mid * width, 4), _divisible(out * width, 4)
        start = net.h
        ghost(cin, mid)
        if stride > 1:
            net.dw(mid, k, stride)
            net.h = _down(net.h, stride)
        ghost(mid, out)
        if stride > 1 or cin != out:  # the shortcut: depthwise on the input, then a 1x1
            after = net.h
            net.h = start
            net.dw(cin, k, stride)
            net.h = after
            net.conv(cin, out)
        cin = out
    head = _divisible(960 * width, 4)
    net.conv(cin, head)
    net.conv(head, 1280, h=1)
    net.conv(1280, NUM_CLASSES, h=1)
    return net.specs


#: MobileNetV3-Large (k, expansion, out, squeeze-excitation, stride), torchvision's table.
_V3_LARGE = [(3, 16, 16, False, 1), (3, 64, 24, False, 2), (3, 72, 24, False, 1), (5, 72, 40, True, 2),
             (5, 120, 40, True, 1), (5, 120, 40, True, 1), (3, 240, 80, False, 2), (3, 200, 80, False, 1),
             (3, 184, 80, False, 1), (3, 184, 80, False, 1), (3, 480, 112, True, 1), (3, 672, 112, True, 1),
             (5, 672, 160, True, 2), (5, 960, 160, True, 1), (5, 960, 160, True, 1)]


def _mobilenet_v3_large(width: float, resolution: int) -> list[LayerSpec]:
    net = _Layers(resolution)
    cin = _divisible(16 * width, 8)
    net.stem(cin)
    for k, expand, out, squeeze, stride in _V3_LARGE:
        mid, out = _divisible(expand * width, 8), _divisible(out * width, 8)
        if mid != cin:
            net.conv(cin, mid)
        net.dw(mid, k, stride)
        net.h = _down(net.h, stride)
        if squeeze:
            reduced = _divisible(mid // 4, 8)
            net.conv(mid, reduced, h=1)
            net.conv(reduced, mid, h=1)
        net.conv(mid, out)
        cin = out
    head = 6 * cin
    net.conv(cin, head)
    net.conv(head, 1280, h=1)
    net.conv(1280, NUM_CLASSES, h=1)
    return net.specs


_LAYER_ONLY: dict[str, tuple[Callable[[float, int], list[LayerSpec]], tuple[float, ...]]] = {
    "shufflenet_v2": (_shufflenet_v2, tuple(_SHUFFLE_WIDTHS)),
    "ghostnet": (_ghostnet, (0.5, 0.75, 1.0, 1.3)),
    "mobilenet_v3_large": (_mobilenet_v3_large, (0.5, 0.75, 1.0, 1.25)),
}


def family_layers(family: str, rng: random.Random, resolution: int | None = None) -> list[LayerSpec]:
    """Layers (dense) of one network of `family` at a random width (a genome for the zoo families) and
    a random resolution from RESOLUTIONS unless given."""
    if family not in FAMILIES:
        raise ValueError(f"unseen family must be one of {', '.join(FAMILIES)}, got {family!r}")
    resolution = rng.choice(RESOLUTIONS) if resolution is None else resolution
    if family in _LAYER_ONLY:
        build, widths = _LAYER_ONLY[family]
        return build(rng.choice(widths), resolution)
    genome = program_zoo.random_widths(family, np.random.default_rng(rng.getrandbits(64)))
    return [spec for _, spec in programs.conv_layers(program_zoo.zoo_program(family, genome, resolution))]


@lru_cache(maxsize=8)
def network_bank(seed: int) -> tuple[tuple[str, tuple[LayerSpec, ...]], ...]:
    """INSTANCES_PER_FAMILY networks of every unseen family, (family, layers) each; fixed for a seed."""
    rng = random.Random(f"unseen-bank:{seed}")
    return tuple((family, tuple(family_layers(family, rng)))
                 for _ in range(INSTANCES_PER_FAMILY) for family in FAMILIES)
