"""The profiler's commands: `jcw devices`, `jcw profile`, `jcw measure`.

Owns argument parsing and the commands' flow (what they show is profiler.cli_display); the work itself is in
profiler.session. User mistakes end in one sentence and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from jcw.profiler import labels, plans, program_export, program_measure, program_session, session, sparse_programs
from jcw.profiler.acquisition import AcquisitionError, load_chooser
from jcw.profiler.cli_display import CtrlC, LazyBar, summary_table
from jcw.profiler.cliargs import (
    OutputPathError,
    check_output_dir,
    check_output_file,
    int_at_least,
    int_between,
    os_error_reason,
    threads_arg,
)
from jcw.profiler.profile_lock import profile_lock
from jcw.profiler.store import ProfileStore, StoreError
from jcw.profiler.transfer_prior import PriorCardError, check_prior, check_runner

EXIT_USER_ERROR = 2
#: Exit status of a run that ended normally but whose every new result is a failure (as `jcw measure`
#: uses for a runner error).
EXIT_ALL_FAILED = 1


_positive_int = int_at_least(1)
_non_negative_int = int_at_least(0)
_budget = int_between(1, session.MAX_BUDGET, "a larger profile would not fit in memory")
_rounds = int_between(1, session.MAX_ROUNDS)
_programs = int_between(0, session.MAX_PROGRAMS, "each is a .pte file exported on this machine")

#: The runner's timing flags and the values it accepts (android_harness/native/main.c), checked here so a
#: typo is one sentence before anything connects: (minimum, maximum, whole number).
_RUNNER_FLAGS = {"--warmup": (0, 1e6, True), "--warmup-ms": (0, 1e9, False), "--min-reps": (1, 1e6, True),
                 "--max-reps": (1, 2e9, True), "--min-time-ms": (0, 1e9, False), "--max-time-ms": (0, 1e9, False),
                 "--tolerance": (0, 1e9, False), "--check-samples": (0, 1e6, True), "--max-mb": (1, 1e9, False)}


def _program_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be whole numbers separated by commas, got {text!r}") from None
    if not sizes or sizes[0] < 32 or sizes[-1] > 1024:
        raise argparse.ArgumentTypeError(f"must be input sizes between 32 and 1024, got {text!r}")
    return sizes


def _holdout(text: str, pool: int = plans.HOLDOUT_POOL) -> int:
    value = _non_negative_int(text)
    if value > pool:
        raise argparse.ArgumentTypeError(f"expected at most {pool}, got {text!r}")
    return value


def _unseen(text: str) -> int:
    return _holdout(text, plans.UNSEEN_POOL)


def _add_device_args(parser: argparse.ArgumentParser, threads_help: str) -> None:
    parser.add_argument("--device", required=True, action="append", metavar="ADDRESS",
                        help="local (this machine), usb:<serial> or a bare serial, or tcp:<host>:<port>; repeat it, "
                             "or say all, to run every phone in parallel (the device lab, profiler.lab_cli)")
    parser.add_argument("--threads", type=threads_arg, default=None, help=threads_help + " (1 to 256)")
    parser.add_argument("--runner-arg", action="append", default=[], metavar="FLAG",
                        help="extra flag passed to the runner, e.g. --runner-arg=--min-time-ms=10 (repeatable; "
                             "`jcw profile` passes the timing flags --warmup, --min-reps, --min-time-ms, --max-reps, "
                             "--max-time-ms on to the .pte runner too)")


def register(subparsers: argparse._SubParsersAction) -> None:
    devices = subparsers.add_parser(
        "devices", help="list the local machine, USB phones and known TCP phones",
        description="List where jcw can measure: this machine, phones on USB, and TCP phones you added.")
    group = devices.add_mutually_exclusive_group()
    group.add_argument("--add", metavar="tcp:HOST:PORT", help="remember a phone reachable over TCP")
    group.add_argument("--remove", metavar="tcp:HOST:PORT", help="forget a TCP phone")
    devices.set_defaults(handler=cmd_devices)

    prof = subparsers.add_parser(
        "profile", help="measure a device's layer and whole-program latencies into a profile",
        description="Measure a sampling plan (real-network layers with perturbed widths and densities, coverage "
                    "layers of the kinds users bring, random layers, a real-network held-out set and a held-out "
                    "set of unseen architectures' layers) on a device, each configuration in several rounds, then "
                    "whole CNN programs exported to ExecuTorch (.pte) and timed by the ExecuTorch runtime in as many "
                    "rounds, into a resumable profile directory. A configuration's or program's latency is the "
                    "fastest repetition (us_min) of its fastest round. Rerunning the same command resumes; a "
                    "larger --budget, --rounds or --programs extends the profile.")
    _add_device_args(prof, "threads for layers and programs (default: the thread count ExecuTorch uses on that "
                           "device by default, from the .pte runner's header; a rerun keeps the profile's count)")
    prof.add_argument("--out", required=True, metavar="DIR", help="profile directory, e.g. profiles/pixel7")
    prof.add_argument("--budget", type=_budget, default=None,
                      help=f"training layers to measure (default {plans.DEFAULT_BUDGET}, {plans.TRANSFER_BUDGET} with "
                           f"--prior; convs are measured dense "
                           f"and sparse; a held-out set of real-network layers comes on top, see --holdout; at most "
                           f"{session.MAX_BUDGET})")
    prof.add_argument("--seed", type=_non_negative_int, default=0, help="sampling seed (default 0)")
    prof.add_argument("--holdout", type=_holdout, default=None, metavar="N",
                      help="held-out real-network layers measured for evaluation only "
                           "(default max(50, budget/5); 0 for none, e.g. for a quick dry run)")
    prof.add_argument("--unseen", type=_unseen, default=None, metavar="N",
                      help="held-out layers of architectures no plan is drawn from (EfficientNet-Lite, SqueezeNet, "
                           "VGG, DenseNet, ShuffleNetV2, GhostNet, MobileNetV3 at 96-320 px), measured for "
                           "evaluation only (default: as many as --holdout)")
    prof.add_argument("--rounds", type=_rounds, default=session.DEFAULT_ROUNDS,
                      help=f"timing rounds per configuration, spread over the run (default {session.DEFAULT_ROUNDS}, "
                           f"at most {session.MAX_ROUNDS})")
    prof.add_argument("--adaptive", action="store_true",
                      help="spend the second half of the budget where the installed acquisition plug-in "
                           "(entry point group jcw.acquisition) is least certain")
    prof.add_argument("--programs", type=_programs, default=None, metavar="N",
                      help=f"whole training programs to export and time after the layers (default "
                           f"{session.DEFAULT_PROGRAMS}; N/3 held-out and N/3 unseen-family programs, at least "
                           f"{program_session.MIN_EVAL_PROGRAMS} each, come on top; 0 skips programs; at most "
                           f"{session.MAX_PROGRAMS}; exporting them needs the search extra, jcw[search]: without "
                           f"it the default is skipped with a note and an explicit N is refused)")
    prof.add_argument("--sparse-programs", type=_programs, default=None, metavar="N",
                      help=f"whole training programs for the sparse network engine (ResNet-18/50, MobileNetV1/V2 at "
                           f"random widths and per-layer densities, exported as .jcwnet network files and timed in "
                           f"the same rounds; default: as many as --programs, "
                           f"{sparse_programs.DEFAULT_SPARSE_PROGRAMS} unless --programs says otherwise; N/3 held-out "
                           f"ones, at "
                           f"least {sparse_programs.MIN_EVAL_PROGRAMS}, come on top; 0 skips them; skipped with a "
                           f"note on a device whose runner has no engine)")
    prof.add_argument("--program-sizes", type=_program_sizes, default=None, metavar="R[,R...]",
                      help="input resolutions of the whole programs (default 128,160,192,224; small sizes such as "
                           "32,48 keep an emulated phone's programs fast); fixed when the programs are first planned")
    prof.add_argument("--settle-cap", type=int_between(0, labels.MAX_SETTLE_CAP), default=labels.DEFAULT_SETTLE_CAP,
                      metavar="N", help=f"settle rounds: after the layer rounds, re-measure only the configurations "
                                        f"whose two fastest rounds differ by more than "
                                        f"{labels.SETTLE_TOLERANCE * 100:.0f}%%, one round per pass, until they agree "
                                        f"or have had N extra rounds (default {labels.DEFAULT_SETTLE_CAP}, at most "
                                        f"about 3%% more profile time on a quiet device; 0 turns it off)")
    prof.add_argument("--weights", choices=labels.WEIGHTS_MODES, default=labels.DEFAULT_WEIGHTS,
                      help="time layers with their weights warm (cached after the first run; default) or cold "
                           "(rotating over copies of each layer larger than the last-level cache, as weights come "
                           "from memory inside a network); recorded in the profile, which never mixes the two")
    prof.add_argument("--cold-bytes", type=_cold_bytes, default=None, metavar="SIZE",
                      help="with --weights cold: rotate over SIZE bytes (e.g. 4M) instead of past the last-level "
                           "cache, when that cache holds the whole networks the device runs (a server's hundreds "
                           "of MB: their layers read weights from it, not from memory); recorded in the profile")
    prof.add_argument("--prior", action="append", default=[], metavar="PREDICTOR_DIR",
                      help="plan for transfer from a known device's predictor (repeatable): only real-network "
                           "layers, spread over conv 1x1, conv kxk and depthwise; then `jcw train --prior`")
    prof.add_argument("--csv", metavar="FILE", help="also export every measured layer round as CSV")
    prof.set_defaults(handler=cmd_profile)

    meas = subparsers.add_parser(
        "measure", help="measure given layers, ExecuTorch programs or jcw network files on a device",
        description="--layers: measure the layers of a layer-spec JSONL file, one runner result line per layer and "
                    "implementation (both = dense for every layer, sparse too for every conv); exit status 1 when "
                    "the runner reported an error for any of them. --pte: time whole ExecuTorch programs with the "
                    "ExecuTorch runtime on the device; each program's latency_ms is the fastest repetition of its "
                    "fastest round (us_min / 1000), the statistic the kit stands by (noise on a phone only ever "
                    "slows a run down); us_median is reported beside it. A file that is not a complete .pte or a "
                    "program the runner cannot feed (int or several inputs) is one sentence and exit status 2. "
                    "--net: the same for jcw network files (.jcwnet, `jcw export --runtime sparse`) run by the "
                    "sparse network engine, which checks each against its reference output first; a damaged, "
                    "foreign or unrunnable file is one sentence and exit status 2, before connecting.")
    _add_device_args(meas, "threads (--layers: default 1; --pte/--net: default the thread count ExecuTorch uses "
                           "on that device)")
    what = meas.add_mutually_exclusive_group(required=True)
    what.add_argument("--layers", metavar="FILE", help="layer specs, one JSON object per line")
    what.add_argument("--pte", action="append", metavar="FILE",
                      help="an ExecuTorch program (.pte) with one float input (repeatable)")
    what.add_argument("--net", action="append", metavar="FILE",
                      help="a jcw network file (.jcwnet) for the sparse network engine (repeatable)")
    meas.add_argument("--impl", choices=("dense", "sparse", "both"), default="both",
                      help="--layers: implementation(s) to measure (default both)")
    meas.add_argument("--weights", choices=labels.WEIGHTS_MODES, default=None,
                      help="--layers: time each layer with its weights warm (cached after the first run; default) "
                           "or cold (rotating over copies larger than the last-level cache, as `jcw profile "
                           "--weights cold` does); the table's title and every JSON line say which")
    meas.add_argument("--cold-bytes", type=_cold_bytes, default=None, metavar="SIZE",
                      help="--layers with --weights cold: rotate over SIZE bytes (e.g. 4M) instead of past the "
                           "last-level cache, as `jcw profile --cold-bytes` does")
    meas.add_argument("--rounds", type=_rounds, default=1,
                      help="--pte/--net: timing rounds per file; latency_ms is the fastest (default 1)")
    meas.add_argument("--sparse-path", choices=program_measure.SPARSE_PATHS, default="auto",
                      help="--net: run the sparse layers with XNNPACK's own sparse inference where the network "
                           "qualifies and XNNPACK rewrites it on that CPU, else as NCHW SpMM segments (auto, "
                           "default); only the former (xnnpack: a network it does not apply to is refused with "
                           "the reason); or only the latter (segments)")
    meas.add_argument("--json", action="store_true",
                      help="print JSON lines instead of a table (--layers: runner result lines; --pte: one object "
                           "per program with latency_ms, us_min, us_median, reps, threads, runtime, device, pte; "
                           "--net: the same with net instead of pte, plus sparse_layers, conversions, max_abs_error, "
                           "sparse_path and not_xnnpack)")
    meas.set_defaults(handler=cmd_measure)


class _BadRunnerArg(ValueError):
    """A --runner-arg value the runner would refuse; one sentence."""


def _cold_bytes(text: str) -> int:
    try:
        return labels.parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size from 1K to 1024G such as 4M, got {text!r}") from None
_cold_bytes.__name__ = "size"


def _runner_argv(flags: list[str]) -> list[str]:
    """--runner-arg=--min-time-ms=10 becomes the runner's two tokens --min-time-ms 10; the timing flags'
    values are checked against what the runner accepts (other flags are the runner's to judge)."""
    argv: list[str] = []
    for flag in flags:
        name, sep, value = flag.partition("=")
        argv.extend([name, value] if sep else [name])
        if name in _RUNNER_FLAGS and sep:
            low, high, whole = _RUNNER_FLAGS[name]
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not (low <= number <= high) or (whole and number != int(number)):
                kind = "a whole number" if whole else "a number"
                raise _BadRunnerArg(f"--runner-arg={flag}: the runner fails before measuring anything with it, as "
                                    f"{name} takes {kind} from {low:,.0f} to {high:,.0f} (got {value!r})")
    return argv


def _fail(command: str, message: str) -> int:
    print(f"jcw {command}: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


# ---- jcw devices --------------------------------------------------------------------------------
def cmd_devices(args: argparse.Namespace) -> int:
    try:
        from jcw.android_harness import discovery
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
def _sparse_programs(args: argparse.Namespace) -> int:
    """--sparse-programs, by default as many as --programs (so --programs 0 still profiles layers only)."""
    if args.sparse_programs is not None:
        return args.sparse_programs
    return sparse_programs.DEFAULT_SPARSE_PROGRAMS if args.programs is None else args.programs


def _lab(args: argparse.Namespace) -> Any:
    """jcw.profiler.lab_cli when --device names several phones or all (it runs them in parallel), else None
    with args.device made the one address the rest of this module expects."""
    from jcw.profiler import lab_cli
    if lab_cli.wants_lab(args.device):
        return lab_cli
    args.device = args.device if isinstance(args.device, str) else args.device[0]
    return None


def cmd_profile(args: argparse.Namespace) -> int:
    if (lab_cli := _lab(args)) is not None:
        return lab_cli.profile_lab(args, "profile")
    out = Path(args.out)
    try:  # before anything connects or measures: a profile that cannot be written is never started
        check_output_dir(out, "--out")
        if args.csv:
            check_output_file(args.csv, "--csv")
        runner_argv = _runner_argv(args.runner_arg)
        priors = [check_prior(path) for path in dict.fromkeys(args.prior)]  # missing, foreign or tampered
    except (OutputPathError, _BadRunnerArg, PriorCardError) as exc:
        return _fail("profile", str(exc))
    budget = args.budget or (plans.TRANSFER_BUDGET if priors else plans.DEFAULT_BUDGET)
    try:
        absent = program_export.export_modules_missing()
        asked = [f"{flag} {n}" for flag, n in (("--programs", args.programs),
                                                 ("--sparse-programs", args.sparse_programs)) if n]
        if asked and absent:  # asked for explicitly: refused, where the default is skipped with a note
            layers_only = "--programs 0" + (" --sparse-programs 0" if args.sparse_programs else "")  # sparse follows
            return _fail("profile", f"{' and '.join(asked)}: {program_export.export_unavailable_sentence(absent)}"
                                    f", or pass {layers_only} to profile layers only.")
        if args.adaptive:
            load_chooser()  # fail before connecting to anything
        with CtrlC() as ctrl_c, profile_lock(out):
            session.check_profile_dir(out)  # a damaged or read-only profile is said before connecting
            with session.open_device(args.device) as device, LazyBar("profiling") as bar:
                def progress(done: int, total: int, info: dict[str, Any]) -> None:
                    ctrl_c.check()
                    bar(done, total, info)

                for prior in priors:
                    check_runner(prior, device.runner_info())
                summary = session.profile(device, out, budget=budget, seed=args.seed, threads=args.threads,
                                          rounds=args.rounds, adaptive=args.adaptive, holdout=args.holdout,
                                          unseen=args.unseen,
                                          programs=session.DEFAULT_PROGRAMS if args.programs is None
                                          else args.programs, program_sizes=args.program_sizes,
                                          runner_args=runner_argv, progress=progress, weights=args.weights,
                                          cold_bytes=args.cold_bytes, settle_cap=args.settle_cap,
                                          sparse_programs=_sparse_programs(args),
                                          transfer_priors=[{"path": p["path"], "sha256": p["sha256"]} for p in priors])
                ctrl_c.check()
    except (AcquisitionError, PriorCardError) as exc:
        return _fail("profile", str(exc))
    except KeyboardInterrupt:
        print(f"jcw profile: interrupted; everything measured so far is saved in {out}, rerun the same command "
              f"to resume.", file=sys.stderr)
        return 130
    Console().print(summary_table(summary))
    status = 0
    if summary.programs_note:
        print(f"jcw profile: {summary.programs_note.rstrip('.')}; the layer profile is complete, and a rerun of the "
              f"same command adds the programs once that is fixed.", file=sys.stderr)
    if summary.sparse_note:
        print(f"jcw profile: {summary.sparse_note.rstrip('.')}.", file=sys.stderr)
    if args.csv:
        try:
            with ProfileStore(out, readonly=True) as store:
                rows = store.export_csv(args.csv)
        except OSError as exc:
            return _fail("profile", f"cannot write --csv {args.csv}: {os_error_reason(exc)}; the profile itself is "
                                    f"complete in {out}")
        except StoreError as exc:
            return _fail("profile", str(exc))
        Console().print(f"wrote {rows} rows to {args.csv}")
    if summary.all_failed:
        failed = summary.new_failures + summary.program_new_failures
        _fail("profile", f"every one of the {failed} results of this run is a failure (see the failures rows, or "
                         f"--csv for the errors); they were stored as the layers' own")
        status = EXIT_ALL_FAILED
    return status


# ---- jcw measure --------------------------------------------------------------------------------
def cmd_measure(args: argparse.Namespace) -> int:
    """`jcw measure`: profiler.measure_cli."""
    from jcw.profiler import measure_cli
    return measure_cli.cmd_measure(args)
