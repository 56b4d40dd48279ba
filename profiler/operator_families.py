"""Training-only program families: real architectures that carry the operators the plan families show
little of (multi-branch concatenation and stride-1 max pooling: Inception; standalone activations and plain
additions: pre-activation ResNet; flatten into large linear layers: ZFNet; concatenations of many narrow
inputs: NAS-style cells), so the whole-program model learns each operator's cost from networks that have it.
"""
from __future__ import annotations

from jcw.profiler.networks import NUM_CLASSES
from jcw.profiler.program_builder import Builder

#: GoogLeNet's inception modules at half width (torchvision: the "5x5" branch is a 3x3):
#: (name, 1x1, 3x3 reduce, 3x3, second reduce, second 3x3, pool projection), "M" a stride-2 max pool.
_INCEPTION = (("3a", 32, 48, 64, 8, 16, 16), ("3b", 64, 64, 96, 16, 48, 32), "M",
              ("4a", 96, 48, 104, 8, 24, 32), ("4b", 80, 56, 112, 12, 32, 32), ("4c", 64, 64, 128, 12, 32, 32),
              ("4d", 56, 72, 144, 16, 32, 32), ("4e", 128, 80, 160, 16, 64, 64), "M",
              ("5a", 128, 80, 160, 16, 64, 64), ("5b", 192, 96, 192, 24, 64, 64))


def inception_lite(b: Builder) -> None:
    """GoogLeNet (Szegedy et al. 2015, torchvision topology) at half width: four-branch modules joined by
    a concatenation, one branch behind a 3x3 stride-1 max pool."""
    b.conv("conv1", b.ch("conv1", 32), 7, 2, act="relu")
    b.pool("pool1", "maxpool", 3, 2, 1)
    b.conv("conv2", b.ch("conv2", 32), 1, act="relu")
    b.conv("conv3", b.ch("conv3", 96), 3, act="relu")
    b.pool("pool2", "maxpool", 3, 2, 1)
    for index, module in enumerate(_INCEPTION):
        if module == "M":
            b.pool(f"pool{index + 3}", "maxpool", 3, 2, 1)
            continue
        name, c1, r3, c3, r5, c5, proj = module
        x = b.last
        one = b.conv(f"{name}.b1", b.ch(f"{name}.b1", c1), 1, act="relu", inputs=[x])
        b.conv(f"{name}.b2.reduce", b.ch(f"{name}.b2.reduce", r3), 1, act="relu", inputs=[x])
        three = b.conv(f"{name}.b2", b.ch(f"{name}.b2", c3), 3, act="relu")
        b.conv(f"{name}.b3.reduce", b.ch(f"{name}.b3.reduce", r5), 1, act="relu", inputs=[x])
        second = b.conv(f"{name}.b3", b.ch(f"{name}.b3", c5), 3, act="relu")
        b.pool(f"{name}.b4.pool", "maxpool", 3, 1, 1, inputs=[x])
        pooled = b.conv(f"{name}.b4", b.ch(f"{name}.b4", proj), 1, act="relu")
        b.node(f"{name}.cat", "concat", [one, three, second, pooled])
    b.head()


def preact_resnet_lite(b: Builder) -> None:
    """Pre-activation ResNet-18 (He et al. 2016, identity mappings) at half width: each block starts with a
    standalone relu, its shortcut is the un-activated input and its addition carries no activation."""
    b.conv("conv1", b.ch("stage1", 32), 7, 2, act="relu")
    cur = b.pool("maxpool", "maxpool", 3, 2, 1)
    full = 32
    for stage, width in enumerate((32, 64, 128, 256), start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            p = f"layer{stage}.{block}"
            pre = b.node(f"{p}.preact", "relu", [cur])
            b.conv(f"{p}.conv1", b.ch(f"{p}.mid", width), 3, stride, act="relu", inputs=[pre])
            body = b.conv(f"{p}.conv2", b.ch(f"stage{stage}", width), 3)
            shortcut = cur
            if stride != 1 or full != width:
                shortcut = b.conv(f"{p}.downsample", b.ch(f"stage{stage}", width), 1, stride, inputs=[pre])
            cur = b.node(f"{p}.add", "add", [body, shortcut], act=None)
            full = width
    b.node("final.relu", "relu", [cur])
    b.head()


def zfnet_lite(b: Builder) -> None:
    """ZFNet (Zeiler & Fergus 2014) at a quarter of its convolution and linear widths: strided 7x7 and 5x5
    convolutions, 3x3 max pools, then flatten into three linear layers (a 3,136-feature input at 224 px)."""
    b.conv("conv1", b.ch("conv1", 24), 7, 2, act="relu")
    b.pool("pool1", "maxpool", 3, 2, 1)
    b.conv("conv2", b.ch("conv2", 64), 5, 2, act="relu")
    b.pool("pool2", "maxpool", 3, 2, 1)
    b.conv("conv3", b.ch("conv3", 96), 3, act="relu")
    b.conv("conv4", b.ch("conv4", 96), 3, act="relu")
    b.conv("conv5", b.ch("conv5", 64), 3, act="relu")
    b.pool("pool5", "maxpool", 3, 2, 1)
    b.node("flatten", "flatten")
    b.node("fc1", "linear", channels=(c := b.ch("fc1", 1024)), cout=c, act="relu")
    b.node("fc2", "linear", channels=(c := b.ch("fc2", 1024)), cout=c, act="relu")
    b.node("fc", "linear", channels=NUM_CLASSES, cout=NUM_CLASSES, act=None)


#: (branches, cells) per stage of cells_lite; a 3x3 stride-2 max pool between stages.
_CELL_STAGES = ((2, 2), (4, 2), (7, 2), (9, 1))


def cells_lite(b: Builder) -> None:
    """NAS-style cells (NASNet, DARTS) reduced to their joins: every cell runs 2-9 parallel 1x1 branches on
    its input and concatenates them, so the copies of a concatenation (one per input row) dominate when the
    branches are narrow — as in DenseNet-like and NAS networks, which Inception's four wide branches do not show.
    """
    b.conv("stem", b.ch("stem", 24), 3, 2, act="relu")
    for stage, (branches, cells) in enumerate(_CELL_STAGES, start=1):
        if stage > 1:
            b.pool(f"pool{stage}", "maxpool", 3, 2, 1)
        for cell in range(cells):
            x, p = b.last, f"stage{stage}.cell{cell}"
            outs = [b.conv(f"{p}.b{i}", b.ch(f"{p}.b{i}", 16), 1, act="relu", inputs=[x]) for i in range(branches)]
            b.node(f"{p}.cat", "concat", outs)
    b.head()


BUILDERS = {"inception_lite": inception_lite, "preact_resnet_lite": preact_resnet_lite, "zfnet_lite": zfnet_lite,
            "cells_lite": cells_lite}
#: In the order the plan draws them.
OPERATOR_FAMILIES = tuple(BUILDERS)
