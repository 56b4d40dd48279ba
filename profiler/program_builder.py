"""The program builder: appends the nodes of a program spec in network order, tracking each tensor's channels
and the full width of every channel-coupling group (the genes a genome multiplies). Shared by the zoo's
families and the training-only operator families.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from jcw.profiler.networks import INPUT_CHANNELS, NUM_CLASSES


class Builder:
    """Appends program nodes, tracking channels per node and the width of each coupling group."""

    def __init__(self, widths: Mapping[str, float]) -> None:
        self.widths = widths
        self.nodes: list[dict[str, Any]] = []
        self.channels = {"input": INPUT_CHANNELS}
        self.groups: dict[str, int] = {}  # group -> full channels, in order of first use
        self.last = "input"

    def ch(self, group: str, full: int) -> int:
        """Channels of a group: max(1, round(multiplier * full)), rounding halves up like the search."""
        if self.groups.setdefault(group, full) != full:
            raise AssertionError(f"group {group} used with {self.groups[group]} and {full} channels")
        return max(1, math.floor(self.widths.get(group, 1.0) * full + 0.5))

    def node(self, name: str, op: str, inputs: Sequence[str] | None = None, channels: int | None = None,
             **attrs: Any) -> str:
        inputs = list(inputs) if inputs is not None else [self.last]
        self.nodes.append({"name": name, "op": op, "inputs": inputs, **attrs})
        if channels is None:
            channels = sum(self.channels[i] for i in inputs) if op == "concat" else self.channels[inputs[0]]
        self.channels[name] = channels
        self.last = name
        return name

    def conv(self, name: str, cout: int, k: int, stride: int = 1, act: str | None = None,
             inputs: Sequence[str] | None = None, pad: int | None = None) -> str:
        return self.node(name, "conv", inputs, cout, cout=cout, k=k, stride=stride,
                         pad=k // 2 if pad is None else pad, groups=1, act=act)

    def dwconv(self, name: str, k: int, stride: int = 1, act: str | None = None,
               inputs: Sequence[str] | None = None) -> str:
        c = self.channels[(inputs or [self.last])[0]]
        return self.node(name, "conv", inputs, c, cout=c, k=k, stride=stride, pad=k // 2, groups=c, act=act)

    def pool(self, name: str, op: str, k: int, stride: int, pad: int = 0, inputs: Sequence[str] | None = None) -> str:
        return self.node(name, op, inputs, k=k, stride=stride, pad=pad)

    def head(self, classifier: bool = True) -> None:
        self.node("pool", "gap")
        self.node("flatten", "flatten")
        if classifier:
            self.node("fc", "linear", channels=NUM_CLASSES, cout=NUM_CLASSES, act=None)
