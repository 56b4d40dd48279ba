"""The acquisition plug-in interface `jcw profile --adaptive` spends part of its budget through.

The profiler knows nothing of learning: a later stage registers a chooser under the Python
entry-point group `jcw.acquisition` (name "default") and the profiler calls it by contract:

    choose(candidates: list[dict], measured: list[dict], n: int, seed: int) -> list[int]

`candidates` are unmeasured configurations (layer-spec fields plus "impl" and "threads");
`measured` are the profile's training rows as `ProfileStore.measurements()` returns them
(held-out rows excluded); the result is up to `n` distinct indices into `candidates`.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

ENTRY_POINT_GROUP = "jcw.acquisition"
DEFAULT_NAME = "default"

Chooser = Callable[[list[dict[str, Any]], list[dict[str, Any]], int, int], list[int]]


class AcquisitionError(Exception):
    """No usable acquisition plug-in, or it answered outside the contract; one sentence."""


def load_chooser(name: str = DEFAULT_NAME) -> Chooser:
    """The chooser registered under `name` in the `jcw.acquisition` entry-point group."""
    found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise AcquisitionError(
            f"--adaptive needs an acquisition plug-in registered as '{name}' in the Python entry-point group "
            f"'{ENTRY_POINT_GROUP}' and none is installed (install the predictor stage: pip install -e .)")
    try:
        chooser = found[0].load()
    except Exception as exc:  # a broken plug-in must not bring down a profile with a traceback
        raise AcquisitionError(f"the acquisition plug-in '{found[0].value}' could not be loaded ({exc})") from None
    if not callable(chooser):
        raise AcquisitionError(f"the acquisition plug-in '{found[0].value}' is not callable")
    return chooser


def choose(chooser: Chooser, candidates: list[dict[str, Any]], measured: list[dict[str, Any]],
           n: int, seed: int) -> list[int]:
    """Call a chooser and hold it to the contract: distinct valid indices, at most n. Whatever goes wrong
    inside the plug-in is one AcquisitionError naming it: it is someone else's code, not the profiler's."""
    name = plugin_name(chooser)
    try:
        picked = chooser([dict(c) for c in candidates], [dict(m) for m in measured], n, seed)
    except Exception as exc:
        reason = " ".join(str(exc).split()) or "no message"
        raise AcquisitionError(f"the acquisition plug-in '{name}' failed ({type(exc).__name__}: {reason}); "
                               f"the layers measured so far are kept, rerun without --adaptive or fix the "
                               f"plug-in") from None
    try:
        indices = [int(i) for i in picked]
    except (TypeError, ValueError):
        raise AcquisitionError(f"the acquisition plug-in '{name}' must return a list of candidate indices") from None
    bad = [i for i in indices if not 0 <= i < len(candidates)]
    if bad:
        raise AcquisitionError(f"the acquisition plug-in '{name}' returned index {bad[0]}, outside "
                               f"0..{len(candidates) - 1}")
    return list(dict.fromkeys(indices))[:n]


def plugin_name(chooser: Chooser) -> str:
    """How a chooser is named in its entry point (module:function), so a message points at its code."""
    module = getattr(chooser, "__module__", None)
    qualname = getattr(chooser, "__qualname__", None) or type(chooser).__qualname__
    return f"{module}:{qualname}" if module else qualname
