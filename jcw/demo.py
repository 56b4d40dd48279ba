"""`jcw demo`: the whole pipeline on this machine with small budgets, as a user would type it.

It only chains the stages' own subcommands through the dispatcher (profile → train → search →
export), so what the demo shows is exactly what the commands do.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

DEMO_BUDGET = 200
DEMO_PROGRAMS = 8


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="the whole pipeline on the local machine with small budgets",
        description="Profile this machine with the real runner (layers and whole ExecuTorch programs), train a "
                    "latency predictor on the profile, train a small CNN on scikit-learn's digits and search its "
                    "per-layer channel widths against the predictor's whole-program ExecuTorch latency with real "
                    "accuracy (pruned, batch-norm recalibrated, evaluated on held-out digits), export the fastest "
                    "candidate within one point of the unpruned accuracy to an ExecuTorch .pte and measure it on this "
                    "machine against its prediction. Rerunning resumes the profile.")
    demo.add_argument("--out", default="demo", metavar="DIR", help="where the profile, predictor and run go "
                                                                    "(default ./demo)")
    demo.add_argument("--budget", type=int, default=DEMO_BUDGET,
                      help=f"layers to profile (default {DEMO_BUDGET}; `jcw profile` defaults to more)")
    demo.add_argument("--programs", type=int, default=DEMO_PROGRAMS,
                      help=f"whole training programs to export and time (default {DEMO_PROGRAMS}; `jcw profile` "
                           "adds held-out and unseen ones and defaults to more)")
    demo.add_argument("--gens", type=int, default=20, help="search generations (default 20)")
    demo.add_argument("--pop", type=int, default=32, help="search population (default 32)")
    demo.add_argument("--no-export", action="store_true", help="stop after the search")
    demo.add_argument("--runner-arg", action="append", default=[], metavar="FLAG",
                      help="extra runner flag for profiling, e.g. --runner-arg=--min-time-ms=10")
    demo.set_defaults(handler=cmd_demo)


def _step(title: str) -> None:
    print(f"\n=== jcw demo: {title} ===", flush=True)


#: How much accuracy the demo's pick may give up against the unpruned network (one point).
ACCURACY_TOLERANCE = 0.01


def pick_budget_ms(run_dir: Path) -> tuple[float, dict]:
    """The predicted latency of the fastest candidate within one point of the unpruned accuracy, as a budget
    `jcw export --pick` reproduces exactly (full float precision: rounding could fall below it)."""
    front = json.loads((run_dir / "front.json").read_text())
    meta = json.loads((run_dir / "run.json").read_text())
    unpruned = next((r["accuracy"] for r in meta.get("references", [])
                     if r.get("kind") == "width" and r.get("value") == 1.0), max(c["accuracy"] for c in front))
    close = [c for c in front if c["accuracy"] >= unpruned - ACCURACY_TOLERANCE - 1e-12]
    chosen = min(close or front, key=lambda c: (c["latency_ms"], -c["accuracy"]))
    return chosen["latency_ms"], {"unpruned_accuracy": unpruned, "accuracy": chosen["accuracy"]}


def ratio_line(report_path: Path) -> str:
    """The demo's last line: the exported .pte measured on the device against its prediction."""
    report = json.loads(report_path.read_text())
    threads = report.get("threads") or "default"
    return (f"jcw demo: {report['pte']} measured {report['measured_ms']:.4g} ms on {report['device']} against "
            f"{report['predicted_ms']:.4g} ms predicted: measured/predicted {report['ratio']:.2f} "
            f"(both {report['statistic']}; {report['runtime']}, {threads} thread(s))")


def cmd_demo(args: argparse.Namespace, run: Callable[[list[str]], int] | None = None) -> int:
    from jcw import UserError
    from jcw.__main__ import main
    if args.budget < 1:
        raise UserError(f"--budget must be at least 1, got {args.budget}")
    if args.programs < 0:
        raise UserError(f"--programs must be at least 0, got {args.programs}")
    for name, minimum in (("gens", 1), ("pop", 4)):  # the search's own minimums, checked before profiling
        if getattr(args, name) < minimum:
            raise UserError(f"--{name} must be at least {minimum}, got {getattr(args, name)}")
    run = run or main
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    profile, predictor, run_dir = out / "profile", out / "predictor", out / "run"
    runner_args = [f"--runner-arg={a}" for a in args.runner_arg]

    _step(f"profile this machine ({args.budget} layers, dense and sparse, and whole ExecuTorch programs) "
          f"into {profile}")
    status = run(["profile", "--device", "local", "--out", str(profile), "--budget", str(args.budget),
                  "--programs", str(args.programs), *runner_args])
    if status:
        return status
    _step(f"train a latency predictor into {predictor}")
    status = run(["train", "--profile", str(profile), "--out", str(predictor)])
    if status:
        return status
    _step(f"search the digits CNN's per-layer widths against its whole-program ExecuTorch latency into {run_dir}")
    status = run(["search", "--predictor", str(predictor), "--model", "digits", "--accuracy", "digits",
                  "--pop", str(args.pop), "--gens", str(args.gens), "--out", str(run_dir)])
    if status or args.no_export:
        return status
    pick, why = pick_budget_ms(run_dir)
    _step(f"export the fastest candidate within one point of the unpruned accuracy ({why['accuracy']:.4f} vs "
          f"{why['unpruned_accuracy']:.4f}, {pick:.4g} ms predicted) to {out / 'model.pte'} and measure it here")
    status = run(["export", "--run", str(run_dir), "--pick", repr(pick), "--out", str(out / "model.pte"),
                  "--device", "local"])
    if status == 0:
        print(f"\njcw demo: done. Profile {profile}, predictor {predictor} (report.md), run {run_dir} "
              f"(front.json, front.png), model {out / 'model.pte'}.")
        print(ratio_line(out / "model.export.json"))
    return status
