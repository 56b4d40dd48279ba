"""Running a plan on a device: batches, rounds, drift references, crash recovery, resume.

Owns `profile(...)` (the engine behind `jcw profile`) and `measure(...)` (behind `jcw measure`).
Every result is committed to the store the moment the runner reports it; a rerun of the same
command measures only what is missing.
"""
from __future__ import annotations

import math
import random
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from android_harness.device import Device, DeviceDisconnected, DeviceError, RunnerCrashed
from profiler import acquisition, plans
from profiler.layerspec import LayerSpec
from profiler.store import ROUND_STATISTIC, ProfileStore, StoreError

# Repeatability methodology: every configuration is timed in `rounds` full passes over the plan,
# reshuffled per round, so its rounds are minutes apart and meet different moments of load or heat;
# a reference layer brackets every batch, and a batch whose reference strays from the running median
# is flagged and re-measured once; the store aggregates the clean rounds (see store.ROUND_*).
DEFAULT_ROUNDS = 5
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
CRASHES_BEFORE_ERROR = 2

Progress = Callable[[int, int, dict[str, Any]], None]


class ProfileParamsError(StoreError):
    """A rerun asks for parameters the existing profile cannot be extended to; one sentence."""


@dataclass(frozen=True)
class ProfileParams:
    budget: int = plans.DEFAULT_BUDGET
    seed: int = 0
    threads: int = 1
    rounds: int = DEFAULT_ROUNDS
    adaptive: bool = False
    holdout: int | None = None  # held-out layers; None means plans.holdout_size(budget)

    def __post_init__(self) -> None:
        if self.holdout is None:
            object.__setattr__(self, "holdout", plans.holdout_size(self.budget))
        for name, low in (("budget", 1), ("threads", 1), ("rounds", 1), ("seed", 0), ("holdout", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.holdout > plans.HOLDOUT_POOL:
            raise ValueError(f"holdout must be at most {plans.HOLDOUT_POOL}, got {self.holdout}")

    def merge(self, stored: dict[str, Any] | None, directory: Path) -> "ProfileParams":
        """These parameters against a profile's stored ones: extend when possible, else say what differs."""
        if not stored:
            return self
        def refuse(what: str) -> ProfileParamsError:
            return ProfileParamsError(
                f"profile {directory} was planned with {what}; rerun with the same value to resume or extend it, "
                f"or choose another --out")
        for name in ("seed", "threads"):
            if stored.get(name) != getattr(self, name):
                raise refuse(f"--{name} {stored.get(name)} (you asked for {getattr(self, name)})")
        for name in ("budget", "rounds", "holdout"):
            if getattr(self, name) < stored.get(name, 0):
                raise refuse(f"--{name} {stored.get(name)} and a rerun may raise it but not lower it "
                             f"(you asked for {getattr(self, name)})")
        if stored.get("adaptive") and not self.adaptive:
            raise refuse("--adaptive (you left it out)")
        return self


@dataclass
class ProfileSummary:
    out_dir: str
    configurations: int = 0
    rounds: int = 0
    measured: int = 0           # stored good results, all rounds
    failures: int = 0           # stored error results
    new_results: int = 0        # results reported in this run
    batches: int = 0
    drift_batches: int = 0
    requeued: int = 0
    runner_crashes: int = 0
    device_seconds: float = 0.0  # wall time spent inside the device's batches
    timed_seconds: float = 0.0   # time inside timed kernel runs (runner timed_us)
    wall_seconds: float = 0.0
    samples: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- running plan lines, surviving runner crashes ----------------------------------------------
def run_lines(device: Device, lines: list[dict[str, Any]], runner_args: Iterable[str] = (),
              stats: ProfileSummary | None = None) -> Iterator[dict[str, Any]]:
    """Yield one result per plan line (by id), re-running only unreported lines after a crash.

    A line the runner dies on twice gets an error result instead of a third try; a runner
    that dies on two different lines without ever reporting anything is broken, not the lines.
    """
    remaining = list(lines)
    crashes: Counter[str] = Counter()
    runner_args = [str(a) for a in runner_args]
    reported_any = False
    while remaining:
        reported: set[str] = set()
        reason = ""
        batch = device.run_batch(remaining, runner_args)
        try:
            for result in batch:
                reported.add(str(result.get("id")))
                reported_any = True
                yield result
            crashed = len(reported) < len(remaining)
            reason = "the runner stopped early"
        except RunnerCrashed as exc:
            crashed, reason = True, str(exc).rstrip(".")
        finally:
            close = getattr(batch, "close", None)
            if close:
                close()
        remaining = [line for line in remaining if line["id"] not in reported]
        if not crashed or not remaining:
            return
        if stats is not None:
            stats.runner_crashes += 1
        culprit = remaining[0]["id"]
        crashes[culprit] += 1
        if not reported_any and len(crashes) >= 2:
            raise DeviceError(f"the runner on {device.address} fails before measuring anything: {reason}")
        if crashes[culprit] >= CRASHES_BEFORE_ERROR:
            yield {"id": culprit, "error": f"the runner crashed {crashes[culprit]} times on this line ({reason})"}
            remaining = remaining[1:]


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
        self.plan_changed()

    def plan_changed(self) -> None:
        """Recount the work after the plan grew (counting per result would rescan the plan each time)."""
        self.total = len(self.store.plan()) * self.params.rounds

    def report(self, **info: Any) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total, info)

    def run_round(self, round_index: int) -> None:
        pending = self.store.pending(round_index)
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
        started = time.monotonic()
        try:
            for result in run_lines(self.device, lines, self.runner_args, self.summary):
                line_id = str(result.get("id"))
                if line_id.startswith("ref-"):
                    if result.get("error") is None:
                        self.store.record_reference(batch_number, result)
                        references.append(result[ROUND_STATISTIC])
                    continue
                row = by_id.get(line_id)
                if row is None:
                    continue
                self.store.record(row["config_id"], round_index, result, batch_number)
                self.summary.new_results += 1
                if result.get("error") is None:
                    self.summary.timed_seconds += float(result.get("timed_us") or 0.0) / 1e6
                self.done += row["config_id"] not in already_counted
                self.report(round=round_index, batch=batch_number)
        finally:
            elapsed = time.monotonic() - started
            self.summary.device_seconds += elapsed
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

    def run_all_rounds(self) -> None:
        for round_index in range(self.params.rounds):
            self.run_round(round_index)

    def adapt(self, chooser: acquisition.Chooser, target: int) -> None:
        """Spend `target` configurations in ADAPTIVE_STEPS steps on what the plug-in chooses."""
        step = max(1, math.ceil(target / ADAPTIVE_STEPS))
        threads = self.params.threads
        while (have := len(self.store.plan("adaptive"))) < target:
            n = min(step, target - have)
            known = {LayerSpec.from_dict(row).key() for row in self.store.plan()}
            pool = plans.candidate_pool(self.params.seed * 1000 + have, ADAPTIVE_POOL_FACTOR * n, known)
            candidates = [{**spec.to_dict(), "impl": impl, "threads": threads}
                          for spec in pool for impl in plans.layer_impls(spec)]
            measured = [m for m in self.store.measurements() if m["sample"] != "holdout"]
            picked = acquisition.choose(chooser, candidates, measured, n, self.params.seed * 1000 + have)
            if not picked:
                break
            entries = [(LayerSpec.from_dict(candidates[i]), candidates[i]["impl"], threads, "adaptive")
                       for i in picked]
            self.store.add_plan(entries)
            self.plan_changed()
            self.report(phase="adaptive")
            self.run_all_rounds()


def _check_device(store: ProfileStore, device: Device) -> None:
    stored = store.get_meta("device_address")
    if stored is not None and stored != device.address:
        raise ProfileParamsError(f"profile {store.directory} was measured on {stored}, not {device.address}; "
                                 f"choose another --out for this device")
    runner = device.runner_info()
    old = store.get_meta("runner")
    if old is not None:
        for key in ("version", "xnnpack"):
            if old.get(key) != runner.get(key):
                raise ProfileParamsError(
                    f"profile {store.directory} was measured with runner {key} {old.get(key)}, this runner is "
                    f"{runner.get(key)}; choose another --out")
    else:
        store.set_meta("runner", runner)
    if stored is None:
        store.set_meta("device_address", device.address)
        store.set_meta("device_facts", device.facts())


def adaptive_target(plan: plans.Plan, adaptive_layers: int) -> int:
    """Configurations the adaptive phase adds: its layers at the base plan's configs-per-layer."""
    base_layers = max(1, len(plan.training))
    base_configs = sum(len(plans.layer_impls(s)) for s in plan.training)
    return int(round(adaptive_layers * base_configs / base_layers))


def profile(device: Device | str, out_dir: str | Path, *, budget: int = plans.DEFAULT_BUDGET, seed: int = 0,
            threads: int = 1, rounds: int = DEFAULT_ROUNDS, adaptive: bool = False, holdout: int | None = None,
            runner_args: Iterable[str] = (), progress: Progress | None = None) -> ProfileSummary:
    """Plan (or extend) and measure a profile in `out_dir`; resumable by calling it again.

    `device` is a Device or an address ("local", "usb:SERIAL", "tcp:HOST:PORT"). `budget` counts
    training layers (each conv measured dense and sparse, each dwconv dense); a held-out set of
    real-network layers (sample "holdout") is measured too. With `adaptive`, the second half of
    the budget is chosen by the `jcw.acquisition` plug-in. `holdout` overrides the held-out set's
    size (default max(50, budget // 5) layers; 0 for none).
    """
    if isinstance(device, str):
        with open_device(device) as opened:
            return profile(opened, out_dir, budget=budget, seed=seed, threads=threads, rounds=rounds,
                           adaptive=adaptive, holdout=holdout, runner_args=runner_args, progress=progress)
    params = ProfileParams(budget=budget, seed=seed, threads=threads, rounds=rounds, adaptive=adaptive,
                           holdout=holdout)
    out_dir = Path(out_dir)
    chooser = acquisition.load_chooser() if adaptive else None
    started = time.monotonic()
    summary = ProfileSummary(out_dir=str(out_dir), rounds=rounds)
    with ProfileStore(out_dir, create=True) as store:
        params = params.merge(store.get_meta("plan_params"), out_dir)
        _check_device(store, device)
        base_budget = budget - budget // 2 if adaptive else budget
        plan = plans.make_plan(base_budget, seed, holdout=params.holdout)
        store.add_plan(plan.configurations(threads))
        store.set_meta("plan_params", asdict(params))
        session = _Session(device, store, params, list(runner_args), progress, summary)
        session.done = sum(len(store.plan()) - len(store.pending(r)) for r in range(rounds))
        session.report(phase="start")
        try:
            session.run_all_rounds()
            if chooser is not None:
                session.adapt(chooser, adaptive_target(plan, budget // 2))
        except DeviceDisconnected as exc:
            raise DeviceDisconnected(
                f"{str(exc).rstrip('.')}; everything measured so far is saved in {out_dir}, rerun the same "
                f"command to resume") from None
        finally:
            summary.wall_seconds = time.monotonic() - started
            _fill_counts(store, summary)
    return summary


def _fill_counts(store: ProfileStore, summary: ProfileSummary) -> None:
    rows = store.rounds()
    summary.configurations = len(store.plan())
    summary.failures = sum(1 for r in rows if r["error"] is not None)
    summary.measured = len(rows) - summary.failures
    summary.samples = dict(Counter(r["sample"] for r in store.plan()))


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
    from android_harness.connect import open_device as harness_open
    return harness_open(address)
