"""Coverage regions of the training plan: layer kinds users bring that the four prior networks never reach.

Owns the drawing of depthwise 3x3 and 5x5 convolutions at every resolution from 3 to 112, stems (3 input
channels) at 96-320 px, wide 1x1 expansions and projections at small resolutions, dense 3x3 convolutions and
fully connected layers (classifiers fed by a flatten of up to 25,600 features, whose weights cross the
last-level cache, and squeeze-excitation 1x1s on a 1x1 map), with channel counts half rounded to multiples
of 8 (as real networks are) and half left odd.
"""
from __future__ import annotations

import math
import random

from jcw.profiler.layerspec import LayerSpec, LayerSpecError
from jcw.profiler.networks import INPUT_CHANNELS

#: Region -> share of the coverage layers. Depthwise layers get the most: with channels, kernel, stride
#: and resolution all free they are the widest region, and they are the cheapest to measure (dense only).
REGIONS = {"depthwise": 0.33, "stem": 0.10, "expansion": 0.27, "conv3x3": 0.22, "fully_connected": 0.08}
#: Maps down to 3 px: a network fed 96 px ends on 3 px maps (plan version 6).
DEPTHWISE_SIZES = (3, 112)
STEM_SIZES = (96, 320)
EXPANSION_SIZES = (3, 56)
EXPANSIONS = (3, 4, 6, 6)
#: The widest expansion drawn: 6x of 320 channels, MobileNetV2/EfficientNet's last stage.
MAX_EXPANDED = 1920
#: Fully connected inputs: a squeeze-excitation's few channels up to VGG's flatten at 320 px (256 x 10 x 10).
FC_FEATURES = (16, 25_600)
FC_OUTPUTS = (8, 4096)
#: Half the fully connected layers are classifiers: wide inputs and outputs, megabytes of weights, where the
#: latency per weight rises as they outgrow the cache (plan version 6; log-uniform inputs and outputs alone
#: put few layers between 1 and 10 million weights).
CLASSIFIER_SHARE = 0.5
CLASSIFIER_FEATURES = (512, 25_600)
CLASSIFIER_OUTPUTS = (256, 4096)
#: Share of dense 3x3s with few outputs (2-48 channels).
FEW_OUTPUTS_SHARE = 0.35
#: Real networks keep channels x resolution inside a band (MobileNetV2: 96 x 112, 1152 x 7 ...); drawing
#: inside a widened band keeps layers realistic without tying them to one network.
DEPTHWISE_BAND = (200, 32_000)
NARROW_BAND = (400, 6_000)
CONV_BAND = (200, 24_000)


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(max(low, high))))


def _size(rng: random.Random, low: int, high: int) -> int:
    """A resolution log-uniform over [low, high], every integer reachable (not only 7, 14, 28 ...)."""
    return min(high, max(low, round(_log_uniform(rng, low - 0.49, high + 0.49))))


def channels(rng: random.Random, low: float, high: float, minimum: int = 3, maximum: int = 2048) -> int:
    """A channel count log-uniform over [low, high]; half the draws rounded to a multiple of 8."""
    value = _log_uniform(rng, max(minimum, low), min(maximum, high))
    if rng.random() < 0.5 and value >= 8:
        return round(value / 8) * 8
    return max(minimum, round(value))


def _band(rng: random.Random, h: int, band: tuple[int, int], maximum: int, minimum: int = 4) -> int:
    return channels(rng, band[0] / h, band[1] / h, minimum=minimum, maximum=maximum)


def _depthwise(rng: random.Random) -> dict:
    h = _size(rng, *DEPTHWISE_SIZES)
    c = _band(rng, h, DEPTHWISE_BAND, MAX_EXPANDED)
    return {"op": "dwconv", "cin": c, "cout": c, "k": rng.choice((3, 5)), "h": h, "stride": rng.choice((1, 1, 2))}


def _stem(rng: random.Random) -> dict:
    h = rng.randint(*STEM_SIZES)  # uniform: every input size is as likely as another
    # a third at stride 1 and down to 2 outputs: VGG-style stems, width-pruned
    return {"op": "conv", "cin": INPUT_CHANNELS, "cout": channels(rng, 2, 64, minimum=2),
            "k": rng.choice((3, 3, 3, 5, 7)), "h": h, "stride": rng.choice((2, 2, 1))}


def _expansion(rng: random.Random) -> dict:
    """A 1x1 from a narrow map to a wide one (expand) or back (project)."""
    h = _size(rng, *EXPANSION_SIZES)
    narrow = _band(rng, h, NARROW_BAND, 320)
    wide = min(MAX_EXPANDED, round(narrow * rng.choice(EXPANSIONS) * rng.uniform(0.9, 1.1)))
    cin, cout = (narrow, wide) if rng.random() < 0.5 else (wide, channels(rng, narrow * 0.6, narrow * 1.7, 4, 320))
    return {"op": "conv", "cin": cin, "cout": cout, "k": 1, "h": h, "stride": 1}


def _conv3x3(rng: random.Random) -> dict:
    """Dense 3x3s; a third with few outputs, as DenseNet's growth layers and narrow pruned layers have, and
    inputs down to 2 channels (networks pruned to a tenth of their width)."""
    h = _size(rng, *DEPTHWISE_SIZES)
    cin = _band(rng, h, CONV_BAND, 1024, minimum=2)
    cout = channels(rng, 2, 48, minimum=2) if rng.random() < FEW_OUTPUTS_SHARE else _band(rng, h, CONV_BAND, 1024)
    return {"op": "conv", "cin": cin, "cout": cout, "k": 3, "h": h, "stride": rng.choice((1, 1, 2))}


def _fully_connected(rng: random.Random) -> dict:
    """A linear layer as the runner times it: a 1x1 convolution on a 1x1 map, inputs and outputs log-uniform
    over the classifier ranges or, otherwise, the whole fully connected ranges."""
    features, outputs = (CLASSIFIER_FEATURES, CLASSIFIER_OUTPUTS) if rng.random() < CLASSIFIER_SHARE \
        else (FC_FEATURES, FC_OUTPUTS)
    cin = channels(rng, *features, minimum=FC_FEATURES[0], maximum=FC_FEATURES[1])
    cout = channels(rng, *outputs, minimum=FC_OUTPUTS[0], maximum=FC_OUTPUTS[1])
    return {"op": "conv", "cin": cin, "cout": cout, "k": 1, "h": 1, "stride": 1}


_DRAW = {"depthwise": _depthwise, "stem": _stem, "expansion": _expansion, "conv3x3": _conv3x3,
         "fully_connected": _fully_connected}


def coverage_layer(rng: random.Random, densities: tuple[float, ...], max_macs: int) -> LayerSpec | None:
    """One layer of a region drawn by its share, with a density; None when it is invalid or too costly."""
    region = rng.choices(list(REGIONS), weights=list(REGIONS.values()))[0]
    fields = _DRAW[region](rng)
    try:
        spec = LayerSpec(w=fields["h"], density=rng.choice(densities), **fields)
    except LayerSpecError:
        return None
    return spec if spec.macs <= max_macs else None
