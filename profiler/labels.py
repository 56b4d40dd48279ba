"""How a profile's layer labels are made, beyond its base rounds: the weights mode the layer runner times in
(warm or cold; recorded in the store, never mixed within one profile) and settle rounds, which re-measure
only the configurations whose fastest rounds disagree. Owns both store records (meta "weights", "settle").

A configuration's label is the fastest clean round's us_min (store.ROUND_STATISTIC aggregated by
store.ROUND_AGGREGATE over the rounds without drift, or over all rounds when every one drifted). Its
fastest rounds *disagree* when the second-fastest of those same rounds is more than SETTLE_TOLERANCE slower
than the fastest: then no other round confirms the label. Settle rounds add rounds to exactly those
configurations, pass after pass, until every one is confirmed or has had `cap` rounds beyond the base ones.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jcw.profiler.store import ROUND_AGGREGATE, ROUND_STATISTIC, ProfileStore, StoreError

WEIGHTS_MODES = ("warm", "cold")
DEFAULT_WEIGHTS = "warm"
#: The smallest rotation `--cold-bytes` takes (the runner's own floor).
MIN_COLD_BYTES = 1024
#: The runner version that first took --cold-bytes.
COLD_BYTES_RUNNER = (0, 2, 3)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
#: Two rounds agree when the slower is at most this much slower than the faster: the ±5% of the
#: repeatability target (two independent labels within ±5%).
SETTLE_TOLERANCE = 0.05
#: Extra rounds a configuration may get. In this machine's 5-round profile (benchmarks/out/profile1t,
#: 1 thread) 4.6% of configurations disagree after 5 rounds; replaying its rounds from 2 or 3 base rounds,
#: the first extra round confirms 40-50% of the disagreeing ones, the second another 17-19%, the third 7%.
#: An extra round of 4.6% of the configurations costs about 1% of a 5-round profile (timed time; they are
#: slightly costlier than average), so a cap of 3 costs at most ~3% on a quiet device, and on a noisy one at
#: most 3 rounds of the disagreeing configurations, against 60% for 8 rounds everywhere.
#: benchmarks/bench_labels.py measures what each buys.
DEFAULT_SETTLE_CAP = 3
MAX_SETTLE_CAP = 20


class LabelModeError(StoreError):
    """A profile asked to mix weights modes, or a runner that cannot time the mode asked for; one sentence."""


# ---- the weights mode -------------------------------------------------------------------------
def parse_size(text: str) -> int:
    """"4M", "512K", "2097152" -> bytes (K, M, G are powers of 1024), as the runner reads --cold-bytes;
    ValueError in one sentence for anything else or less than MIN_COLD_BYTES."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMG]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    size = float(match[1]) * _SIZE_UNITS[match[2].upper()] if match else 0.0
    if not MIN_COLD_BYTES <= size <= _SIZE_UNITS["G"] << 10:
        raise ValueError(f"--cold-bytes needs a size from 1K to 1024G such as 4M, got {text!r}")
    return int(size)


def weights_runner_args(mode: str, cold_bytes: int | None = None) -> list[str]:
    """The layer runner's flags for `mode` and a cold rotation of `cold_bytes` (None: past the last-level
    cache); warm is the runner's default, so old runners keep working."""
    if mode not in WEIGHTS_MODES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS_MODES)}, got {mode!r}")
    if cold_bytes is not None and mode != "cold":
        raise LabelModeError("--cold-bytes sizes the rotation of cold weights; it needs --weights cold")
    flags = [] if mode == DEFAULT_WEIGHTS else ["--weights", mode]
    return flags + ([] if cold_bytes is None else ["--cold-bytes", str(int(cold_bytes))])


def rotation(cold_bytes: int | None) -> str:
    """What a cold rotation spans, in words."""
    return "the last-level cache" if cold_bytes is None else f"{cold_bytes / (1 << 20):g} MiB"


def stored_weights(store: ProfileStore) -> str | None:
    """The mode a profile's labels were timed in; a profile measured before the mode existed is warm."""
    mode = store.get_meta("weights")
    if mode is None and store.rounds():
        return DEFAULT_WEIGHTS
    return mode


def check_runner_args(runner_args: Iterable[str]) -> None:
    """Refuse --weights or --cold-bytes passed as runner arguments: the profile would not know how its labels
    were made."""
    if any(str(arg).split("=")[0] in ("--weights", "--cold-bytes") for arg in runner_args):
        raise LabelModeError("the weights mode and its rotation are set with --weights warm|cold and --cold-bytes, "
                             "not as runner arguments, so that the profile records them")


def _runner_version(header: Mapping[str, Any]) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(header.get("version")).split("."))
    except ValueError:
        return ()


def check_weights(store: ProfileStore, mode: str, runner_header: Mapping[str, Any], address: str,
                  cold_bytes: int | None = None) -> None:
    """Record the mode (and a cold rotation's size) of a new profile; refuse a rerun in another mode or with
    another rotation, and a mode the runner predates."""
    weights_runner_args(mode, cold_bytes)  # ValueError for an unknown mode: a caller's bug, the CLI offers a choice
    stored = stored_weights(store)
    if stored is not None and stored != mode:
        raise LabelModeError(f"profile {store.directory} was measured with --weights {stored} and one profile "
                             f"never mixes modes; rerun with --weights {stored} to resume or extend it, or choose "
                             f"another --out for --weights {mode}")
    stored_bytes = store.get_meta("cold_bytes")
    if stored is not None and mode == "cold" and stored_bytes != cold_bytes:
        again = "without --cold-bytes" if stored_bytes is None else f"--cold-bytes {stored_bytes}"
        raise LabelModeError(f"profile {store.directory} was measured with cold weights rotating over "
                             f"{rotation(stored_bytes)} and one profile never mixes rotations; rerun {again} to "
                             f"resume or extend it, or choose another --out")
    if mode != DEFAULT_WEIGHTS and "weights" not in runner_header:
        raise LabelModeError(f"the layer runner on {address} (version {runner_header.get('version')}) cannot time "
                             f"cold weights, which came with runner 0.2.1; rebuild it with `make runner` "
                             f"(a phone gets the new bundle from `make runner-android`)")
    if cold_bytes is not None and _runner_version(runner_header) < COLD_BYTES_RUNNER:
        raise LabelModeError(f"the layer runner on {address} (version {runner_header.get('version')}) cannot size "
                             f"the cold rotation, which came with runner 0.2.3; rebuild it with `make runner` "
                             f"(a phone gets the new bundle from `make runner-android`)")
    if stored is None:
        store.set_meta("weights", mode)
        if cold_bytes is not None:
            store.set_meta("cold_bytes", int(cold_bytes))


# ---- settle rounds ----------------------------------------------------------------------------
def disagreement(values: Sequence[float]) -> float | None:
    """How much slower the second-fastest round is than the fastest (None with fewer than two rounds)."""
    if len(values) < 2:
        return None
    fastest, second = sorted(values)[:2]
    return second / fastest - 1.0 if fastest > 0 else float("inf")


def _label_rounds(rows: Iterable[Mapping[str, Any]]) -> tuple[dict[str, list[float]], dict[str, int],
                                                               dict[str, dict[str, Any]]]:
    """Per configuration: the rounds its label is made of (as store.measurements() picks them), the next
    free round index, and its plan row."""
    good: dict[str, list[tuple[float, int]]] = defaultdict(list)
    next_round: dict[str, int] = {}
    plan_rows: dict[str, dict[str, Any]] = {}
    for row in rows:
        config = row["config_id"]
        next_round[config] = max(next_round.get(config, 0), int(row["round"]) + 1)
        plan_rows.setdefault(config, dict(row))
        if row["error"] is None and row[ROUND_STATISTIC] is not None:
            good[config].append((float(row[ROUND_STATISTIC]), int(row["drift"] or 0)))
    label_rounds = {}
    for config, values in good.items():
        clean = [v for v, drift in values if not drift] or [v for v, _ in values]
        label_rounds[config] = clean
    return label_rounds, next_round, plan_rows


def unsettled(rows: Iterable[Mapping[str, Any]], base_rounds: int, cap: int) -> list[tuple[dict[str, Any], int]]:
    """(plan row, round index to measure next) of every configuration whose fastest rounds disagree by more
    than SETTLE_TOLERANCE and that has had fewer than `cap` rounds beyond `base_rounds`."""
    label_rounds, next_round, plan_rows = _label_rounds(rows)
    out = []
    for config, values in label_rounds.items():
        gap = disagreement(values)
        if gap is not None and gap > SETTLE_TOLERANCE and next_round[config] - base_rounds < cap:
            out.append((plan_rows[config], max(next_round[config], base_rounds)))
    return out


def settle_counts(store: ProfileStore, base_rounds: int) -> dict[str, int]:
    """What settling did to a profile: configurations whose base rounds disagreed, configurations with rounds
    beyond the base ones and how many such rounds, and configurations whose fastest rounds still disagree."""
    rows = store.rounds()
    base = [r for r in rows if r["round"] < base_rounds]
    before, _, _ = _label_rounds(base)
    after, next_round, _ = _label_rounds(rows)
    return {"disagreeing_base": sum(1 for v in before.values() if (disagreement(v) or 0.0) > SETTLE_TOLERANCE),
            "settled_configurations": sum(1 for n in next_round.values() if n > base_rounds),
            "extra_rounds": sum(max(0, n - base_rounds) for n in next_round.values()),
            "still_disagreeing": sum(1 for v in after.values() if (disagreement(v) or 0.0) > SETTLE_TOLERANCE)}


def settle(session: Any, cap: int) -> None:
    """Re-measure the configurations whose fastest rounds disagree, one round each per pass (each pass
    reshuffled and drift-bracketed like a base round), until none disagrees or each has had `cap` extra
    rounds; then record the outcome in the store (meta "settle"). Resumable: what to measure is read from the
    stored rounds, so an interrupted settle step continues where it stopped."""
    store, base_rounds = session.store, session.params.rounds
    if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= MAX_SETTLE_CAP:
        raise ValueError(f"settle_cap must be an integer from 0 to {MAX_SETTLE_CAP}, got {cap!r}")
    previous = (store.get_meta("settle") or {}).get("cap", 0)
    while cap:
        todo = unsettled(store.rounds(), base_rounds, cap)
        if not todo:
            break
        session.total += len(todo)
        session.report(phase="settle")
        by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row, round_index in todo:
            by_round[round_index].append(row)
        before = session.summary.new_results + session.summary.new_failures
        for round_index, rows in sorted(by_round.items()):
            session.run_round(round_index, rows)
        measured = session.summary.new_results + session.summary.new_failures - before
        session.summary.settle_results += measured
        if measured == 0:  # nothing came back (cannot happen with a working runner): never loop forever
            break
    store.set_meta("settle", {"cap": max(cap, previous), "tolerance": SETTLE_TOLERANCE, "statistic": ROUND_STATISTIC,
                              "aggregate": ROUND_AGGREGATE, "base_rounds": base_rounds,
                              **settle_counts(store, base_rounds)})


def describe(store: ProfileStore) -> dict[str, Any]:
    """How a profile's labels were made, for `jcw train`'s card: statistic, weights mode, the bytes a cold
    rotation spans (None: past the last-level cache, or warm) and settle record (None when the profile
    predates settle rounds)."""
    return {"statistic": ROUND_STATISTIC, "aggregate": ROUND_AGGREGATE,
            "weights": stored_weights(store) or DEFAULT_WEIGHTS, "cold_bytes": store.get_meta("cold_bytes"),
            "settle": store.get_meta("settle")}


def sentence(record: Mapping[str, Any] | None) -> str:
    """describe()'s record in words, for `jcw train`'s output."""
    if not record:
        return "labels: not recorded"
    settle = record.get("settle")
    if not settle:
        settled = "no settle record"
    elif not settle.get("cap"):
        settled = "settle rounds off"
    else:
        settled = (f"settle rounds up to {settle['cap']} ({settle.get('settled_configurations', 0)} configurations "
                   f"re-measured, {settle.get('still_disagreeing', 0)} still disagree)")
    weights = f"{record.get('weights')} weights"
    if record.get("weights") == "cold":
        weights += f" (rotating over {rotation(record.get('cold_bytes'))})"
    return f"labels: {record.get('statistic')} of the fastest round, {weights}, {settled}"
