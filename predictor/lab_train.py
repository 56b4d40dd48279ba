"""`jcw lab train`: one predictor per phone of a lab, trained in parallel worker processes.

Owns finding the lab's per-phone profiles (`jcw lab profile --out DIR` wrote DIR/<model>-<serial>), the pool
of training processes and the per-phone table; training itself is predictor.pipeline's. It lives in the
predictor stage because the profiler may not import it (stage order); profiler.lab_cli owns `jcw lab`.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jcw.predictor.errors import PredictorError
from jcw.profiler import lab_cli
from jcw.profiler.cliargs import check_output_dir, int_between
from jcw.profiler.store import DB_NAME

EXIT_DEVICE_OR_FAILED = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    train = lab_cli.lab_commands(subparsers).add_parser(
        "train", help="train one predictor per phone of the lab, in parallel",
        description="Train a latency predictor from each profile under --profiles (the DIR/<model>-<serial> "
                    "directories `jcw lab profile --out DIR` wrote) into --out/<model>-<serial>, several "
                    "at once. A profile that cannot be trained is reported while the others go on.")
    train.add_argument("--profiles", required=True, metavar="DIR", help="the lab's profiles (jcw lab profile --out)")
    train.add_argument("--out", required=True, metavar="DIR", help="the lab's predictors, one directory per phone")
    train.add_argument("--model", default="auto", help="regression model (as jcw train; default auto)")
    train.add_argument("--seed", type=int_between(0, 2**31 - 1), default=0, help="seed (default 0)")
    train.add_argument("--jobs", type=int_between(1, 256), default=None,
                       help="predictors trained at once (default: one per CPU, at most one per phone)")
    train.set_defaults(handler=cmd_lab_train)


def lab_profiles(root: str | Path) -> list[Path]:
    """The per-phone profile directories under `root`, by name; PredictorError when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise PredictorError(f"--profiles {root} is not a directory; give the --out of `jcw lab profile`.")
    found = sorted(path for path in root.iterdir() if (path / DB_NAME).is_file())
    if not found:
        raise PredictorError(f"--profiles {root} holds no profile (no */{DB_NAME}); give the --out of "
                             f"`jcw lab profile`.")
    return found


def train_one(profile: str, out: str, model: str, seed: int) -> dict[str, Any]:
    """Train one phone's predictor (in a worker process); a small summary, or its one-sentence error."""
    from jcw.predictor import pipeline
    from jcw.profiler.store import StoreError
    try:
        result = pipeline.train(profile, out, model=model, seed=seed)
    except (PredictorError, StoreError, ValueError) as exc:
        return {"profile": profile, "error": " ".join(str(exc).split())}
    metrics = result["card"].get("metrics") or {}  # per held-out set, the saved predictor's own figures
    first_set = next(iter(metrics), "")
    ours = metrics.get(first_set, {})
    return {"profile": profile, "out": out, "model": result["model"], "set": first_set,
            "n": ours.get("n"), "within10": ours.get("within10"), "rmspe": ours.get("rmspe")}


def train_lab(profiles: list[Path], out: str | Path, *, model: str = "auto", seed: int = 0,
              jobs: int | None = None) -> list[dict[str, Any]]:
    """Train a predictor per profile into out/<profile name>, `jobs` at a time; summaries in order."""
    workers = max(1, min(jobs or os.cpu_count() or 1, len(profiles)))
    context = multiprocessing.get_context("spawn")
    bar = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("predictors"),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=False)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool, bar:
        task = bar.add_task("train", total=len(profiles))
        futures = [pool.submit(train_one, str(p), str(Path(out) / p.name), model, seed) for p in profiles]
        results = []
        for future in futures:
            results.append(future.result())
            bar.advance(task)
    return results


def cmd_lab_train(args: argparse.Namespace) -> int:
    profiles = lab_profiles(args.profiles)
    check_output_dir(args.out, "--out")
    results = train_lab(profiles, args.out, model=args.model, seed=args.seed, jobs=args.jobs)
    table = Table(title=f"{len(results)} predictors, one per phone")
    for column in ("phone", "model", "held-out set", "n", "±10%", "RMSPE", "predictor"):
        table.add_column(column, justify="right" if column in ("n", "±10%", "RMSPE") else "left")
    for result in results:
        name = Path(result["profile"]).name
        if "error" in result:
            table.add_row(name, "failed", "", "", "", "", "")
            continue
        table.add_row(name, result["model"], result["set"], str(result["n"] or ""),
                      f"{result['within10']:.0%}" if result["within10"] is not None else "",
                      f"{result['rmspe']:.1%}" if result["rmspe"] is not None else "", result["out"])
    (Console() if sys.stdout.isatty() else Console(width=160)).print(table)  # a log keeps whole figures
    failed = [r for r in results if "error" in r]
    for result in failed:
        print(f"jcw lab train: {result['profile']}: {result['error'].rstrip('.')}; the other phones' predictors "
              f"were trained.", file=sys.stderr)
    return EXIT_DEVICE_OR_FAILED if failed else 0
