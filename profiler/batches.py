"""Running runner lines on a device so a crashed runner costs nothing reported: shared by the layer
rounds, the program rounds and `jcw measure`.

Owns `run_lines`: re-run only unreported lines after a crash, and turn a line the runner dies on twice
into an error result; and `SystematicFailure`, the error that is not the lines' own (a bad option, a
broken setup): it stops a profile and is never stored, so a rerun measures those lines.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jcw.android_harness.device import Device, DeviceError, RunnerCrashed

CRASHES_BEFORE_ERROR = 2
#: Identical failures, with nothing measured in between, after which a failure is taken as systematic
#: where no reference line can tell (whole programs, host exports).
SYSTEMATIC_FAILURES = 3


class SystematicFailure(DeviceError):
    """Every line of a batch failed in the same way, so the fault is not the lines' (a bad runner option,
    a broken runner or host): the run stops with it and nothing of it is stored as a result."""


def error_kind(message: str) -> str:
    """A failure message with what varies from line to line (paths, numbers, ids) blanked out."""
    text = re.sub(r"\S*/\S*", "<path>", str(message))
    return re.sub(r"\d+(\.\d+)?", "N", text).strip().rstrip(".")


def common_error(messages: list[str]) -> str:
    """The most frequent failure among `messages`, as one of them was written."""
    kinds = Counter(error_kind(m) for m in messages)
    top = kinds.most_common(1)[0][0]
    return next(m for m in messages if error_kind(m) == top).strip().rstrip(".")


def same_failure(messages: list[str]) -> bool:
    """Whether at least SYSTEMATIC_FAILURES messages all say the same thing (up to paths and numbers)."""
    return len(messages) >= SYSTEMATIC_FAILURES and len({error_kind(m) for m in messages}) == 1
RunBatch = Callable[[list[dict[str, Any]], list[str]], Iterator[dict[str, Any]]]


def run_lines(device: Device, lines: list[dict[str, Any]], runner_args: Iterable[str] = (),
              stats: Any = None, run: RunBatch | None = None) -> Iterator[dict[str, Any]]:
    """Yield one result per line (by id), re-running only unreported lines after a crash.

    `run` is the device method that runs a batch (default device.run_batch, the layer runner;
    device.run_programs for the .pte runner). A line the runner dies on twice gets an error result
    instead of a third try; a runner that dies on two different lines without ever reporting
    anything is broken, not the lines. `stats.runner_crashes` (when given) counts the crashes.
    """
    run = run or device.run_batch
    remaining = list(lines)
    crashes: Counter[str] = Counter()
    runner_args = [str(a) for a in runner_args]
    reported_any = False
    while remaining:
        reported: set[str] = set()
        reason = ""
        batch = run(remaining, runner_args)
        try:
            for result in batch:
                reported.add(str(result.get("id")))
                reported_any = True
                yield result
            crashed = len(reported) < len(remaining)
            reason = "the runner stopped early"
        except RunnerCrashed as exc:
            crashed, reason = True, str(exc).rstrip(".")
        finally:
            close = getattr(batch, "close", None)
            if close:
                close()
        remaining = [line for line in remaining if line["id"] not in reported]
        if not crashed or not remaining:
            return
        if stats is not None:
            stats.runner_crashes += 1
        culprit = remaining[0]["id"]
        crashes[culprit] += 1
        if not reported_any and len(crashes) >= 2:
            raise DeviceError(f"the runner on {device.address} fails before measuring anything: {reason}")
        if crashes[culprit] >= CRASHES_BEFORE_ERROR:
            yield {"id": culprit, "error": f"the runner crashed {crashes[culprit]} times on this line ({reason})"}
            remaining = remaining[1:]
