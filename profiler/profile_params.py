"""What a profile was asked for and what a run of it did: `ProfileParams` (checked, and merged with a stored
profile's on a rerun), `ProfileSummary`, and the size limits the command line checks (profiler.session runs them).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jcw.profiler import labels, plans, program_session
from jcw.profiler.cliargs import MAX_THREADS
from jcw.profiler.store import StoreError

#: Timing rounds per configuration (profiler.session's repeatability methodology).
DEFAULT_ROUNDS = 5
#: Training programs `jcw profile` measures unless told otherwise (held-out and unseen ones come on
#: top: a third as many each, at least 10); the Python API defaults to none. 40 is where the program
#: model's held-out accuracy levels off on the sample-efficiency curve (benchmarks/RESULTS.md).
DEFAULT_PROGRAMS = 40
#: Size limits, checked when the command line is parsed (and by ProfileParams): far above any useful
#: profile (the default budget is 1600 layers, 5 rounds, 40 programs), low enough that a typo cannot
#: plan a profile that would fill the memory or the disk.
MAX_BUDGET = 100_000
MAX_ROUNDS = 100
MAX_PROGRAMS = program_session.MAX_PROGRAMS


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
    unseen: int | None = None  # unseen-architecture held-out layers; None means as many as holdout
    transfer: bool = False  # planned for transfer from a known device (`--prior`, plans.transfer_plan)
    plan_version: int = plans.PLAN_VERSION

    def __post_init__(self) -> None:
        if self.holdout is None:
            object.__setattr__(self, "holdout", plans.holdout_size(self.budget))
        if self.unseen is None:
            object.__setattr__(self, "unseen", self.holdout)
        for name, low in (("budget", 1), ("threads", 1), ("rounds", 1), ("seed", 0), ("holdout", 0), ("unseen", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, high in (("budget", MAX_BUDGET), ("threads", MAX_THREADS), ("rounds", MAX_ROUNDS)):
            if getattr(self, name) > high:
                raise ValueError(f"{name} must be at most {high}, got {getattr(self, name)}")
        if self.holdout > plans.HOLDOUT_POOL:
            raise ValueError(f"holdout must be at most {plans.HOLDOUT_POOL}, got {self.holdout}")
        if self.unseen > plans.UNSEEN_POOL:
            raise ValueError(f"unseen must be at most {plans.UNSEEN_POOL}, got {self.unseen}")

    def merge(self, stored: dict[str, Any] | None, directory: Path) -> ProfileParams:
        """These parameters against a profile's stored ones: extend when possible, else say what differs."""
        if not stored:
            return self
        def refuse(what: str) -> ProfileParamsError:
            return ProfileParamsError(
                f"profile {directory} was planned with {what}; rerun with the same value to resume or extend it, "
                f"or choose another --out")
        version = stored.get("plan_version", 1)
        same_transfer_plan = self.transfer and stored.get("transfer") and version >= plans.TRANSFER_PLAN_SINCE
        if version != self.plan_version and not same_transfer_plan:  # another sampling: extending would mix them
            raise ProfileParamsError(
                f"profile {directory} was planned by an earlier jcw (layer plan version {version}, this one plans "
                f"version {self.plan_version}); it still trains as it is, but to measure more choose another --out")
        for name in ("seed", "threads"):
            if stored.get(name) != getattr(self, name):
                raise refuse(f"--{name} {stored.get(name)} (you asked for {getattr(self, name)})")
        for name in ("budget", "rounds", "holdout", "unseen"):
            if getattr(self, name) < stored.get(name, 0):
                raise refuse(f"--{name} {stored.get(name)} and a rerun may raise it but not lower it "
                             f"(you asked for {getattr(self, name)})")
        if bool(stored.get("transfer", False)) != self.transfer:  # the two plans draw different layers
            raise refuse("--prior" if stored.get("transfer") else "no --prior")
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
    new_results: int = 0        # good results measured in this run
    new_failures: int = 0       # error results stored in this run (the layer's own: see SystematicFailure)
    batches: int = 0
    drift_batches: int = 0
    requeued: int = 0
    runner_crashes: int = 0
    device_seconds: float = 0.0  # wall time spent inside the device's batches
    timed_seconds: float = 0.0   # time inside timed kernel runs (runner timed_us)
    wall_seconds: float = 0.0
    samples: dict[str, int] = field(default_factory=dict)
    threads: int = 1             # what layers and programs were measured with
    runtime: str = program_session.RUNTIME
    programs: int = 0            # whole programs planned (ExecuTorch)
    program_samples: dict[str, int] = field(default_factory=dict)
    sparse_programs: int = 0     # whole programs planned for the sparse engine
    sparse_samples: dict[str, int] = field(default_factory=dict)
    sparse_note: str | None = None  # one sentence when the device cannot run the sparse engine
    program_measured: int = 0    # stored good program results, all rounds
    program_failures: int = 0    # stored program errors (host export or runner)
    program_new_results: int = 0  # good program results measured in this run
    program_new_failures: int = 0  # program errors stored in this run (host export or runner)
    programs_exported: int = 0   # .pte files exported in this run
    programs_note: str | None = None  # one sentence when programs could not be measured here
    weights: str = labels.DEFAULT_WEIGHTS  # the layer runner's weights mode (profiler.labels)
    cold_bytes: int | None = None  # bytes a cold rotation spans (None: past the last-level cache)
    settle_cap: int = 0          # extra rounds a configuration whose fastest rounds disagree may get
    settle_results: int = 0      # results of settle rounds measured in this run
    settle: dict[str, int] = field(default_factory=dict)  # labels.settle_counts of the whole profile

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def all_failed(self) -> bool:
        """Whether this run stored results and every one of them is an error."""
        return (self.new_failures + self.program_new_failures > 0
                and self.new_results + self.program_new_results == 0)
