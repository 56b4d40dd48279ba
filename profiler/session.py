"""Running a plan on a device: batches, rounds, drift references, crash recovery, resume.

Owns `profile(...)` (the engine behind `jcw profile`: layers, each round followed by that round of the whole
programs, profiler.program_session) and `measure(...)` (behind `jcw measure --layers`); `measure_programs`
(behind `jcw measure --pte/--net`, profiler.program_measure) is re-exported here. Every result is committed
to the store the moment the runner reports it; a rerun of the same command measures only what is missing.
"""
from __future__ import annotations

import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from jcw.android_harness.device import Device, DeviceDisconnected
from jcw.profiler import acquisition, labels, plans, profile_checks, program_session
from jcw.profiler.batches import CRASHES_BEFORE_ERROR, SystematicFailure, common_error, run_lines  # noqa: F401  (re-exported)
from jcw.profiler.layerspec import LayerSpec
from jcw.profiler.profile_lock import profile_lock
from jcw.profiler.profile_params import (  # noqa: F401  (re-exported: the command line and tests read them here)
    DEFAULT_PROGRAMS,
    DEFAULT_ROUNDS,
    MAX_BUDGET,
    MAX_PROGRAMS,
    MAX_ROUNDS,
    ProfileParams,
    ProfileParamsError,
    ProfileSummary,
)
from jcw.profiler.program_measure import measure_programs  # noqa: F401  (re-exported)
from jcw.profiler.program_session import PteError  # noqa: F401  (re-exported)
from jcw.profiler.sparse_programs import runtimes_to_measure
from jcw.profiler.store import DB_NAME, ROUND_STATISTIC, ProfileStore

# Repeatability methodology: every configuration is timed in `rounds` full passes over the plan,
# reshuffled per round, so its rounds are minutes apart and meet different moments of load or heat;
# a reference layer brackets every batch, and a batch whose reference strays from the running median
# is flagged and re-measured once; the store aggregates the clean rounds (see store.ROUND_*);
# DEFAULT_ROUNDS (profiler.profile_params) of them unless told otherwise.
#: Device seconds per batch: long enough that a phone's ADB round trip is a small share.
TARGET_BATCH_SECONDS = 3.0
FIRST_BATCH_LINES = 8
MAX_BATCH_LINES = 400
#: A batch is flagged when a reference bracketing it deviates this much from the running median.
DRIFT_THRESHOLD = 0.10
#: The reference layer (ResNet-18 layer1 conv, dense), timed at the start and end of every batch.
REFERENCE_LAYER = LayerSpec(op="conv", cin=64, cout=64, k=3, h=56, w=56, stride=1)
ADAPTIVE_STEPS = 4
ADAPTIVE_POOL_FACTOR = 8

Progress = Callable[[int, int, dict[str, Any]], None]


def _plan_line(row: dict[str, Any], line_id: str) -> dict[str, Any]:
    spec = LayerSpec.from_dict(row)
    return {"id": line_id, **spec.to_dict(), "impl": row["impl"], "threads": int(row["threads"])}


# ---- the profile engine ------------------------------------------------------------------------
class _Session:
    def __init__(self, device: Device, store: ProfileStore, params: ProfileParams, runner_args: list[str],
                 progress: Progress | None, summary: ProfileSummary) -> None:
        self.device, self.store, self.params = device, store, params
        self.runner_args, self.progress, self.summary = runner_args, progress, summary
        self.batch_lines = FIRST_BATCH_LINES
        self.done = 0
        self.program_total = 0  # work units of the program phase: one export and `rounds` results each
        self.plan_changed()

    def plan_changed(self) -> None:
        """Recount the work after the plan grew (counting per result would rescan the plan each time)."""
        self.total = len(self.store.plan()) * self.params.rounds + self.program_total

    def report(self, **info: Any) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total, info)

    def advance(self, units: int, **info: Any) -> None:
        self.done += units
        self.report(**info)

    def run_round(self, round_index: int, rows: list[dict[str, Any]] | None = None) -> None:
        """Measure this round of `rows` (default: every configuration still missing it)."""
        pending = self.store.pending(round_index) if rows is None else list(rows)
        random.Random(f"{self.params.seed}:{round_index}:{len(pending)}").shuffle(pending)
        requeued: set[str] = set()
        while pending:
            batch, pending = pending[:self.batch_lines], pending[self.batch_lines:]
            drifted = self.run_batch(batch, round_index, already_counted=requeued)
            if drifted:
                again = [row for row in batch if row["config_id"] not in requeued]
                requeued.update(row["config_id"] for row in again)
                self.summary.requeued += len(again)
                pending.extend(again)

    def run_batch(self, rows: list[dict[str, Any]], round_index: int,
                  already_counted: set[str] = frozenset()) -> bool:
        """Measure rows between two reference timings; returns whether the batch drifted."""
        batch_number = self.store.next_batch_number()
        threads = self.params.threads
        reference = {"id": "ref", **REFERENCE_LAYER.to_dict(), "impl": "dense", "threads": threads}
        by_id = {f"p{row['position']}": row for row in rows}
        lines = ([{**reference, "id": "ref-start"}] + [_plan_line(row, i) for i, row in by_id.items()]
                 + [{**reference, "id": "ref-end"}])
        references = []
        held: list[tuple[dict[str, Any], dict[str, Any]]] = []  # error results, stored once the batch ends
        reference_errors: list[str] = []
        measured_any = False
        started = time.monotonic()
        try:
            for result in run_lines(self.device, lines, self.runner_args, self.summary):
                line_id = str(result.get("id"))
                if line_id.startswith("ref-"):
                    if result.get("error") is None:
                        self.store.record_reference(batch_number, result)
                        references.append(result[ROUND_STATISTIC])
                        measured_any = True
                    else:
                        reference_errors.append(str(result["error"]))
                    continue
                row = by_id.get(line_id)
                if row is None:
                    continue
                if result.get("error") is not None:
                    held.append((row, result))
                    continue
                measured_any = True
                self.store.record(row["config_id"], round_index, result, batch_number)
                self.summary.new_results += 1
                self.summary.timed_seconds += float(result.get("timed_us") or 0.0) / 1e6
                self.done += row["config_id"] not in already_counted
                self.report(round=round_index, batch=batch_number)
        finally:
            elapsed = time.monotonic() - started
            self.summary.device_seconds += elapsed
        if held or reference_errors:
            messages = reference_errors + [str(result["error"]) for _, result in held]
            if not measured_any and len(messages) >= 2:
                # the reference layer, which always runs, failed too: the fault is not the layers'
                raise SystematicFailure(
                    f"every line of a batch failed on {self.device.address}, the reference layer too, so the "
                    f"fault is not the layers' and the run stopped: {common_error(messages)}; those failures were "
                    f"not stored, so rerunning once this is fixed measures them")
            for row, result in held:  # the layers' own failures: final, like a measurement
                self.store.record(row["config_id"], round_index, result, batch_number)
                self.summary.new_failures += 1
                self.done += row["config_id"] not in already_counted
            self.report(round=round_index, batch=batch_number)
        self.summary.batches += 1
        self.batch_lines = max(2, min(MAX_BATCH_LINES, int(TARGET_BATCH_SECONDS * len(lines) / max(elapsed, 1e-3))))
        deviation = self._deviation(references, batch_number)
        if deviation > DRIFT_THRESHOLD:
            self.store.flag_drift(batch_number, deviation)
            self.summary.drift_batches += 1
            return True
        return False

    def _deviation(self, references: list[float], batch_number: int) -> float:
        """Largest relative deviation of this batch's references from the running median of earlier ones."""
        history = [r[ROUND_STATISTIC] for r in self.store.references()
                   if r["batch"] != batch_number and r[ROUND_STATISTIC] is not None]
        baseline_values = history[-50:] if len(history) >= 3 else history + references
        if not references or not baseline_values:
            return 0.0
        baseline = statistics.median(baseline_values)
        return max(abs(value / baseline - 1.0) for value in references)

    def run_all_rounds(self, after_round: Callable[[int], None] | None = None) -> None:
        for round_index in range(self.params.rounds):
            self.run_round(round_index)
            if after_round is not None:
                after_round(round_index)

    def adapt(self, chooser: acquisition.Chooser, target: int) -> None:
        """Spend `target` configurations in ADAPTIVE_STEPS steps on what the plug-in chooses."""
        step = max(1, math.ceil(target / ADAPTIVE_STEPS))
        threads = self.params.threads
        while (have := len(self.store.plan("adaptive"))) < target:
            n = min(step, target - have)
            known = {LayerSpec.from_dict(row).key() for row in self.store.plan()}
            pool = plans.candidate_pool(self.params.seed * 1000 + have, ADAPTIVE_POOL_FACTOR * n, known,
                                        plan_seed=self.params.seed)
            candidates = [{**spec.to_dict(), "impl": impl, "threads": threads}
                          for spec in pool for impl in plans.layer_impls(spec)]
            measured = [m for m in self.store.measurements() if m["sample"] not in plans.HELD_OUT_SAMPLES]
            picked = acquisition.choose(chooser, candidates, measured, n, self.params.seed * 1000 + have)
            if not picked:
                break
            entries = [(LayerSpec.from_dict(candidates[i]), candidates[i]["impl"], threads, "adaptive")
                       for i in picked]
            self.store.add_plan(entries)
            self.plan_changed()
            self.report(phase="adaptive")
            self.run_all_rounds()


def adaptive_target(plan: plans.Plan, adaptive_layers: int) -> int:
    """Configurations the adaptive phase adds: its layers at the base plan's configs-per-layer."""
    base_layers = max(1, len(plan.training))
    base_configs = sum(len(plans.layer_impls(s)) for s in plan.training)
    return int(round(adaptive_layers * base_configs / base_layers))


def profile(device: Device | str, out_dir: str | Path, *, budget: int = plans.DEFAULT_BUDGET, seed: int = 0,
            threads: int | None = 1, rounds: int = DEFAULT_ROUNDS, adaptive: bool = False,
            holdout: int | None = None, programs: int = 0, program_sizes: Sequence[int] | None = None,
            runner_args: Iterable[str] = (), progress: Progress | None = None, unseen: int | None = None,
            weights: str = labels.DEFAULT_WEIGHTS, cold_bytes: int | None = None,
            settle_cap: int = 0, transfer_priors: Sequence[dict[str, Any]] = (),
            sparse_programs: int = 0) -> ProfileSummary:
    """Plan (or extend) and measure a profile in `out_dir`; resumable by calling it again.

    `device` is a Device or an address ("local", "usb:SERIAL", "tcp:HOST:PORT"). `budget` counts
    training layers (each conv measured dense and sparse, each dwconv dense); a held-out set of
    real-network layers (sample "holdout") is measured too. With `adaptive`, the second half of
    the budget is chosen by the `jcw.acquisition` plug-in. `holdout` overrides the held-out set's
    size (default max(50, budget // 5) layers; 0 for none); `unseen` the size of the second held-out set,
    layers of architectures no plan is drawn from (sample "unseen"; default as many as `holdout`). Besides the
    layers, `programs` whole training programs (plus program_session.program_counts' held-out and unseen
    ones) are exported on the host after the layers' first round and timed as .pte files, each round right
    after the layers' round of the same index; 0 skips them (`jcw profile` defaults to
    DEFAULT_PROGRAMS); `program_sizes` bounds their input resolutions (default 128-224; small sizes keep an
    emulated phone fast) and is fixed when the programs are first planned. `sparse_programs` whole training
    programs for the sparse engine (profiler.sparse_programs, plus their held-out ones) are exported as network
    files and timed in the same rounds; skipped with one sentence (summary.sparse_note) on a device whose
    runner has no engine. `threads` None means ExecuTorch's default on the device (a rerun keeps the
    profile's own count); layers and programs are measured at that count. `transfer_priors` (known devices'
    predictors, {"path", "sha256"}) plan for transfer instead (plans.transfer_plan) and are recorded.
    `weights` (warm or cold) is how the layer runner times, `cold_bytes` the bytes a cold rotation spans (None:
    past the last-level cache; profiler.labels; one profile never mixes either).
    `settle_cap` > 0 adds settle rounds after the layer rounds (labels.settle; `jcw profile` defaults to
    labels.DEFAULT_SETTLE_CAP).
    """
    if isinstance(device, str):
        with open_device(device) as opened:
            return profile(opened, out_dir, budget=budget, seed=seed, threads=threads, rounds=rounds,
                           adaptive=adaptive, holdout=holdout, programs=programs, program_sizes=program_sizes,
                           runner_args=runner_args, progress=progress, unseen=unseen, weights=weights,
                           cold_bytes=cold_bytes, settle_cap=settle_cap, transfer_priors=transfer_priors,
                           sparse_programs=sparse_programs)
    labels.weights_runner_args(weights, cold_bytes)
    runner_args = list(runner_args)
    labels.check_runner_args(runner_args)
    if isinstance(settle_cap, bool) or not isinstance(settle_cap, int) or not 0 <= settle_cap <= labels.MAX_SETTLE_CAP:
        raise ValueError(f"settle_cap must be an integer from 0 to {labels.MAX_SETTLE_CAP}, got {settle_cap!r}")
    params = ProfileParams(budget=budget, seed=seed, threads=1 if threads is None else threads, rounds=rounds,
                           adaptive=adaptive, holdout=holdout, unseen=unseen, transfer=bool(transfer_priors))
    for name, value in (("programs", programs), ("sparse_programs", sparse_programs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if value > MAX_PROGRAMS:
            raise ValueError(f"{name} must be at most {MAX_PROGRAMS}, got {value}")
    out_dir = Path(out_dir)
    chooser = acquisition.load_chooser() if adaptive else None
    with profile_lock(out_dir):  # a second `jcw profile` into the same directory is refused, naming this one
        return _profile_locked(device, out_dir, params, threads=threads, budget=budget, seed=seed, rounds=rounds,
                               adaptive=adaptive, programs=programs, program_sizes=program_sizes,
                               runner_args=runner_args, progress=progress, chooser=chooser, weights=weights,
                               cold_bytes=cold_bytes, settle_cap=settle_cap, transfer_priors=transfer_priors,
                               sparse_programs=sparse_programs)


def check_profile_dir(out_dir: str | Path) -> None:
    """Before connecting to a device: a profile already in `out_dir` opens for writing and is sound
    (StoreDamaged, StoreNotWritable: one sentence); nothing is written."""
    if (Path(out_dir) / DB_NAME).exists():
        with ProfileStore(out_dir, create=True):
            pass


def _profile_locked(device: Device, out_dir: Path, params: ProfileParams, *, threads: int | None, budget: int,
                    seed: int, rounds: int, adaptive: bool, programs: int, program_sizes: Sequence[int] | None,
                    runner_args: Iterable[str],
                    progress: Progress | None, chooser: Any, weights: str, cold_bytes: int | None, settle_cap: int,
                    transfer_priors: Sequence[dict[str, Any]] = (), sparse_programs: int = 0) -> ProfileSummary:
    started = time.monotonic()
    summary = ProfileSummary(out_dir=str(out_dir), rounds=rounds, weights=weights, cold_bytes=cold_bytes,
                             settle_cap=settle_cap)
    with ProfileStore(out_dir, create=True) as store:
        stored = store.get_meta("plan_params")
        header, unavailable = program_session.program_runner_header(device)
        if threads is None:
            threads = stored["threads"] if stored else program_session.default_threads(device, header)
            params = replace(params, threads=threads)
        params = params.merge(stored, out_dir)
        profile_checks.check_device(store, device)
        labels.check_weights(store, weights, store.get_meta("runner") or {}, device.address, cold_bytes)
        sizes = profile_checks.check_programs(store, header, programs, program_sizes, out_dir, sparse_programs)
        base_budget = budget - budget // 2 if adaptive else budget
        plan = plans.transfer_plan(base_budget, seed, holdout=params.holdout, unseen=params.unseen) if params.transfer \
            else plans.make_plan(base_budget, seed, holdout=params.holdout, unseen=params.unseen)
        if transfer_priors:
            store.set_meta("transfer_priors", list(transfer_priors))
        store.add_plan(plan.configurations(threads))
        store.set_meta("plan_params", asdict(params))
        store.set_meta("threads", threads)
        store.set_meta("runtime", program_session.RUNTIME)
        summary.threads = threads
        session = _Session(device, store, params, [*runner_args, *labels.weights_runner_args(weights, cold_bytes)],
                           progress, summary)
        runtimes, summary.sparse_note = runtimes_to_measure(device.address, header, programs, sparse_programs)
        phase = program_session.ProgramPhase(device, store, threads=threads, rounds=rounds, seed=seed,
                                             runner_args=program_session.shared_runner_args(runner_args),
                                             summary=summary, report=session.advance, resolutions=sizes,
                                             runtimes=runtimes)
        session.done = sum(len(store.plan()) - len(store.pending(r)) for r in range(rounds))
        if runtimes:
            summary.programs_note = program_session.plan_programs(phase, programs, sparse_programs)
            program_done, session.program_total = phase.work_done()
            session.done += program_done
            session.plan_changed()
        elif header is None and (programs or sparse_programs):
            summary.programs_note = unavailable
        session.report(phase="start")
        try:
            def programs_round(round_index: int) -> None:
                # Each program round right after the layers' round of the same index: the programs' fastest
                # round then comes from the same minutes as the layers' (a machine that switches between two
                # speeds every minute or so timed every program of a final block slow; benchmarks/RESULTS.md).
                # The export waits for the layers' first round: a runner that cannot run says so at once, not
                # after minutes of export.
                if runtimes and summary.programs_note is None:
                    summary.programs_note = (program_session.export_programs(phase)
                                             or program_session.run_program_round(phase, round_index))
            session.run_all_rounds(after_round=programs_round)
            if chooser is not None:
                session.adapt(chooser, adaptive_target(plan, budget // 2))
            labels.settle(session, settle_cap)
            if runtimes and summary.programs_note is None:  # what a profile resumed past its rounds still lacks
                summary.programs_note = program_session.run_program_phase(phase)
        except DeviceDisconnected as exc:
            raise DeviceDisconnected(
                f"{str(exc).rstrip('.')}; everything measured so far is saved in {out_dir}, rerun the same "
                f"command to resume") from None
        finally:
            summary.wall_seconds = time.monotonic() - started
            _fill_counts(store, summary)
            summary.settle = labels.settle_counts(store, params.rounds)
    return summary


def _fill_counts(store: ProfileStore, summary: ProfileSummary) -> None:
    rows = store.rounds()
    summary.configurations = len(store.plan())
    summary.failures = sum(1 for r in rows if r["error"] is not None)
    summary.measured = len(rows) - summary.failures
    summary.samples = dict(Counter(r["sample"] for r in store.plan()))
    program_rows = store.program_rounds()
    planned = store.programs(runtime=program_session.RUNTIME)
    summary.programs = len(planned)
    summary.program_samples = dict(Counter(r["sample"] for r in planned))
    sparse = store.programs(runtime="sparse")
    summary.sparse_programs = len(sparse)
    summary.sparse_samples = dict(Counter(r["sample"] for r in sparse))
    summary.program_failures = sum(1 for r in program_rows if r["error"] is not None)
    summary.program_measured = len(program_rows) - summary.program_failures


# ---- measuring given layers --------------------------------------------------------------------
def measure(device: Device, specs: list[tuple[str, LayerSpec]], *, impl: str = "both", threads: int = 1,
            runner_args: Iterable[str] = (), progress: Progress | None = None) -> Iterator[dict[str, Any]]:
    """Yield one runner result per (layer, implementation); `both` adds sparse for every conv."""
    if impl not in ("dense", "sparse", "both"):
        raise ValueError(f"impl must be dense, sparse or both, got {impl!r}")
    lines = []
    for layer_id, spec in specs:
        impls = plans.layer_impls(spec) if impl == "both" else (impl,)
        for one in impls:
            lines.append({"id": layer_id, **spec.to_dict(), "impl": one, "threads": threads})
    # ids may repeat across implementations; the runner echoes them, so route by position
    keyed = [{**line, "id": f"{n}"} for n, line in enumerate(lines)]
    for done, result in enumerate(run_lines(device, keyed, runner_args), start=1):
        original = lines[int(result["id"])]
        result = {**result, "id": original["id"]}
        result.setdefault("impl", original["impl"])
        if progress is not None:
            progress(done, len(lines), {})
        yield result


def open_device(address: str) -> Device:
    """Connect through the harness (imported here: the ADB client is not needed for `jcw --help`)."""
    from jcw.android_harness.connect import open_device as harness_open
    return harness_open(address)
