"""Timing given whole-network files on a device: ExecuTorch programs (.pte) and jcw network files
(.jcwnet, the sparse engine) through the same runner lines, rounds and statistics — behind
`jcw measure --pte/--net` and the search stage's `jcw export`.
"""
from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from jcw.android_harness.device import Device, DeviceError
from jcw.profiler.batches import run_lines
from jcw.profiler.cliargs import MAX_THREADS
from jcw.profiler.netfile import NetFileError, read_net
from jcw.profiler.program_session import RUNTIME, Progress, PteError, check_pte
from jcw.profiler.store import ROUND_STATISTIC


def _open(address: str) -> Device:
    from jcw.android_harness.connect import open_device
    return open_device(address)


def check_net(path: str | os.PathLike[str]) -> Path:
    """The path of a jcw network file that profiler.netfile.read_net accepts; PteError (one sentence) otherwise."""
    try:
        read_net(path)
    except NetFileError as exc:
        raise PteError(str(exc)) from None
    return Path(path)


#: Plan-line key of each kind of whole-network file, and the check it passes before anything connects.
PROGRAM_FILES: dict[str, Callable[[str | os.PathLike[str]], Path]] = {"pte": check_pte, "net": check_net}
#: Result fields the network engine adds for "net" lines (android_harness/native/NETFILE.md).
NET_FIELDS = ("sparse_layers", "layers", "conversions", "max_abs_error", "xnnpack", "xnnpack_sparse", "sparse_path",
              "not_xnnpack")
#: How the engine runs sparse layers (NETFILE.md): XNNPACK's own sparse inference where the network qualifies
#: and XNNPACK rewrites it on that CPU, else NCHW SpMM segments (auto); only the first (xnnpack); only the
#: segments (segments).
SPARSE_PATHS = ("auto", "xnnpack", "segments")


def measure_programs(device_or_address: Device | str, pte_paths: Iterable[str | os.PathLike[str]],
                     threads: int | None = None, rounds: int = 1, runner_args: Iterable[str] = (),
                     progress: Progress | None = None, key: str = "pte", sparse_path: str = "auto"
                     ) -> list[dict[str, Any]]:
    """Time each .pte (key "pte") or jcw network file (key "net", the sparse engine) on a device in
    `rounds` passes; one dict per file, in order.

    `threads` None runs ExecuTorch's default thread count on that device. Each dict holds "pte",
    "device", "runtime" ("executorch"), "threads" (as run), "latency_ms" (the fastest round's us_min
    / 1000: the statistic the kit stands by, as for layers), "us_min", "us_median" (median over rounds
    of each round's median), "reps" (all rounds), "rounds", "round_us_min", and the runner's
    "load_us", "input_shape", "output_shape". PteError (one sentence) for a file that is missing,
    not a .pte, truncated, or refused by the runner (e.g. an int input or several inputs). A network
    file's dict names it under "net" and adds the engine's NET_FIELDS ("runtime" is then "sparse");
    `sparse_path` (one of SPARSE_PATHS) says how the engine runs its sparse layers.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 1 <= threads <= MAX_THREADS):
        raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS} or None, got {threads!r}")
    if key not in PROGRAM_FILES:
        raise ValueError(f"key must be one of {', '.join(PROGRAM_FILES)}, got {key!r}")
    if sparse_path not in SPARSE_PATHS:
        raise ValueError(f"sparse_path must be one of {', '.join(SPARSE_PATHS)}, got {sparse_path!r}")
    given = [str(p) for p in pte_paths]
    paths = [PROGRAM_FILES[key](p) for p in given]
    if isinstance(device_or_address, str):
        with _open(device_or_address) as device:
            return measure_programs(device, given, threads, rounds, runner_args, progress, key, sparse_path)
    device = device_or_address
    if not hasattr(device, "run_programs"):
        raise DeviceError(f"{device.address} cannot run whole programs (no .pte runner)")
    path_field = {"sparse_path": sparse_path} if key == "net" and sparse_path != "auto" else {}
    lines = [{"id": f"{r}:{i}", key: str(path.resolve()), "threads": threads or 0, **path_field}
             for r in range(rounds) for i, path in enumerate(paths)]
    by_file: list[list[dict[str, Any]]] = [[] for _ in paths]
    for done, result in enumerate(run_lines(device, lines, runner_args, run=device.run_programs), start=1):
        index = int(str(result.get("id")).split(":")[1])
        if result.get("error"):
            raise PteError(f"{given[index]}: {str(result['error']).rstrip('.')}")
        by_file[index].append(result)
        if progress is not None:
            progress(done, len(lines), {})
    return [_summarise(name, device.address, results, key) for name, results in zip(given, by_file)]


def _summarise(path: str, address: str, results: list[dict[str, Any]], key: str = "pte") -> dict[str, Any]:
    fastest = min(results, key=lambda r: r[ROUND_STATISTIC])
    medians = [r["us_median"] for r in results if r.get("us_median") is not None]
    extra = NET_FIELDS if key == "net" else ()
    return {key: path, "device": address, "runtime": fastest.get("runtime", "sparse" if key == "net" else RUNTIME),
            "threads": fastest.get("threads"), "latency_ms": fastest[ROUND_STATISTIC] / 1000.0,
            "us_min": fastest["us_min"], "us_median": statistics.median(medians) if medians else None,
            "reps": sum(int(r.get("reps") or 0) for r in results), "rounds": len(results),
            "round_us_min": [r["us_min"] for r in results],
            **{k: fastest[k] for k in ("load_us", "input_shape", "output_shape", *extra) if k in fastest}}
