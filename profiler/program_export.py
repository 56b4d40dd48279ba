"""Host export of a profile's whole programs: each .pte (or, for the sparse runtime, .jcwnet) built in its
own worker process, one per core, and which modules the host needs for it.
"""
from __future__ import annotations

import importlib.util
import multiprocessing
import os
from concurrent import futures
from pathlib import Path
from typing import Any

#: Parallel host exports at most (each worker holds its own torch, ~1.5 GB).
EXPORT_WORKERS = 4

#: What exporting a whole program needs on the host: the `search` extra of the kit (`jcw[search]`).
EXPORT_MODULES = ("torch", "executorch")


def export_modules_missing() -> list[str]:
    """The export modules this installation lacks; a profiling-only install (`pip install jcw`) lacks both."""
    return [name for name in EXPORT_MODULES if importlib.util.find_spec(name) is None]


def export_unavailable_sentence(absent: list[str]) -> str:
    return (f"this installation has no {' or '.join(absent)}, so whole programs cannot be exported here; install "
            f"the search extra (`pip install 'jcw[search]'`, or `make setup` in a checkout)")


def export_one(spec: dict[str, Any], temp: str, runtime: str) -> dict[str, Any]:
    """One host export (in a worker process): a .pte (or, for the sparse runtime, a .jcwnet) and the
    delegation facts, or {"error": sentence}."""
    from jcw.profiler import program_build, program_net
    try:
        if runtime == program_net.RUNTIME:
            program_net.export_net(spec, temp, seed=0)
            return {}
        built = program_build.export_pte(spec, temp, seed=0)
    except program_build.ProgramBuildError as exc:
        return {"error": str(exc)}
    return {"partitions": built.get("partitions"), "undelegated_ops": built.get("undelegated_ops")}


def exported(jobs: list[tuple[dict[str, Any], Path, Path]]):
    """Yield (job, result) as each export finishes; an OSError propagates.

    Exports are single-threaded Python and run while nothing is timed (after the first layer round, before
    the first program round), so one worker process per core (at most EXPORT_WORKERS) cuts the host's share
    of a profile without disturbing a measurement.
    Ctrl-C cancels what has not started; finished exports are already renamed into place.
    """
    workers = max(1, min(EXPORT_WORKERS, len(os.sched_getaffinity(0)), len(jobs)))
    if workers == 1:
        for job in jobs:
            yield job, export_one(job[0]["spec"], str(job[1]), job[0]["runtime"])
        return
    pool = futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        pending = {pool.submit(export_one, job[0]["spec"], str(job[1]), job[0]["runtime"]): job for job in jobs}
        for done in futures.as_completed(pending):
            yield pending[done], done.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
