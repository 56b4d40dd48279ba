"""Settle rounds (profiler.labels): a device double whose timings the test scripts re-measures exactly the
configurations whose fastest rounds disagree by more than 5%, stops at agreement or at the cap, records
what it did, and survives an interruption in the middle of the settle step."""
import os
from collections import Counter, defaultdict

import pytest

from jcw.android_harness.local import LocalDevice
from jcw.android_harness.runner import HOST_BINARY
from jcw.profiler import labels, session
from jcw.profiler.store import ProfileStore

BUDGET, HOLDOUT, ROUNDS = 3, 0, 3
STEADY_US = 100.0
REFERENCE_US = 1000.0


@pytest.fixture(scope="module", autouse=True)
def runner_built():
    # The double answers plan lines itself, but the profile still reads the real runners' headers.
    if not os.access(HOST_BINARY, os.X_OK):
        pytest.fail(f"the host runner {HOST_BINARY} is not built; run `make -C android_harness/native host`")


class ScriptedDevice(LocalDevice):
    """Answers every plan line without running anything: the n-th measurement of plan line `p<position>` takes
    script[position][n] us (the last value repeats), every other configuration STEADY_US and the reference
    layer REFERENCE_US, so no batch drifts. `interrupt_after` raises KeyboardInterrupt (Ctrl-C) once that many
    configuration results have been reported."""

    def __init__(self, script, interrupt_after=None):
        super().__init__()
        self.script = script
        self.seen = defaultdict(int)  # plan line id -> measurements so far
        self.interrupt_after = interrupt_after
        self.reported = 0

    def run_batch(self, plan_lines, runner_args=()):
        for line in plan_lines:
            line_id = line["id"]
            if line_id.startswith("ref-"):
                us = REFERENCE_US
            else:
                if self.interrupt_after is not None and self.reported >= self.interrupt_after:
                    raise KeyboardInterrupt
                values = self.script.get(int(line_id[1:]), [STEADY_US])
                us = values[min(self.seen[line_id], len(values) - 1)]
                self.seen[line_id] += 1
                self.reported += 1
            yield {"id": line_id, "impl": line["impl"], "threads": line["threads"], "us_min": us,
                   "us_median": us * 1.01, "us_mean": us * 1.02, "us_std": 0.1, "reps": 5, "max_abs_err": 0.0,
                   "timed_us": us * 5, "weights": "warm"}


#: p0: its second-fastest base round is 20% slower; the first settle round (103) confirms it.
#: p1: one lucky fast round (80) no later round comes near: settles until the cap.
#: p2: base rounds 4.9% apart at most: agrees, never re-measured.
SCRIPT = {0: [100.0, 120.0, 130.0, 103.0], 1: [80.0, 100.0, 100.0, 100.0], 2: [100.0, 104.9, 102.0]}
CAP = 2


def extra_rounds(store):
    """Configuration position -> rounds measured beyond the base ones."""
    position = {r["config_id"]: r["position"] for r in store.plan()}
    return dict(Counter(position[r["config_id"]] for r in store.rounds() if r["round"] >= ROUNDS))


def run(directory, device, cap=CAP):
    return session.profile(device, directory, budget=BUDGET, holdout=HOLDOUT, rounds=ROUNDS, settle_cap=cap)


def test_settle_measures_exactly_the_disagreeing_configurations_until_agreement_or_cap(tmp_path):
    device = ScriptedDevice(SCRIPT)
    summary = run(tmp_path / "p", device)
    with ProfileStore(tmp_path / "p") as store:
        assert len(store.plan()) > 3  # the steady configurations are there too, and untouched
        assert extra_rounds(store) == {0: 1, 1: CAP}
        position = {r["config_id"]: r["position"] for r in store.plan()}
        latency = {position[m["config_id"]]: m["latency_us"] for m in store.measurements()}
        assert (latency[0], latency[1]) == (100.0, 80.0)  # settling adds rounds; the label stays the fastest
        record = store.get_meta("settle")
    assert record == {"cap": CAP, "tolerance": labels.SETTLE_TOLERANCE, "statistic": "us_min", "aggregate": "min",
                      "base_rounds": ROUNDS, "disagreeing_base": 2, "settled_configurations": 2, "extra_rounds": 3,
                      "still_disagreeing": 1}
    assert summary.settle_results == 3 and summary.settle == {k: record[k] for k in summary.settle}
    assert device.seen["p2"] == ROUNDS and device.seen["p0"] == ROUNDS + 1 and device.seen["p1"] == ROUNDS + CAP

    # A rerun measures nothing more; a larger cap settles only what still disagrees, up to the new cap.
    again = run(tmp_path / "p", device)
    assert again.new_results == 0 and again.settle_results == 0
    more = run(tmp_path / "p", device, cap=CAP + 1)
    with ProfileStore(tmp_path / "p") as store:
        assert extra_rounds(store) == {0: 1, 1: CAP + 1}
        assert store.get_meta("settle")["cap"] == CAP + 1
    assert more.settle_results == 1


def test_cap_zero_measures_only_the_base_rounds_and_records_that_settle_was_off(tmp_path):
    device = ScriptedDevice(SCRIPT)
    summary = run(tmp_path / "p", device, cap=0)
    with ProfileStore(tmp_path / "p") as store:
        assert extra_rounds(store) == {}
        record = store.get_meta("settle")
    assert record["cap"] == 0 and record["disagreeing_base"] == 2 and record["still_disagreeing"] == 2
    assert summary.settle_results == 0


def test_an_interrupted_settle_step_resumes_where_it_stopped(tmp_path):
    first = ScriptedDevice(SCRIPT)
    reference = ScriptedDevice(SCRIPT)
    run(tmp_path / "reference", reference)
    base_results = sum(reference.seen.values()) - (1 + CAP)  # what the base rounds alone report
    # Ctrl-C after the base rounds and the first settle result: that result is kept, nothing is measured twice.
    first.interrupt_after = base_results + 1
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "p", first)
    with ProfileStore(tmp_path / "p") as store:
        kept = {(r["config_id"], r["round"]): r["measured_at"] for r in store.rounds()}
        assert len(kept) == base_results + 1 and sum(extra_rounds(store).values()) == 1
    second = ScriptedDevice(SCRIPT)
    second.seen.update(first.seen)  # the same phone: its scripted timings continue
    resumed = run(tmp_path / "p", second)
    with ProfileStore(tmp_path / "p") as store:
        assert extra_rounds(store) == {0: 1, 1: CAP}
        assert all(kept[key] == r["measured_at"] for r in store.rounds()
                   if (key := (r["config_id"], r["round"])) in kept)
        assert store.get_meta("settle")["extra_rounds"] == 1 + CAP
    assert resumed.new_results == CAP  # the two settle results still missing, no more
    assert second.seen == reference.seen


def test_disagreement_is_the_second_fastest_round_against_the_fastest():
    assert labels.disagreement([120.0, 100.0, 130.0]) == pytest.approx(0.2)
    assert labels.disagreement([100.0]) is None
    rows = [{"config_id": "a", "round": r, "us_min": v, "error": None, "drift": d}
            for r, (v, d) in enumerate([(80.0, 1), (100.0, 0), (104.0, 0)])]
    # a drift-flagged round is no part of the label, so it cannot make the rounds disagree either
    assert labels.unsettled(rows, base_rounds=3, cap=2) == []
    rows[2]["us_min"] = 110.0
    assert [(row["config_id"], n) for row, n in labels.unsettled(rows, base_rounds=3, cap=2)] == [("a", 3)]
    assert labels.unsettled(rows, base_rounds=1, cap=2) == []  # rounds 1 and 2 already count as its 2 extra
