"""`jcw demo`: the whole pipeline on this machine with small budgets, as a user would type it.

It only chains the stages' own subcommands through the dispatcher (profile → train → search →
export), so what the demo shows is exactly what the commands do.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

DEMO_BUDGET = 200


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="the whole pipeline on the local machine with small budgets",
        description="Profile this machine with the real runner, train a latency predictor on the profile, "
                    "train a small CNN on scikit-learn's digits and search its per-layer width x density "
                    "against the predictor with real accuracy (pruned, batch-norm recalibrated, evaluated on held-out "
                    "digits), and export the candidate in the middle of the front to an ExecuTorch .pte. Rerunning "
                    "resumes the profile.")
    demo.add_argument("--out", default="demo", metavar="DIR", help="where the profile, predictor and run go "
                                                                    "(default ./demo)")
    demo.add_argument("--budget", type=int, default=DEMO_BUDGET,
                      help=f"layers to profile (default {DEMO_BUDGET}; `jcw profile` defaults to more)")
    demo.add_argument("--gens", type=int, default=20, help="search generations (default 20)")
    demo.add_argument("--pop", type=int, default=32, help="search population (default 32)")
    demo.add_argument("--no-export", action="store_true", help="stop after the search")
    demo.add_argument("--runner-arg", action="append", default=[], metavar="FLAG",
                      help="extra runner flag for profiling, e.g. --runner-arg=--min-time-ms=10")
    demo.set_defaults(handler=cmd_demo)


def _step(title: str) -> None:
    print(f"\n=== jcw demo: {title} ===", flush=True)


def middle_budget_ms(run_dir: Path) -> float:
    """A latency budget in the middle of a run's front, so the export picks a real trade-off."""
    front = json.loads((run_dir / "front.json").read_text())
    latencies = sorted(c["latency_ms"] for c in front)
    return round(latencies[len(latencies) // 2], 3)


def cmd_demo(args: argparse.Namespace, run: Callable[[list[str]], int] | None = None) -> int:
    from jcw import UserError
    from jcw.__main__ import main
    if args.budget < 1:
        raise UserError(f"--budget must be at least 1, got {args.budget}")
    for name, minimum in (("gens", 1), ("pop", 4)):  # the search's own minimums, checked before profiling
        if getattr(args, name) < minimum:
            raise UserError(f"--{name} must be at least {minimum}, got {getattr(args, name)}")
    run = run or main
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    profile, predictor, run_dir = out / "profile", out / "predictor", out / "run"
    runner_args = [f"--runner-arg={a}" for a in args.runner_arg]

    _step(f"profile this machine ({args.budget} layers, dense and sparse) into {profile}")
    status = run(["profile", "--device", "local", "--out", str(profile), "--budget", str(args.budget),
                  *runner_args])
    if status:
        return status
    _step(f"train a latency predictor into {predictor}")
    status = run(["train", "--profile", str(profile), "--out", str(predictor)])
    if status:
        return status
    _step(f"search the digits CNN's per-layer width x density against it into {run_dir}")
    status = run(["search", "--predictor", str(predictor), "--model", "digits", "--accuracy", "digits",
                  "--pop", str(args.pop), "--gens", str(args.gens), "--out", str(run_dir)])
    if status or args.no_export:
        return status
    pick = middle_budget_ms(run_dir)
    _step(f"export the best candidate within {pick} ms to {out / 'model.pte'}")
    status = run(["export", "--run", str(run_dir), "--pick", str(pick), "--out", str(out / "model.pte")])
    if status == 0:
        print(f"\njcw demo: done. Profile {profile}, predictor {predictor} (report.md), run {run_dir} "
              f"(front.json, front.png), model {out / 'model.pte'}.")
    return status
