"""What `jcw profile` and `jcw measure` show while they run and after: the live progress bar, the profile's
summary table, and a Ctrl-C that is remembered even where Python must swallow it.
"""
from __future__ import annotations

import io
import signal
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from jcw.profiler import labels
from jcw.profiler.profile_params import ProfileSummary


def _progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("configs"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, transient=False)


def summary_table(summary: ProfileSummary) -> Table:
    table = Table(title=f"profile {summary.out_dir}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    efficiency = summary.timed_seconds / summary.wall_seconds if summary.wall_seconds else 0.0
    samples = ", ".join(f"{k} {v}" for k, v in sorted(summary.samples.items()))
    for what, value in (
            ("configurations planned", f"{summary.configurations} ({samples})"),
            ("rounds per configuration", summary.rounds),
            ("results measured (all rounds)", summary.measured),
            ("failures (all rounds)", summary.failures),
            ("new results this run", summary.new_results),
            ("new failures this run", summary.new_failures),
            ("batches this run", summary.batches),
            ("drift-flagged batches (re-measured once)", f"{summary.drift_batches} ({summary.requeued} configs)"),
            ("runner crashes recovered", summary.runner_crashes),
            ("device time", f"{summary.device_seconds:.1f} s"),
            ("time inside timed kernel runs", f"{summary.timed_seconds:.1f} s ({efficiency:.0%} of wall)"),
            ("wall time", f"{summary.wall_seconds:.1f} s")):
        table.add_row(what, str(value))
    table.add_row("threads (layers and programs)", str(summary.threads))
    rotated = f" (rotating over {labels.rotation(summary.cold_bytes)})" if summary.weights == "cold" else ""
    table.add_row("layer weights", summary.weights + rotated)
    settle = summary.settle
    table.add_row(f"settle results this run (cap {summary.settle_cap})", str(summary.settle_results))
    if settle:  # configurations whose two fastest rounds differ by more than labels.SETTLE_TOLERANCE
        table.add_row("disagreed / re-measured (extra rounds) / still disagree",
                      f"{settle['disagreeing_base']} / {settle['settled_configurations']} "
                      f"({settle['extra_rounds']} rounds) / {settle['still_disagreeing']}")
    planned = [(f"whole programs planned ({name})", count, ", ".join(f"{k} {v}" for k, v in sorted(samples.items())))
               for name, count, samples in (("ExecuTorch", summary.programs, summary.program_samples),
                                            ("sparse engine", summary.sparse_programs, summary.sparse_samples))
               if count]
    if planned:  # the counts below cover both runtimes
        for what, value in ([(what, f"{count} ({samples})") for what, count, samples in planned]
                            + [("program results (all rounds)", summary.program_measured),
                               ("program failures", summary.program_failures),
                               ("programs exported this run", summary.programs_exported),
                               ("new program results this run", summary.program_new_results),
                               ("new program failures this run", summary.program_new_failures)]):
            table.add_row(what, str(value))
    return table


class LazyBar:
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
        if phase in ("adaptive", "export"):
            description = "adaptive" if phase == "adaptive" else "exporting programs"
        elif "round" in info:
            description = f"{'programs ' if phase == 'programs' else ''}round {info['round'] + 1}"
        else:
            description = self.description
        self.bar.update(self.task, completed=done, total=total, description=description)

    def __enter__(self) -> LazyBar:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.task is not None:
            if exc_type is not None:  # the error sentence should stand alone, not under a half-filled bar
                self.bar.live.transient = True
                if not self.bar.console.is_terminal:  # a log would get the bar's final line all the same
                    self.bar.console.file = io.StringIO()
            self.bar.stop()


class CtrlC:
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

    def __enter__(self) -> CtrlC:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
