"""Whole ExecuTorch programs on a device: the program phase of `jcw profile` (plan, export each program once
on the host through profiler.program_export, time it round by round between the layer rounds, commit each
result as it arrives), plus the .pte file check and thread defaults; timing given files (`jcw measure
--pte/--net`) is profiler.program_measure's.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from jcw.android_harness.device import Device, DeviceDisconnected, DeviceError
from jcw.profiler import program_export, programs
from jcw.profiler.batches import SystematicFailure, common_error, run_lines, same_failure
from jcw.profiler.store import ProfileStore

RUNTIME = "executorch"
#: ExecuTorch flatbuffer files carry this file identifier at bytes 4..8 (after the root table offset).
PTE_MAGIC = b"ET12"
#: The extended header that follows it: magic, length, program size, segment base offset, segment size.
PTE_EXTENDED_MAGIC = b"eh00"
PROGRAM_DIR = "programs"
#: Held-out and unseen programs per training program, and their floor.
PROGRAM_EVAL_SHARE = 3
#: One operator-family program (profiler/operator_families) per this many zoo training programs: with them
#: the program model prices concatenations, standalone activations and large linear layers from networks
#: that carry them. At 40 zoo programs, unseen-architecture programs within ±10% (mean of 10 draws): 57% with
#: none, 90% with 13, 94% with 40 (benchmarks/RESULTS.md, issue 9); they are small and cheap to measure.
OPERATOR_SHARE = 1
MIN_EVAL_PROGRAMS = 10
FIRST_PROGRAM_BATCH = 2
MAX_PROGRAM_BATCH = 16
TARGET_PROGRAM_BATCH_SECONDS = 3.0
#: Training programs a profile may plan at most (held-out and unseen ones come on top): each is a .pte
#: file of up to ~100 MB and minutes of host export.
MAX_PROGRAMS = 1000

Progress = Callable[[int, int, dict[str, Any]], None]


#: Layer-runner timing flags the .pte runner takes too: `jcw profile --runner-arg` passes only these on.
SHARED_RUNNER_FLAGS = ("--warmup", "--min-reps", "--min-time-ms", "--max-reps", "--max-time-ms")


def shared_runner_args(runner_args: Iterable[str]) -> list[str]:
    """The timing flags of layer-runner arguments that mean the same to the .pte runner (others dropped)."""
    tokens, out = [str(a) for a in runner_args], []
    i = 0
    while i < len(tokens):
        name, sep, _ = tokens[i].partition("=")
        takes_value = not sep and i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
        if name in SHARED_RUNNER_FLAGS:
            out.extend(tokens[i:i + 2] if takes_value else tokens[i:i + 1])
        i += 2 if takes_value else 1
    return out


class PteError(DeviceError):
    """A .pte (or jcw network file) cannot be measured: missing, not that kind of file, truncated or damaged,
    or refused by the runner."""


class ProgramsUnavailable(Exception):
    """Whole programs cannot be measured here (no torch/executorch, or a device without the .pte runner)."""


def operator_count(n_train: int) -> int:
    """Operator-family training programs measured beside `--programs N` zoo training programs."""
    return max(0, n_train) // OPERATOR_SHARE if OPERATOR_SHARE else 0


def program_counts(n_train: int) -> tuple[int, int, int]:
    """(train, holdout, unseen) programs for `--programs N`: N/3 held out and N/3 unseen, at least 10 each."""
    if n_train <= 0:
        return 0, 0, 0
    extra = max(MIN_EVAL_PROGRAMS, n_train // PROGRAM_EVAL_SHARE)
    return n_train, extra, extra


def check_pte(path: str | os.PathLike[str]) -> Path:
    """The path of a readable, complete ExecuTorch program; PteError (one sentence) otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        raise PteError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise PteError(f"{path} is a directory, not an ExecuTorch program (.pte)") from None
    except OSError as exc:
        from jcw.profiler.cliargs import os_error_reason, short_path
        raise PteError(f"cannot read {short_path(path)}: {os_error_reason(exc)}") from None
    if len(head) < 8 or head[4:8] != PTE_MAGIC:
        raise PteError(f"{path} is not an ExecuTorch program (.pte): it lacks the ET12 identifier at bytes 4-8")
    if head[8:12] == PTE_EXTENDED_MAGIC and len(head) >= 32:
        program_size = int.from_bytes(head[16:24], "little")
        segment_base = int.from_bytes(head[24:32], "little")
        header_length = int.from_bytes(head[12:16], "little")
        segment_size = int.from_bytes(head[32:40], "little") if header_length > 24 and len(head) >= 40 else 0
        needed = max(program_size, segment_base + segment_size if segment_base else 0)
        if size < needed:
            raise PteError(f"{path} is truncated: {size} bytes where its header announces {needed}")
    return path


# ---- thread counts and runner headers ----------------------------------------------------------
def program_runner_header(device: Device) -> tuple[dict[str, Any] | None, str | None]:
    """(the .pte runner's header on this device, None) or (None, one sentence why it cannot run programs)."""
    info = getattr(device, "program_runner_info", None)
    if info is None:
        return None, f"{device.address} cannot run whole programs (this harness has no .pte runner for it)"
    try:
        return info(), None
    except DeviceDisconnected:
        raise
    except DeviceError as exc:
        return None, f"whole programs cannot be measured on {device.address}: {str(exc).rstrip('.')}"


def default_threads(device: Device, program_header: dict[str, Any] | None) -> int:
    """The threads ExecuTorch uses on this device by default: the .pte runner's `default_threads`,
    else the layer runner's, else 1."""
    for header in (program_header, None):
        if header is None:
            try:
                header = device.runner_info()
            except DeviceDisconnected:
                raise
            except DeviceError:
                continue
        value = header.get("default_threads")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return 1


# ---- the program phase of `jcw profile` --------------------------------------------------------
class ProgramPhase:
    """Plan, export and measure a profile's whole programs. Every result is committed as it arrives;
    a rerun exports only missing files and measures only missing (program, round) results."""

    def __init__(self, device: Device, store: ProfileStore, *, threads: int, rounds: int, seed: int,
                 runner_args: list[str], summary: Any, report: Callable[..., None],
                 resolutions: Iterable[int] | None = None, runtimes: Iterable[str] = (RUNTIME,)) -> None:
        self.device, self.store, self.threads, self.rounds, self.seed = device, store, threads, rounds, seed
        # the runtimes this run measures: "sparse" only on a device whose runner has the network engine
        self.runtimes = tuple(runtimes)
        self.resolutions = tuple(resolutions) if resolutions else None
        self.runner_args, self.summary, self.report = runner_args, summary, report
        self.directory = store.directory / PROGRAM_DIR
        self.batch_size = FIRST_PROGRAM_BATCH
        # Failures are held back until this run has seen one success: identical ones before that are the
        # setup's (SystematicFailure), not the programs', and are never stored.
        self._held: list[tuple[str, int, dict[str, Any], int]] = []
        self._measured_any = False

    def plan(self, n_train: int, n_sparse: int = 0) -> None:
        """Plan `n_train` ExecuTorch training programs (and their held-out, unseen and operator-family ones)
        and, on a run measuring the sparse runtime, `n_sparse` sparse-engine ones (and their held-out ones)."""
        from jcw.profiler import program_zoo, sparse_programs
        train, holdout, unseen = program_counts(n_train)
        entries = program_zoo.program_plan(train, holdout, unseen, self.seed, resolutions=self.resolutions,
                                           n_operator=operator_count(train))
        self.store.add_programs((spec, sample, self.threads) for spec, sample in entries)
        if n_sparse and sparse_programs.RUNTIME in self.runtimes:
            sparse = sparse_programs.sparse_plan(*sparse_programs.sparse_counts(n_sparse), self.seed,
                                                 resolutions=self.resolutions)
            self.store.add_programs(((spec, sample, self.threads) for spec, sample in sparse),
                                    runtime=sparse_programs.RUNTIME)

    def runnable(self, row: dict[str, Any]) -> bool:
        """Whether this run measures the program (its runtime was asked for and the device runs it)."""
        return row["runtime"] in self.runtimes

    def path(self, row: dict[str, Any]) -> Path:
        """The exported file of a planned program: named by the spec alone, since the thread count is a
        runtime setting, so a profile of the same programs at another thread count reuses the exports;
        .pte for ExecuTorch, .jcwnet for the sparse engine."""
        suffix = ".pte" if row["runtime"] == RUNTIME else ".jcwnet"
        return self.directory / (programs.program_id(row["spec"]) + suffix)

    def work_done(self) -> tuple[int, int]:
        """(done, total) units: one export and `rounds` results per program this device runs."""
        rows = [r for r in self.store.programs() if self.runnable(r)]
        pending = [{r["program_id"] for r in self.store.pending_programs(i)} for i in range(self.rounds)]
        exported = sum(1 for r in rows if self.path(r).exists()
                       or not any(r["program_id"] in p for p in pending))  # a failed export counts as done
        measured = sum(len(rows) - len({r["program_id"] for r in rows} & p) for p in pending)
        return exported + measured, len(rows) * (1 + self.rounds)

    def export_missing(self) -> None:
        """Export every planned program still to measure that has no .pte file yet (temp file + rename:
        Ctrl-C loses nothing finished)."""
        pending = {r["program_id"] for i in range(self.rounds) for r in self.store.pending_programs(i)}
        missing = [r for r in self.store.programs()
                   if r["program_id"] in pending and self.runnable(r) and not self.path(r).exists()]
        if not missing:
            return
        absent = program_export.export_modules_missing()
        if absent:
            raise ProgramsUnavailable(program_export.export_unavailable_sentence(absent))
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProgramsUnavailable(f"cannot create {self.directory}: {exc.strerror or exc}") from None
        for stale in [*self.directory.glob(".*.tmp.pte"), *self.directory.glob(".*.tmp.jcwnet*")]:
            stale.unlink(missing_ok=True)  # left by an export that Ctrl-C cut short
        jobs = []
        for row in missing:
            final = self.path(row)
            jobs.append((row, final.with_name(f".{final.stem}.{os.getpid()}.tmp{final.suffix}"), final))
        results = program_export.exported(jobs)
        held: list[tuple[dict[str, Any], str]] = []  # export failures before the first success of this run
        exported_any = False
        try:
            while True:
                try:
                    (row, temp, final), built = next(results)
                except StopIteration:
                    break
                except OSError as exc:
                    raise ProgramsUnavailable(f"cannot write the exported programs in {self.directory}: "
                                              f"{exc.strerror or exc}") from None
                if "error" in built:
                    if exported_any:
                        self._fail_export(row, built["error"])
                        continue
                    held.append((row, built["error"]))
                    if same_failure([reason for _, reason in held]):
                        raise SystematicFailure(
                            f"the host export of every program so far failed the same way, so the fault is not the "
                            f"programs' and the run stopped: {common_error([r for _, r in held])}; those failures "
                            f"were not stored, so rerunning once this is fixed exports them")
                    continue
                if not exported_any:
                    exported_any = True
                    for failed, reason in held:
                        self._fail_export(failed, reason)
                    held = []
                self.store.set_program_export(row["program_id"], built.get("partitions"),
                                              built.get("undelegated_ops"))
                os.replace(temp, final)
                self.summary.programs_exported += 1
                self.report(1, phase="export")
        finally:
            results.close()
        for failed, reason in held:  # too few, or too different, to be the setup's
            self._fail_export(failed, reason)

    def _fail_export(self, row: dict[str, Any], reason: str) -> None:
        """An export error stands for every round still to measure (like a runner error for a layer)."""
        batch = self.store.next_batch_number()
        recorded = 0
        for round_index in range(self.rounds):
            if row["program_id"] in {r["program_id"] for r in self.store.pending_programs(round_index)}:
                self.store.record_program(row["program_id"], round_index,
                                          {"error": f"host export failed: {reason}"}, batch)
                self.summary.program_new_failures += 1
                recorded += 1
        self.report(1 + recorded, phase="export")

    def run_rounds(self) -> None:
        for round_index in range(self.rounds):
            self.run_round(round_index)

    def run_round(self, round_index: int) -> None:
        """Measure every exported program still missing a result in this round, reshuffled."""
        pending = [r for r in self.store.pending_programs(round_index) if self.runnable(r) and self.path(r).exists()]
        random.Random(f"programs:{self.seed}:{round_index}:{len(pending)}").shuffle(pending)
        while pending:
            batch, pending = pending[:self.batch_size], pending[self.batch_size:]
            self.run_batch(batch, round_index)
        self._store_held()  # too few, or too different, to be the setup's: the programs' own failures

    def _store_held(self) -> None:
        for program_id, round_index, result, batch_number in self._held:
            self.store.record_program(program_id, round_index, result, batch_number)
            self.summary.program_new_failures += 1
            self.report(1, phase="programs", round=round_index, batch=batch_number)
        self._held = []

    def _failed(self, row: dict[str, Any], round_index: int, result: dict[str, Any], batch_number: int) -> None:
        """A program's error result: stored at once after a success this run, else held back (and the run
        stopped when SYSTEMATIC_FAILURES of them say the same thing)."""
        if self._measured_any:
            self._held.append((row["program_id"], round_index, result, batch_number))
            self._store_held()
            return
        self._held.append((row["program_id"], round_index, result, batch_number))
        messages = [str(r["error"]) for _, _, r, _ in self._held]
        if same_failure(messages):
            raise SystematicFailure(
                f"every program timed so far failed the same way on {self.device.address}, so the fault is not the "
                f"programs' and the run stopped: {common_error(messages)}; those failures were not stored, so "
                f"rerunning once this is fixed measures them")

    def run_batch(self, rows: list[dict[str, Any]], round_index: int) -> None:
        batch_number = self.store.next_batch_number()
        by_id = {f"g{row['position']}": row for row in rows}
        lines = [{"id": line_id, "pte" if row["runtime"] == RUNTIME else "net": str(self.path(row).resolve()),
                  "threads": self.threads} for line_id, row in by_id.items()]
        started = time.monotonic()
        try:
            for result in run_lines(self.device, lines, self.runner_args, self.summary, run=self.device.run_programs):
                row = by_id.get(str(result.get("id")))
                if row is None:
                    continue
                if result.get("error") is not None:
                    self._failed(row, round_index, result, batch_number)
                    continue
                self.store.record_program(row["program_id"], round_index, result, batch_number)
                self.summary.program_new_results += 1
                self.summary.timed_seconds += float(result.get("timed_us") or 0.0) / 1e6
                self.report(1, phase="programs", round=round_index, batch=batch_number)
                if not self._measured_any:
                    self._measured_any = True
                    self._store_held()
        finally:
            elapsed = time.monotonic() - started
            self.summary.device_seconds += elapsed
        self.summary.batches += 1
        self.batch_size = max(1, min(MAX_PROGRAM_BATCH,
                                     int(TARGET_PROGRAM_BATCH_SECONDS * len(lines) / max(elapsed, 1e-3))))


def _guarded(phase: ProgramPhase, step: Callable[[], None]) -> str | None:
    try:
        step()
    except ProgramsUnavailable as exc:
        return str(exc)
    except (DeviceDisconnected, SystematicFailure):
        raise
    except DeviceError as exc:
        return f"whole programs were not measured on {phase.device.address}: {str(exc).rstrip('.')}"
    return None


def plan_programs(phase: ProgramPhase, n_train: int, n_sparse: int = 0) -> str | None:
    """Add the profile's programs to the store; one sentence if the program plan is unavailable here."""
    def step() -> None:
        try:
            phase.plan(n_train, n_sparse)
        except ImportError as exc:
            raise ProgramsUnavailable(f"whole programs cannot be planned on this host ({exc})") from None
    return _guarded(phase, step)


def export_programs(phase: ProgramPhase) -> str | None:
    """Export the planned programs still to measure; one sentence when programs cannot be measured here."""
    return _guarded(phase, phase.export_missing)


def run_program_round(phase: ProgramPhase, round_index: int) -> str | None:
    """Measure one round of the exported programs (profile.session runs it after the layers' round of the same
    index); one sentence when programs cannot be measured here."""
    return _guarded(phase, lambda: phase.run_round(round_index))


def run_program_phase(phase: ProgramPhase) -> str | None:
    """Export and measure the planned programs; returns one sentence when programs cannot be measured
    here (the layer profile is untouched), None otherwise. A dropped connection propagates: resumable."""
    def step() -> None:
        phase.export_missing()
        phase.run_rounds()
    return _guarded(phase, step)
