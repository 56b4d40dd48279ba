"""Operator-probe programs: random directed acyclic graphs of the kit's operators (convolutions of every
kernel size, depthwise 3x3/5x5, residual adds, multi-input concatenations, standalone activations, max and
average pooling, flatten into linear layers) at random widths, so the whole-program model sees each
operator's cost in quantity. No probe copies a zoo family's topology; they join the training sample only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jcw.profiler.networks import INPUT_CHANNELS, NUM_CLASSES
from jcw.profiler.programs import program_id, validate

PROBE_FAMILY = "probe"
#: Widest output channels at an activation side (pixels): keeps a probe's exports and runs as small as
#: the zoo's at the same resolution.
_WIDTH_CAP = ((96, 40), (48, 96), (24, 192), (0, 384))
_ACTS = ("relu", "relu6", None)


class _Graph:
    """A probe under construction: nodes plus the channels and side (pixels) of every tensor."""

    def __init__(self, rng: np.random.Generator, resolution: int) -> None:
        self.rng, self.nodes = rng, []
        self.shape: dict[str, tuple[int, int]] = {"input": (INPUT_CHANNELS, resolution)}
        self.last = "input"

    def add(self, op: str, inputs: list[str], channels: int, side: int, **attrs: Any) -> str:
        name = f"n{len(self.nodes)}"
        self.nodes.append({"name": name, "op": op, "inputs": inputs, **attrs})
        self.shape[name], self.last = (channels, side), name
        return name

    @staticmethod
    def cap(side: int) -> int:
        return next(c for s, c in _WIDTH_CAP if side >= s)

    def width(self, side: int) -> int:
        return int(self.rng.integers(4, self.cap(side) + 1))

    def act(self) -> str | None:
        return _ACTS[int(self.rng.choice(3, p=(0.5, 0.25, 0.25)))]

    def conv(self, source: str, k: int, stride: int, cout: int | None = None, act: Any = "draw") -> str:
        c, side = self.shape[source]
        cout = self.width(side) if cout is None else cout
        out_side = (side + 2 * (k // 2) - k) // stride + 1
        return self.add("conv", [source], cout, out_side, cout=cout, k=k, stride=stride, pad=k // 2, groups=1,
                        act=self.act() if act == "draw" else act)

    def peers(self, exclude: str, same_channels: bool) -> list[str]:
        """Earlier tensors at the current tensor's side (and channels), other than `exclude`."""
        c, side = self.shape[self.last]
        return [n for n, (cc, s) in self.shape.items()
                if n not in (exclude, "input") and s == side and (cc == c or not same_channels)]


def _step(g: _Graph) -> None:
    rng, cur = g.rng, g.last
    c, side = g.shape[cur]
    r = rng.random()
    if r < 0.30:
        k = int(rng.choice((1, 3, 5, 7), p=(0.45, 0.4, 0.1, 0.05)))
        g.conv(cur, k, 2 if side >= 8 and rng.random() < 0.15 else 1)
    elif r < 0.45:
        k, stride = int(rng.choice((3, 5))), 2 if side >= 8 and rng.random() < 0.25 else 1
        out_side = (side + 2 * (k // 2) - k) // stride + 1
        g.add("conv", [cur], c, out_side, cout=c, k=k, stride=stride, pad=k // 2, groups=c, act=g.act())
    elif r < 0.58:
        peers = g.peers(cur, same_channels=True)
        if not peers and c > g.cap(side):
            return
        other = peers[int(rng.integers(len(peers)))] if peers else g.conv(cur, 1, 1, cout=c)
        g.add("add", [cur, other], c, side, act=g.act())
    elif r < 0.72:
        peers = g.peers(cur, same_channels=False)
        if not peers:
            peers = [g.conv(cur, int(rng.choice((1, 3))), 1)]
        picks = [peers[i] for i in rng.permutation(len(peers))[:int(rng.integers(1, 4))]]
        inputs = [cur, *picks]
        total = sum(g.shape[i][0] for i in inputs)
        if total <= g.cap(side):  # wider tensors would feed layers no plan covers
            g.add("concat", inputs, total, side)
    elif r < 0.80:
        # Not after a fused activation: ExecuTorch 1.5.1's XNNPACK delegate merges relu(relu6(x)) into one
        # clamp with the relu's bounds ([0, inf)), so the .pte would not compute what torch computes.
        if not (g.nodes and g.nodes[-1]["name"] == cur and g.nodes[-1].get("act")):
            g.add(str(rng.choice(("relu", "relu6"))), [cur], c, side)
    elif side >= 8:
        op = str(rng.choice(("maxpool", "avgpool")))
        k, pad = (3, 1) if op == "maxpool" and rng.random() < 0.5 else (2, 0)
        g.add(op, [cur], c, (side + 2 * pad - k) // 2 + 1, k=k, stride=2, pad=pad)


def _head(g: _Graph) -> None:
    rng = g.rng
    c, side = g.shape[g.last]
    kind = rng.random()
    if kind < 0.5 or c * side * side > 32768:
        g.add("gap", [g.last], c, 1)
        g.add("flatten", [g.last], c, 1)
        g.add("linear", [g.last], NUM_CLASSES, 1, cout=NUM_CLASSES, act=None)
    elif kind < 0.8:
        g.add("flatten", [g.last], c * side * side, 1)
        hidden = int(rng.integers(32, 1025))
        g.add("linear", [g.last], hidden, 1, cout=hidden, act="relu")
        g.add("linear", [g.last], NUM_CLASSES, 1, cout=NUM_CLASSES, act=None)
    else:
        g.conv(g.last, 1, 1, cout=NUM_CLASSES, act="relu")
        g.add("gap", [g.last], NUM_CLASSES, 1)
        g.add("flatten", [g.last], NUM_CLASSES, 1)


def random_probe(rng: np.random.Generator, resolution: int) -> dict[str, Any]:
    """A validated probe program at `resolution`: a strided stem, 10-40 random operator steps that halve
    the side now and then (down to 7-14 px), and one of three heads."""
    g = _Graph(rng, int(resolution))
    k = int(rng.choice((3, 5, 7)))
    g.conv("input", k, 2, act=g.act())
    target = int(rng.integers(10, 41))
    while len(g.nodes) < target:
        before = g.shape[g.last][1]
        _step(g)
        # keep shrinking toward a phone-sized tail: without this, few random strides leave 112-px tails
        if g.shape[g.last][1] == before and before > 14 and rng.random() < 4.0 / target:
            g.add("maxpool", [g.last], g.shape[g.last][0], (before - 2) // 2 + 1, k=2, stride=2, pad=0)
    while g.shape[g.last][1] > 14:
        c, side = g.shape[g.last]
        g.conv(g.last, 3, 2) if rng.random() < 0.5 else g.add("maxpool", [g.last], c, (side - 2) // 2 + 1,
                                                              k=2, stride=2, pad=0)
    _head(g)
    spec = validate({"name": PROBE_FAMILY, "family": PROBE_FAMILY,
                     "input": [1, INPUT_CHANNELS, int(resolution), int(resolution)], "nodes": g.nodes})
    spec["name"] = f"{PROBE_FAMILY}-{int(resolution)}-{program_id(spec)[:8]}"
    return spec
