"""The device lab's commands: `jcw lab serve|profile|measure|status`, and the many-phone forms of
`jcw profile --device all` and `jcw measure --device all`, which profiler.cli hands over to this module.

Owns their arguments, the shared progress display (one bar per phone) and the per-phone summary tables;
the work is in profiler.lab (one host) and profiler.lab_ray (a Ray cluster, the `lab` extra).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jcw.profiler import cli, lab, labels, plans, program_export, program_measure, session
from jcw.profiler.cliargs import check_output_dir, int_between, threads_arg
from jcw.profiler.lab import LabUsageError, PhoneJob, PhoneOutcome

EXIT_RESULTS_FAILED = 1
EXIT_USAGE = 2
EXIT_DEVICE = 3
LAB_EXTRA_SENTENCE = "needs the lab extra, which brings Ray: pip install 'jcw[lab]' (or `make setup` in a checkout)"


def wants_lab(devices: Sequence[str] | str) -> bool:
    """Whether a `--device` list names a lab (`all`, or several phones) rather than one device."""
    devices = [devices] if isinstance(devices, str) else list(devices)
    return len(devices) > 1 or devices == ["all"]


def _ray(command: str) -> Any:
    """jcw.profiler.lab_ray, or one sentence saying the lab extra is needed."""
    try:
        from jcw.profiler import lab_ray
    except ModuleNotFoundError as exc:
        if exc.name != "ray":
            raise
        raise LabUsageError(f"`jcw lab {command} --address` {LAB_EXTRA_SENTENCE}; without it, `jcw profile "
                            f"--device all` profiles this host's phones in parallel.") from None
    return lab_ray


class RichDisplay(lab.Display):
    """One progress bar per phone on stderr, with its state beside it."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.bar = Progress(TextColumn("[bold]{task.fields[phone]}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn(what), TextColumn("{task.description}"), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=False)
        self.tasks: dict[str, Any] = {}

    def start(self, phones: Sequence[lab.PhoneId]) -> None:
        for phone in phones:
            self.tasks[phone.serial] = self.bar.add_task("starting", total=None,
                                                         phone=f"{phone.model} {phone.serial}")
        self.bar.start()

    def progress(self, serial: str, done: int, total: int, what: str) -> None:
        self.bar.update(self.tasks[serial], completed=done, total=total, description=what)

    def state(self, serial: str, text: str) -> None:
        self.bar.update(self.tasks[serial], description=text)

    def stop(self) -> None:
        self.bar.stop()


# ---- arguments ------------------------------------------------------------------------------------
def _add_lab_args(parser: argparse.ArgumentParser, *, address: bool = True) -> None:
    parser.add_argument("--device", action="append", default=None, metavar="PHONE",
                        help="a phone (repeatable): an address or serial on this host, or a serial a lab host "
                             "serves with --address; `all` (default) is every phone")
    if address:
        parser.add_argument("--address", metavar="HOST:PORT",
                            help="the lab's Ray cluster (`ray start --head` prints it); without it, this host's "
                                 "phones run in parallel worker processes")
    parser.add_argument("--reconnects", type=int_between(0, 20), default=lab.DEFAULT_RECONNECTS,
                        help=f"fresh workers a phone that drops out gets before it is reported "
                             f"(default {lab.DEFAULT_RECONNECTS}); its profile resumes each time")


def _add_profile_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the lab's profiles: one resumable directory per phone, DIR/<model>-<serial> "
                             "(with --address, a path every host can write, e.g. a shared directory)")
    parser.add_argument("--budget", type=cli._budget, default=None, help="training layers per phone (as jcw profile)")
    parser.add_argument("--seed", type=cli._non_negative_int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--rounds", type=cli._rounds, default=session.DEFAULT_ROUNDS, help="timing rounds")
    parser.add_argument("--holdout", type=cli._holdout, default=None, metavar="N", help="held-out layers")
    parser.add_argument("--unseen", type=cli._unseen, default=None, metavar="N", help="unseen-architecture layers")
    parser.add_argument("--programs", type=cli._programs, default=None, metavar="N", help="whole programs")
    parser.add_argument("--sparse-programs", type=cli._programs, default=None, metavar="N",
                        help="sparse-engine programs")
    parser.add_argument("--program-sizes", type=cli._program_sizes, default=None, metavar="R[,R...]")
    parser.add_argument("--settle-cap", type=int_between(0, labels.MAX_SETTLE_CAP), default=labels.DEFAULT_SETTLE_CAP,
                        metavar="N", help="settle rounds (as jcw profile)")
    parser.add_argument("--weights", choices=labels.WEIGHTS_MODES, default=labels.DEFAULT_WEIGHTS)
    parser.add_argument("--threads", type=threads_arg, default=None, help="threads (default: ExecuTorch's)")
    parser.add_argument("--runner-arg", action="append", default=[], metavar="FLAG", help="as jcw profile")


def _add_measure_args(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--pte", action="append", metavar="FILE", help="an ExecuTorch program (repeatable)")
    what.add_argument("--net", action="append", metavar="FILE", help="a jcw network file (repeatable)")
    parser.add_argument("--rounds", type=cli._rounds, default=1, help="timing rounds per file (default 1)")
    parser.add_argument("--threads", type=threads_arg, default=None, help="threads (default: ExecuTorch's)")
    parser.add_argument("--runner-arg", action="append", default=[], metavar="FLAG", help="as jcw measure")
    parser.add_argument("--json", action="store_true", help="one JSON object per phone and program")


def lab_commands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The `jcw lab` group's own subcommands (created once per parser; predictor adds `train` to it)."""
    existing = getattr(subparsers, "_jcw_lab_commands", None)
    if existing is not None:
        return existing
    parser = subparsers.add_parser(
        "lab", help="profile, measure and train on every phone of a lab at once (one host, or many on Ray)",
        description="A device lab: every phone profiled or measured in parallel, each into its own resumable "
                    "profile directory named from its model and serial. Without --address, the phones of this "
                    "host run in worker processes; with --address, on a Ray cluster (the lab extra) whose hosts "
                    "each serve their phones (`jcw lab serve`).")
    commands = parser.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    commands.required = True
    subparsers._jcw_lab_commands = commands  # type: ignore[attr-defined]
    return commands


def register(subparsers: argparse._SubParsersAction) -> None:
    commands = lab_commands(subparsers)
    serve = commands.add_parser(
        "serve", help="serve this host's phones to the lab's Ray cluster until Ctrl-C",
        description="Identify this host's phones, start this host's Ray node advertising each as a resource "
                    "phone:<serial> (joining --address, or as the head with --head), and serve until Ctrl-C.")
    where = serve.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", metavar="HOST:PORT", help="the head of the lab's Ray cluster")
    where.add_argument("--head", action="store_true", help="be the head (`ray start --head`) as well")
    serve.add_argument("--port", type=int_between(1, 65535), default=6379, help="--head: the cluster's port")
    serve.add_argument("--device", action="append", default=None, metavar="PHONE",
                       help="a phone attached here (repeatable, or all; default: all, none for --head)")
    serve.add_argument("--num-cpus", type=int_between(0, 1024), default=1,
                       help="CPUs this host lends the cluster (the phone actors need none; default 1)")
    serve.set_defaults(handler=cmd_serve)

    prof = commands.add_parser("profile", help="profile every phone of the lab in parallel",
                               description="`jcw profile` on every phone at once; a rerun measures only what is "
                                           "missing on each.")
    _add_lab_args(prof)
    _add_profile_args(prof)
    prof.set_defaults(handler=cmd_lab_profile)

    meas = commands.add_parser("measure", help="a table of programs' latency on every phone of the lab",
                               description="Time .pte (or .jcwnet) files on every phone at once: one row per "
                                           "phone, latency_ms (fastest repetition of the fastest round) per file.")
    _add_lab_args(meas)
    _add_measure_args(meas)
    meas.set_defaults(handler=cmd_lab_measure)

    stat = commands.add_parser("status", help="hosts, phones, what runs where and its progress",
                               description="The lab's Ray cluster: hosts, the phones each serves, each job.")
    stat.add_argument("--address", required=True, metavar="HOST:PORT", help="the lab's Ray cluster")
    stat.add_argument("--json", action="store_true", help="print the status as one JSON object")
    stat.set_defaults(handler=cmd_status)


# ---- the phones a command names -------------------------------------------------------------------
def _phones(args: argparse.Namespace, command: str) -> list[lab.PhoneId]:
    requested = args.device or ["all"]
    if getattr(args, "address", None):
        lab_ray = _ray(command)
        lab_ray.connect(args.address)
        return lab_ray.resolve(requested)
    return lab.identify_all(lab.expand_devices(requested))


def _run(args: argparse.Namespace, jobs: list[PhoneJob], what: str) -> list[PhoneOutcome]:
    display = RichDisplay(what)
    reconnects = getattr(args, "reconnects", lab.DEFAULT_RECONNECTS)  # `jcw profile --device all` has no flag
    if getattr(args, "address", None):
        return _ray("profile").run_cluster(jobs, display=display, reconnects=reconnects)
    return lab.run_lab(jobs, display=display, reconnects=reconnects)


def _console() -> Console:
    """Piped output (logs, CI) would otherwise be cut to 80 columns and truncate the table."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _report_failures(command: str, outcomes: list[PhoneOutcome], phones: dict[str, lab.PhoneId]) -> int:
    failed = [o for o in outcomes if o.state != "done"]
    for outcome in failed:
        if outcome.detail:
            print(outcome.detail, file=sys.stderr)  # an error no stage phrased: a bug, and this is its report
        phone = phones[outcome.serial]
        print(f"jcw {command}: {phone.model} {phone.serial} ({phone.address}) failed after {outcome.attempts} "
              f"attempt(s): {outcome.error}; the other phones went on, and rerunning measures only what is "
              f"missing.", file=sys.stderr)
    return EXIT_DEVICE if failed else 0


# ---- profile --------------------------------------------------------------------------------------
def profile_options(args: argparse.Namespace) -> dict[str, Any]:
    """session.profile's keyword arguments from `jcw profile`'s or `jcw lab profile`'s flags."""
    try:
        runner_argv = cli._runner_argv(args.runner_arg)
    except cli._BadRunnerArg as exc:
        raise LabUsageError(str(exc)) from None
    absent = program_export.export_modules_missing()
    if absent and (args.programs or args.sparse_programs):
        raise LabUsageError(f"--programs: {program_export.export_unavailable_sentence(absent)}, or pass "
                            f"--programs 0 to profile layers only.")
    return {"budget": args.budget or plans.DEFAULT_BUDGET, "seed": args.seed, "threads": args.threads,
            "rounds": args.rounds, "holdout": args.holdout, "unseen": args.unseen,
            "programs": session.DEFAULT_PROGRAMS if args.programs is None else args.programs,
            "program_sizes": args.program_sizes, "runner_args": runner_argv, "weights": args.weights,
            "settle_cap": args.settle_cap, "sparse_programs": cli._sparse_programs(args)}


def profile_lab(args: argparse.Namespace, command: str = "lab profile") -> int:
    """Every named phone profiled at once into `--out/<model>-<serial>`; the per-phone summary table."""
    for flag, value in (("--adaptive", getattr(args, "adaptive", False)), ("--prior", getattr(args, "prior", [])),
                        ("--csv", getattr(args, "csv", None))):
        if value:
            raise LabUsageError(f"{flag} profiles one phone at a time; run `jcw profile {flag} ...` per phone, "
                                f"or leave it out for the lab.")
    check_output_dir(args.out, "--out")
    root = Path(args.out).resolve()  # actors on other hosts see the shared path, not this one's cwd
    options = profile_options(args)
    phones = _phones(args, "profile")
    jobs = lab.profile_jobs(phones, root, options)
    outcomes = _run(args, jobs, "configs")
    table = Table(title=f"lab profile {args.out}: {len(phones)} phones")
    for column in ("phone", "serial", "state", "attempts", "planned", "measured", "new this run", "failures",
                   "wall s", "profile"):
        table.add_column(column, justify="left" if column in ("phone", "serial", "state", "profile") else "right")
    all_failed = False
    for job, outcome in zip(jobs, outcomes):
        summary = outcome.result or {}
        all_failed |= bool(summary.get("all_failed"))
        table.add_row(job.phone.model, job.phone.serial, outcome.state, str(outcome.attempts),
                      *(str(summary.get(k, "")) for k in ("configurations", "measured", "new_results", "failures")),
                      f"{outcome.seconds:.1f}", str(Path(args.out) / job.phone.dir_name))
    _console().print(table)
    status = _report_failures(command, outcomes, {p.serial: p for p in phones})
    return status or (EXIT_RESULTS_FAILED if all_failed else 0)


def cmd_lab_profile(args: argparse.Namespace) -> int:
    return profile_lab(args)


# ---- measure --------------------------------------------------------------------------------------
def measure_lab(args: argparse.Namespace, command: str = "lab measure") -> int:
    """Each program on every named phone at once: a phone x program latency table (or JSON lines)."""
    key = "net" if args.net else "pte"
    paths = args.net or args.pte
    for path in paths:  # before connecting to anything: one sentence for a file that is not a program
        program_measure.PROGRAM_FILES[key](path)
    try:
        runner_argv = cli._runner_argv(args.runner_arg)
    except cli._BadRunnerArg as exc:
        raise LabUsageError(str(exc)) from None
    phones = _phones(args, "measure")
    options: dict[str, Any] = {"key": key, "threads": args.threads, "rounds": args.rounds, "runner_args": runner_argv}
    if getattr(args, "address", None):  # a phone's host may not see this disk: the files travel with the job
        options["blobs"] = _ray("measure").program_blobs(paths)
    else:
        options["paths"] = [str(Path(p).resolve()) for p in paths]
    jobs = [PhoneJob(phone, "measure", options=dict(options)) for phone in phones]
    outcomes = _run(args, jobs, "runs")
    if args.json:
        for job, outcome in zip(jobs, outcomes):
            for given, result in zip(paths, outcome.result or []):
                print(json.dumps({**result, key: given, "serial": job.phone.serial, "model": job.phone.model,
                                  "device": job.phone.address}), flush=True)
    else:
        table = Table(title=f"latency ms on {len(phones)} phones (fastest repetition of the fastest round)")
        for column in ("phone", "serial", *(Path(p).name for p in paths), "state"):
            table.add_column(column, justify="left" if column in ("phone", "serial", "state") else "right")
        for job, outcome in zip(jobs, outcomes):
            latencies = [f"{r['latency_ms']:.3f}" for r in outcome.result or []] or [""] * len(paths)
            table.add_row(job.phone.model, job.phone.serial, *latencies, outcome.state)
        _console().print(table)
    return _report_failures(command, outcomes, {p.serial: p for p in phones})


def cmd_lab_measure(args: argparse.Namespace) -> int:
    return measure_lab(args)


# ---- serve and status -----------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    lab_ray = _ray("serve")
    requested = args.device or ([] if args.head else ["all"])  # a head may serve no phone of its own
    phones = lab.identify_all(lab.expand_devices(requested)) if requested else []
    console = Console(stderr=True)

    def ready(cluster: str) -> None:
        console.print(f"serving {len(phones)} phone(s) to the lab at {cluster}: "
                      f"{', '.join(f'{p.model} {p.serial} ({p.address})' for p in phones)}; Ctrl-C to stop",
                      highlight=False)
    status = lab_ray.serve(None if args.head else args.address, phones, head_port=args.port,
                           num_cpus=args.num_cpus, on_ready=ready)
    if status:
        raise lab.LabUnreachable(f"this host's Ray node ended with exit status {status}.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    lab_ray = _ray("status")
    lab_ray.connect(args.address)
    state = lab_ray.status()
    if args.json:
        print(json.dumps(state, default=str))
        return 0
    console = _console()
    hosts = Table(title=f"lab at {args.address}: hosts")
    for column in ("node", "ip", "role", "alive", "phones"):
        hosts.add_column(column)
    for host in state["hosts"]:
        hosts.add_row(host["node_id"][:12], host["ip"], "head" if host["head"] else "worker",
                      "yes" if host["alive"] else "no", ", ".join(host["phones"]) or "-")
    console.print(hosts)
    phones = Table(title="phones and their jobs")
    for column in ("serial", "model", "address", "served by node", "job", "state", "ran on node", "progress",
                   "what"):
        phones.add_column(column)
    for serial in sorted(set(state["phones"]) | set(state["jobs"])):
        phone, job = state["phones"].get(serial, {}), state["jobs"].get(serial, {})
        progress = f"{job['done']}/{job['total']}" if job.get("total") else ""
        phones.add_row(serial, phone.get("model", "(host gone)"), phone.get("address", ""),
                       str(phone.get("node_id", ""))[:12], job.get("kind", ""), job.get("state", "idle"),
                       f"{job.get('host', '')} {str(job.get('node_id', ''))[:12]}".strip(), progress,
                       job.get("error") or job.get("what", ""))
    console.print(phones)
    return 0
