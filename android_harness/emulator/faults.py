"""Fault injection for the emulated phone: dropped connections, a full disk.

Each drop fault is one-shot: it fires once, then disarms, so a client that
reconnects can finish its work. Tests re-arm faults by assigning the fields.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

#: A runner result line (runner contract): a JSON object with an "id" key.
RESULT_LINE = r'^\s*\{.*"id"\s*:'


@dataclass
class Faults:
    """What goes wrong, and when.

    drop_after_bytes: close the connection once it has carried this many bytes (both
        directions, headers included); the last message is cut mid-way, like a pulled cable.
    drop_at_line: close the connection right after a shell stream has sent its N-th line
        matching line_pattern (by default runner result lines).
    disk_full: writes under /data fail with ENOSPC (sync SEND -> FAIL, shell writes fail).
    """
    drop_after_bytes: int | None = None
    drop_at_line: int | None = None
    line_pattern: str = RESULT_LINE
    disk_full: bool = False
    fired: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("drop_after_bytes", "drop_at_line"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        re.compile(self.line_pattern)

    def byte_budget(self, carried: int) -> int | None:
        """Bytes this connection may still carry before the drop, or None when unarmed."""
        with self._lock:
            if self.drop_after_bytes is None:
                return None
            return max(0, self.drop_after_bytes - carried)

    def fire_byte_drop(self) -> None:
        with self._lock:
            if self.drop_after_bytes is not None:
                self.fired.append(f"drop_after_bytes={self.drop_after_bytes}")
                self.drop_after_bytes = None

    def line_counter(self) -> LineCounter | None:
        with self._lock:
            if self.drop_at_line is None:
                return None
            return LineCounter(self, self.drop_at_line, re.compile(self.line_pattern))

    def _claim_line_drop(self, target: int) -> bool:
        with self._lock:
            if self.drop_at_line != target:
                return False
            self.fired.append(f"drop_at_line={target}")
            self.drop_at_line = None
            return True


class LineCounter:
    """Counts matching lines in one shell stream's output and says where to cut."""

    def __init__(self, faults: Faults, target: int, pattern: re.Pattern[str]):
        self._faults, self._target, self._pattern = faults, target, pattern
        self.seen = 0

    def cut(self, lines: list[bytes]) -> int | None:
        """Given complete output lines about to be sent, return how many to send before dropping."""
        for i, line in enumerate(lines):
            if self._pattern.search(line.decode("utf-8", "replace")):
                self.seen += 1
                if self.seen == self._target and self._faults._claim_line_drop(self._target):
                    return i + 1
        return None
