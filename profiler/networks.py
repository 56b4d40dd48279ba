"""The real networks (ResNet-18/50, MobileNetV1/V2 at 224x224): their one name each, their
architecture tables, and their layer lists read as data.

The profiler samples its *prior* plan and its held-out set from these layers; it reads them from
`profiler/data/networks.json` and never imports a model library. `python -m jcw.profiler.networks`
regenerates that file from the tables below, and the search's torch zoo (`search/zoo.py`) builds
its models from the same tables, so the layers the profiler measures are the layers the search prunes.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from jcw.profiler.layerspec import LayerSpec

DATA_PATH = Path(__file__).with_name("data") / "networks.json"
NETWORKS = ("resnet18", "resnet50", "mobilenet_v1", "mobilenet_v2")
#: Other spellings users type (the search's zoo once used them): accepted, and read as the name.
ALIASES = {"mobilenetv1": "mobilenet_v1", "mobilenetv2": "mobilenet_v2"}
NUM_CLASSES = 1000
INPUT_CHANNELS = 3
INPUT_SIZE = 224

# ---- the architecture tables (torchvision's topologies) ---------------------------------------
#: Output width of each ResNet stage before the bottleneck expansion.
RESNET_STAGE_WIDTHS = (64, 128, 256, 512)
#: ResNet: blocks per stage and whether the blocks are bottlenecks (expansion 4).
RESNET_BLOCKS = {"resnet18": ((2, 2, 2, 2), False), "resnet50": ((3, 4, 6, 3), True)}
RESNET_STEM = 64
MOBILENET_STEM = 32
#: MobileNetV1: (output channels, stride) of each depthwise-separable block.
MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5 \
    + ((1024, 2), (1024, 1))
#: MobileNetV2: (expansion, output channels, repeats, first stride) of each inverted-residual stage.
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))
MOBILENET_V2_LAST = 1280


def canonical_name(name: str) -> str:
    """The one name of a network, given it or an alias (other names come back as they are)."""
    return ALIASES.get(name, name)


def _layer(name: str, op: str, cin: int, cout: int, k: int, stride: int, h: int) -> dict[str, Any]:
    return {"name": name, "op": op, "cin": cin, "cout": cout, "k": k, "stride": stride, "h": h, "w": h}


def _down(h: int, stride: int) -> int:
    # 'same'-style padding (k // 2) with odd kernels: out = ceil(h / stride)
    return (h + stride - 1) // stride


def _resnet(name: str) -> list[dict[str, Any]]:
    blocks, bottleneck = RESNET_BLOCKS[name]
    layers = [_layer("conv1", "conv", INPUT_CHANNELS, RESNET_STEM, 7, 2, INPUT_SIZE)]
    h, cin = INPUT_SIZE // 4, RESNET_STEM  # after the stride-2 stem and the 3x3 stride-2 max-pool
    expansion = 4 if bottleneck else 1
    for stage, (count, width) in enumerate(zip(blocks, RESNET_STAGE_WIDTHS), start=1):
        for block in range(count):
            stride = 2 if stage > 1 and block == 0 else 1
            prefix = f"layer{stage}.{block}"
            out = width * expansion
            if bottleneck:  # torchvision v1.5: the stride sits on the 3x3
                layers.append(_layer(f"{prefix}.conv1", "conv", cin, width, 1, 1, h))
                layers.append(_layer(f"{prefix}.conv2", "conv", width, width, 3, stride, h))
                layers.append(_layer(f"{prefix}.conv3", "conv", width, out, 1, 1, _down(h, stride)))
            else:
                layers.append(_layer(f"{prefix}.conv1", "conv", cin, width, 3, stride, h))
                layers.append(_layer(f"{prefix}.conv2", "conv", width, width, 3, 1, _down(h, stride)))
            if stride != 1 or cin != out:
                layers.append(_layer(f"{prefix}.downsample", "conv", cin, out, 1, stride, h))
            cin, h = out, _down(h, stride)
    layers.append(_layer("fc", "conv", cin, NUM_CLASSES, 1, 1, 1))
    return layers


def _mobilenet_v1() -> list[dict[str, Any]]:
    layers = [_layer("conv1", "conv", INPUT_CHANNELS, MOBILENET_STEM, 3, 2, INPUT_SIZE)]
    h, cin = INPUT_SIZE // 2, MOBILENET_STEM
    for index, (cout, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        layers.append(_layer(f"block{index}.dw", "dwconv", cin, cin, 3, stride, h))
        h = _down(h, stride)
        layers.append(_layer(f"block{index}.pw", "conv", cin, cout, 1, 1, h))
        cin = cout
    layers.append(_layer("fc", "conv", cin, NUM_CLASSES, 1, 1, 1))
    return layers


def _mobilenet_v2() -> list[dict[str, Any]]:
    layers = [_layer("conv1", "conv", INPUT_CHANNELS, MOBILENET_STEM, 3, 2, INPUT_SIZE)]
    h, cin = INPUT_SIZE // 2, MOBILENET_STEM
    index = 0
    for expand, cout, count, first_stride in MOBILENET_V2_STAGES:
        for repeat in range(count):
            stride = first_stride if repeat == 0 else 1
            hidden = cin * expand
            prefix = f"block{index}"
            if expand != 1:
                layers.append(_layer(f"{prefix}.expand", "conv", cin, hidden, 1, 1, h))
            layers.append(_layer(f"{prefix}.dw", "dwconv", hidden, hidden, 3, stride, h))
            h = _down(h, stride)
            layers.append(_layer(f"{prefix}.project", "conv", hidden, cout, 1, 1, h))
            cin, index = cout, index + 1
    layers.append(_layer("conv_last", "conv", cin, MOBILENET_V2_LAST, 1, 1, h))
    layers.append(_layer("fc", "conv", MOBILENET_V2_LAST, NUM_CLASSES, 1, 1, 1))
    return layers


def generate() -> dict[str, list[dict[str, Any]]]:
    """The layer lists, built from the architecture tables (the source of networks.json)."""
    return {"resnet18": _resnet("resnet18"),
            "resnet50": _resnet("resnet50"),
            "mobilenet_v1": _mobilenet_v1(),
            "mobilenet_v2": _mobilenet_v2()}


@lru_cache(maxsize=1)
def _load() -> dict[str, list[dict[str, Any]]]:
    with open(DATA_PATH, encoding="utf-8") as fh:
        return json.load(fh)


def network_layers(name: str) -> list[dict[str, Any]]:
    """Layers of one network (its name or an alias) as dicts (name, op, cin, cout, k, stride, h, w),
    in forward order."""
    data = _load()
    name = canonical_name(name)
    if name not in data:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, got {name!r}")
    return [dict(layer) for layer in data[name]]


def real_layers(networks: tuple[str, ...] = NETWORKS) -> list[dict[str, Any]]:
    """Every layer of the given networks, each tagged with its network under 'net'."""
    return [{"net": net, **layer} for net in networks for layer in network_layers(net)]


def is_fixed_input(layer: dict[str, Any]) -> bool:
    """The network input's channels cannot be pruned."""
    return layer["cin"] == INPUT_CHANNELS and layer["op"] == "conv" and layer["h"] == 224


def is_classifier(layer: dict[str, Any]) -> bool:
    """The classifier's outputs cannot be pruned."""
    return layer["name"] == "fc"


def halved(size: int, times: int) -> int:
    """A map of `size` px after `times` stride-2 stages, each rounding up as the networks' own do."""
    for _ in range(times):
        size = _down(size, 2)
    return size


def at_resolution(layer: dict[str, Any], resolution: int) -> dict[str, Any]:
    """The layer as it sits in its network fed `resolution` px instead of INPUT_SIZE; the classifier's 1x1
    map stays."""
    if layer["h"] <= 1:
        return dict(layer)
    h = halved(resolution, round(math.log2(INPUT_SIZE / layer["h"])))
    return {**layer, "h": h, "w": h}


def to_spec(layer: dict[str, Any], **changes: Any) -> LayerSpec:
    data = {k: layer[k] for k in ("op", "cin", "cout", "k", "stride", "h", "w")}
    data.update(changes)
    return LayerSpec.from_dict(data)


if __name__ == "__main__":
    DATA_PATH.parent.mkdir(exist_ok=True)
    DATA_PATH.write_text(json.dumps(generate(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {DATA_PATH}: " + ", ".join(f"{n} {len(v)} layers" for n, v in generate().items()))
