"""The profiler's commands: `jcw devices`, `jcw profile`, `jcw measure`.

Owns argument parsing, the live progress bar and the summary tables; the work itself is in
profiler.session. User mistakes end in one sentence and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import io
import json
import signal
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from profiler import plans, session
from profiler.acquisition import AcquisitionError, load_chooser
from profiler.cliargs import int_at_least
from profiler.layerspec import read_jsonl
from profiler.store import ProfileStore

EXIT_USER_ERROR = 2


_positive_int = int_at_least(1)
_non_negative_int = int_at_least(0)


def _holdout(text: str) -> int:
    value = _non_negative_int(text)
    if value > plans.HOLDOUT_POOL:
        raise argparse.ArgumentTypeError(f"expected at most {plans.HOLDOUT_POOL}, got {text!r}")
    return value


def _add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", required=True, metavar="ADDRESS",
                        help="local (this machine), usb:<serial> or a bare serial, or tcp:<host>:<port>")
    parser.add_argument("--threads", type=_positive_int, default=1, help="runner threads per layer (default 1)")
    parser.add_argument("--runner-arg", action="append", default=[], metavar="FLAG",
                        help="extra flag passed to the runner, e.g. --runner-arg=--min-time-ms=10 (repeatable)")


def register(subparsers: argparse._SubParsersAction) -> None:
    devices = subparsers.add_parser(
        "devices", help="list the local machine, USB phones and known TCP phones",
        description="List where jcw can measure: this machine, phones on USB, and TCP phones you added.")
    group = devices.add_mutually_exclusive_group()
    group.add_argument("--add", metavar="tcp:HOST:PORT", help="remember a phone reachable over TCP")
    group.add_argument("--remove", metavar="tcp:HOST:PORT", help="forget a TCP phone")
    devices.set_defaults(handler=cmd_devices)

    prof = subparsers.add_parser(
        "profile", help="measure a device's dense and sparse convolution latencies into a profile",
        description="Measure a sampling plan (real-network layers with perturbed widths and densities, random "
                    "layers, and a held-out set) on a device, each configuration in several rounds, into a "
                    "resumable profile directory. Rerunning the same command resumes; a larger --budget or "
                    "--rounds extends the profile.")
    _add_device_args(prof)
    prof.add_argument("--out", required=True, metavar="DIR", help="profile directory, e.g. profiles/pixel7")
    prof.add_argument("--budget", type=_positive_int, default=plans.DEFAULT_BUDGET,
                      help=f"training layers to measure (default {plans.DEFAULT_BUDGET}; convs are measured dense "
                           f"and sparse; a held-out set of real-network layers comes on top, see --holdout)")
    prof.add_argument("--seed", type=_non_negative_int, default=0, help="sampling seed (default 0)")
    prof.add_argument("--holdout", type=_holdout, default=None, metavar="N",
                      help="held-out real-network layers measured for evaluation only "
                           "(default max(50, budget/5); 0 for none, e.g. for a quick dry run)")
    prof.add_argument("--rounds", type=_positive_int, default=session.DEFAULT_ROUNDS,
                      help=f"timing rounds per configuration, spread over the run (default {session.DEFAULT_ROUNDS})")
    prof.add_argument("--adaptive", action="store_true",
                      help="spend the second half of the budget where the installed acquisition plug-in "
                           "(entry point group jcw.acquisition) is least certain")
    prof.add_argument("--csv", metavar="FILE", help="also export every measured round as CSV")
    prof.set_defaults(handler=cmd_profile)

    meas = subparsers.add_parser(
        "measure", help="measure given layers on a device and print the runner's results",
        description="Measure the layers of a layer-spec JSONL file on a device: one runner result line per layer "
                    "and implementation (both = dense for every layer, sparse too for every conv). Exit status 1 when "
                    "the runner reported an error for any of them.")
    _add_device_args(meas)
    meas.add_argument("--layers", required=True, metavar="FILE", help="layer specs, one JSON object per line")
    meas.add_argument("--impl", choices=("dense", "sparse", "both"), default="both",
                      help="implementation(s) to measure (default both)")
    meas.add_argument("--json", action="store_true", help="print runner result lines (JSON) instead of a table")
    meas.set_defaults(handler=cmd_measure)


def _runner_argv(flags: list[str]) -> list[str]:
    """--runner-arg=--min-time-ms=10 becomes the runner's two tokens --min-time-ms 10."""
    argv: list[str] = []
    for flag in flags:
        name, sep, value = flag.partition("=")
        argv.extend([name, value] if sep else [name])
    return argv


def _fail(command: str, message: str) -> int:
    print(f"jcw {command}: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def _progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("configs"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, transient=False)


# ---- jcw devices --------------------------------------------------------------------------------
def cmd_devices(args: argparse.Namespace) -> int:
    try:
        from android_harness import discovery
    except ModuleNotFoundError:
        discovery = None
    console = Console()
    if args.add or args.remove:
        if discovery is None:
            return _fail("devices", "phones over ADB are not part of this installation, so no TCP phone can be added")
        if args.add:
            console.print(f"added {discovery.add_tcp_device(args.add)}")
        elif discovery.remove_tcp_device(args.remove):
            console.print(f"removed {args.remove}")
        else:
            return _fail("devices", f"{args.remove} is not in the list of known TCP phones")
    rows = discovery.list_devices() if discovery is not None else [
        {"address": "local", "kind": "local", "state": "ready", "description": "this machine"}]
    table = Table(title="devices")
    for column in ("address", "kind", "state", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in ("address", "kind", "state", "description")))
    console.print(table)
    return 0


# ---- jcw profile --------------------------------------------------------------------------------
def _summary_table(summary: session.ProfileSummary) -> Table:
    table = Table(title=f"profile {summary.out_dir}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    efficiency = summary.timed_seconds / summary.wall_seconds if summary.wall_seconds else 0.0
    samples = ", ".join(f"{k} {v}" for k, v in sorted(summary.samples.items()))
    for what, value in (
            ("configurations planned", f"{summary.configurations} ({samples})"),
            ("rounds per configuration", summary.rounds),
            ("results measured (all rounds)", summary.measured),
            ("failures", summary.failures),
            ("new results this run", summary.new_results),
            ("batches this run", summary.batches),
            ("drift-flagged batches (re-measured once)", f"{summary.drift_batches} ({summary.requeued} configs)"),
            ("runner crashes recovered", summary.runner_crashes),
            ("device time", f"{summary.device_seconds:.1f} s"),
            ("time inside timed kernel runs", f"{summary.timed_seconds:.1f} s ({efficiency:.0%} of wall)"),
            ("wall time", f"{summary.wall_seconds:.1f} s")):
        table.add_row(what, str(value))
    return table


class _LazyBar:
    """A progress bar that appears with the first progress report, so an early error prints alone."""

    def __init__(self, description: str) -> None:
        self.bar = _progress_bar(Console(stderr=True))
        self.description = description
        self.task = None

    def __call__(self, done: int, total: int, info: dict[str, Any]) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=total)
        phase = info.get("phase")
        description = "adaptive" if phase == "adaptive" else (
            f"round {info['round'] + 1}" if "round" in info else self.description)
        self.bar.update(self.task, completed=done, total=total, description=description)

    def __enter__(self) -> "_LazyBar":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.task is not None:
            if exc_type is not None:  # the error sentence should stand alone, not under a half-filled bar
                self.bar.live.transient = True
                if not self.bar.console.is_terminal:  # a log would get the bar's final line all the same
                    self.bar.console.file = io.StringIO()
            self.bar.stop()


class _CtrlC:
    """Remembers a Ctrl-C as well as raising it: if the KeyboardInterrupt lands where Python must
    swallow it (a finalizer run by the garbage collector), the next progress report or the end
    of the profile still stops with the interrupted message. A SIGINT someone chose to ignore
    (a background job of a script) stays ignored."""

    def __init__(self) -> None:
        self.caught = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: object) -> None:
        self.caught = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.caught:
            raise KeyboardInterrupt

    def __enter__(self) -> "_CtrlC":
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def cmd_profile(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _fail("profile", f"--out {out} exists and is not a directory")
    if args.csv and (Path(args.csv).is_dir() or not Path(args.csv).parent.is_dir()):
        return _fail("profile", f"cannot write --csv {args.csv}: it is a directory or its directory does not exist")
    try:
        if args.adaptive:
            load_chooser()  # fail before connecting to anything
        with _CtrlC() as ctrl_c, session.open_device(args.device) as device, _LazyBar("profiling") as bar:
            def progress(done: int, total: int, info: dict[str, Any]) -> None:
                ctrl_c.check()
                bar(done, total, info)

            summary = session.profile(device, out, budget=args.budget, seed=args.seed, threads=args.threads,
                                      rounds=args.rounds, adaptive=args.adaptive, holdout=args.holdout,
                                      runner_args=_runner_argv(args.runner_arg), progress=progress)
            ctrl_c.check()
    except AcquisitionError as exc:
        return _fail("profile", str(exc))
    except KeyboardInterrupt:
        print(f"jcw profile: interrupted; everything measured so far is saved in {out}, rerun the same command "
              f"to resume.", file=sys.stderr)
        return 130
    Console().print(_summary_table(summary))
    if args.csv:
        try:
            with ProfileStore(out) as store:
                rows = store.export_csv(args.csv)
        except OSError as exc:
            return _fail("profile", f"cannot write --csv {args.csv}: {exc.strerror or exc}")
        Console().print(f"wrote {rows} rows to {args.csv}")
    return 0


# ---- jcw measure --------------------------------------------------------------------------------
def cmd_measure(args: argparse.Namespace) -> int:
    layers = read_jsonl(args.layers)
    specs = [(str(obj.get("id", f"line{n}")), spec) for n, (obj, spec) in enumerate(layers, start=1)]
    if args.impl == "sparse" and any(spec.op == "dwconv" for _, spec in specs):
        return _fail("measure", "--impl sparse cannot measure a dwconv layer (depthwise runs dense only); "
                                "use --impl both")
    by_id = dict(specs)
    results = []
    with session.open_device(args.device) as device, _LazyBar("measuring") as progress:
        for result in session.measure(device, specs, impl=args.impl, threads=args.threads,
                                      runner_args=_runner_argv(args.runner_arg), progress=progress):
            if args.json:
                print(json.dumps(result), flush=True)
            results.append(result)
    failures = sum(1 for r in results if r.get("error"))
    if not args.json:
        table = Table(title=f"{len(results)} measurements, {failures} failed")
        for column in ("id", "layer", "density", "impl", "median us", "min us", "reps", "error"):
            table.add_column(column, justify="right" if column in ("median us", "min us", "reps") else "left")
        for r in results:
            spec = by_id[r["id"]]
            shape = f"{spec.op} {spec.cin}->{spec.cout} k{spec.k}s{spec.stride} {spec.h}x{spec.w}"
            table.add_row(r["id"], shape, f"{spec.density:g}", r.get("impl", ""),
                          f"{r['us_median']:.1f}" if r.get("us_median") is not None else "",
                          f"{r['us_min']:.1f}" if r.get("us_min") is not None else "",
                          str(r.get("reps", "")), r.get("error") or "")
        Console().print(table)
    return 1 if failures else 0
