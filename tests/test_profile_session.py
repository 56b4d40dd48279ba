"""Running plans on the real host runner: rounds, resume, crashes, disconnects, drift, adaptive, measure."""
import os
import signal
import sys
import textwrap

import pytest

from jcw.android_harness.device import DeviceDisconnected, DeviceError
from jcw.android_harness.local import LocalDevice
from jcw.android_harness.runner import HOST_BINARY
from jcw.profiler import acquisition, plans, session
from jcw.profiler.layerspec import LayerSpec
from jcw.profiler.store import ProfileStore, config_id

FAST = ["--warmup", "0", "--min-reps", "2", "--min-time-ms", "0", "--check-samples", "4"]


@pytest.fixture(scope="module", autouse=True)
def runner_built():
    if not os.access(HOST_BINARY, os.X_OK):
        pytest.fail(f"the host runner {HOST_BINARY} is not built; run `make -C android_harness/native host` "
                    f"(make test builds it first)")


@pytest.fixture(autouse=True)
def quiet_drift(monkeypatch):
    """With FAST runner settings the reference is too noisy for the default threshold; exact counts need quiet."""
    monkeypatch.setattr(session, "DRIFT_THRESHOLD", 10.0)


def assert_exactly_once_per_round(store, rounds):
    plan = {row["config_id"] for row in store.plan()}
    rows = store.rounds()
    seen = [(r["config_id"], r["round"]) for r in rows]
    assert len(seen) == len(set(seen))
    assert set(seen) == {(c, r) for c in plan for r in range(rounds)}


class KillingDevice(LocalDevice):
    """The real runner, SIGKILLed when it reaches a chosen plan line, before that line's result gets out."""

    def __init__(self, poison_id, **kw):
        super().__init__(**kw)
        self.poison_id = poison_id
        self.kills = 0

    def run_batch(self, plan_lines, runner_args=()):
        for result in super().run_batch(plan_lines, runner_args):
            if result.get("id") == self.poison_id:
                self.kills += 1
                os.kill(self.running_pid, signal.SIGKILL)
                continue
            yield result


def test_profile_measures_every_configuration_once_per_round_and_resumes(tmp_path):
    device = LocalDevice()
    ticks = []
    summary = session.profile(device, tmp_path / "p", budget=6, rounds=2, runner_args=FAST,
                              progress=lambda done, total, info: ticks.append((done, total)))
    with ProfileStore(tmp_path / "p") as store:
        assert_exactly_once_per_round(store, 2)
        assert summary.configurations == len(store.plan()) and summary.measured == 2 * summary.configurations
        assert summary.new_results == summary.measured and summary.failures == 0
        assert {r["sample"] for r in store.plan()} == {"prior", "coverage", "holdout", "unseen"}  # 6: no random
        assert store.get_meta("plan_params").items() >= {"budget": 6, "seed": 0, "threads": 1, "rounds": 2,
                                                         "adaptive": False, "holdout": 50, "unseen": 50,
                                                         "plan_version": plans.PLAN_VERSION}.items()
        assert store.get_meta("runner")["version"] and store.get_meta("device_facts")
        assert len(store.references()) >= 2 * summary.batches
        assert summary.timed_seconds > 0 and summary.device_seconds <= summary.wall_seconds
        assert all(m["rounds"] == 2 and m["latency_us"] > 0 for m in store.measurements())
        stamps = {(r["config_id"], r["round"]): r["measured_at"] for r in store.rounds()}
    assert ticks[-1] == (summary.measured, summary.measured)
    again = session.profile(device, tmp_path / "p", budget=6, rounds=2, runner_args=FAST)
    assert again.new_results == 0 and again.batches == 0
    # a third round and a larger budget extend the profile without touching what is measured
    more = session.profile(device, tmp_path / "p", budget=8, rounds=3, runner_args=FAST)
    with ProfileStore(tmp_path / "p") as store:
        assert_exactly_once_per_round(store, 3)
        assert more.new_results == 3 * len(store.plan()) - len(stamps)
        assert all(stamps[(r["config_id"], r["round"])] == r["measured_at"]
                   for r in store.rounds() if (r["config_id"], r["round"]) in stamps)


def test_rerun_with_other_parameters_says_what_differs(tmp_path):
    first = session.profile("local", tmp_path / "p", budget=2, rounds=1, runner_args=FAST)  # an address works too
    assert first.measured == first.configurations > 0
    with pytest.raises(session.ProfileParamsError, match=r"planned with --seed 0 \(you asked for 1\)"):
        session.profile(LocalDevice(), tmp_path / "p", budget=2, seed=1, rounds=1, runner_args=FAST)
    with pytest.raises(session.ProfileParamsError, match="--budget 2 and a rerun may raise it but not lower it"):
        session.profile(LocalDevice(), tmp_path / "p", budget=1, rounds=1, runner_args=FAST)
    with pytest.raises(session.ProfileParamsError, match=r"--threads 1 \(you asked for 2\)"):
        session.profile(LocalDevice(), tmp_path / "p", budget=2, threads=2, rounds=1, runner_args=FAST)
    with pytest.raises(session.ProfileParamsError, match="--holdout 50 and a rerun may raise it but not lower it"):
        session.profile(LocalDevice(), tmp_path / "p", budget=2, rounds=1, holdout=10, runner_args=FAST)
    with pytest.raises(ValueError, match="holdout must be at most 3000"):
        session.profile(LocalDevice(), tmp_path / "p", budget=2, rounds=1, holdout=5000, runner_args=FAST)


def test_killed_runner_loses_nothing_and_a_line_killing_it_twice_becomes_an_error(tmp_path):
    plan = plans.make_plan(4, seed=0, holdout=3)
    victim_spec, victim_impl, _, _ = plan.configurations(1)[3]
    with ProfileStore(tmp_path / "p", create=True) as store:
        store.add_plan(plan.configurations(1))
        position = {r["config_id"]: r["position"] for r in store.plan()}[config_id(victim_spec, victim_impl, 1)]
    device = KillingDevice(poison_id=f"p{position}")
    summary = session.profile(device, tmp_path / "p", budget=4, rounds=2, holdout=3, runner_args=FAST)
    with ProfileStore(tmp_path / "p") as store:
        assert_exactly_once_per_round(store, 2)
        errors = store.errors()
        assert len(errors) == 2 and {e["round"] for e in errors} == {0, 1}
        assert all("crashed 2 times on this line" in e["error"] and "signal 9" in e["error"] for e in errors)
        assert summary.runner_crashes == 4 and device.kills == 4
        assert summary.failures == 2 and summary.measured == 2 * len(store.plan()) - 2


def test_disconnect_ends_with_a_resumable_profile(tmp_path):
    class DroppingDevice(LocalDevice):
        address = "tcp:10.0.0.9:5555"
        left = 7

        def run_batch(self, plan_lines, runner_args=()):
            for result in super().run_batch(plan_lines, runner_args):
                if self.left == 0:
                    raise DeviceDisconnected("the connection to tcp:10.0.0.9:5555 dropped")
                self.left -= 1
                yield result

    with pytest.raises(DeviceDisconnected, match="saved in .*rerun the same command to resume"):
        session.profile(DroppingDevice(), tmp_path / "p", budget=4, rounds=2, holdout=3, runner_args=FAST)
    with ProfileStore(tmp_path / "p") as store:
        kept = len(store.rounds())
        assert kept == 6  # 7 results reported, the first of them the batch's reference timing

    class SamePhone(LocalDevice):
        address = "tcp:10.0.0.9:5555"

    resumed = session.profile(SamePhone(), tmp_path / "p", budget=4, rounds=2, holdout=3, runner_args=FAST)
    with ProfileStore(tmp_path / "p") as store:
        assert_exactly_once_per_round(store, 2)
        assert resumed.new_results == 2 * len(store.plan()) - kept
    with pytest.raises(session.ProfileParamsError, match="was measured on tcp:10.0.0.9:5555, not local"):
        session.profile(LocalDevice(), tmp_path / "p", budget=4, rounds=2, holdout=3, runner_args=FAST)


def test_drifting_reference_flags_and_requeues_the_batch_once(tmp_path):
    class ThrottledOnce(LocalDevice):
        """Real results, but the reference as a steady phone would time it, throttled 60% in the third batch."""
        batches = 0

        def run_batch(self, plan_lines, runner_args=()):
            self.batches += 1
            for result in super().run_batch(plan_lines, runner_args):
                if str(result["id"]).startswith("ref-"):
                    steady = 1600.0 if self.batches == 3 else 1000.0
                    result = {**result, "us_min": steady, "us_median": steady * 1.01}
                yield result

    monkey_batch = pytest.MonkeyPatch()
    monkey_batch.setattr(session, "FIRST_BATCH_LINES", 4)
    monkey_batch.setattr(session, "TARGET_BATCH_SECONDS", 0.0)  # keep batches at the minimum size
    monkey_batch.setattr(session, "DRIFT_THRESHOLD", 0.1)
    try:
        summary = session.profile(ThrottledOnce(), tmp_path / "p", budget=4, rounds=1, holdout=3, runner_args=FAST)
    finally:
        monkey_batch.undo()
    with ProfileStore(tmp_path / "p") as store:
        flagged = {f["batch"]: f["deviation"] for f in store.drift_batches()}
        assert flagged == {2: pytest.approx(0.6)}
        assert summary.drift_batches == 1 and summary.requeued == 2  # batch 2's two configurations, once
        assert_exactly_once_per_round(store, 1)
        assert not any(r["batch"] == 2 for r in store.rounds())  # its rows were replaced by the re-measurement


def test_adaptive_spends_half_the_budget_through_the_plugin(tmp_path, monkeypatch):
    (tmp_path / "pick_small.py").write_text(textwrap.dedent("""
        CALLS = []
        def choose(candidates, measured, n, seed):
            CALLS.append((len(candidates), len(measured), n))
            assert all(m["sample"] != "holdout" for m in measured)
            order = sorted(range(len(candidates)), key=lambda i: candidates[i]["cin"] * candidates[i]["cout"])
            return order[:n]
    """))
    info = tmp_path / "pick_small-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pick-small\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[jcw.acquisition]\ndefault = pick_small:choose\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    summary = session.profile(LocalDevice(), tmp_path / "p", budget=8, rounds=1, adaptive=True, holdout=3,
                              runner_args=FAST)
    import pick_small
    with ProfileStore(tmp_path / "p") as store:
        adaptive = store.plan("adaptive")
        training = store.plan("prior") + store.plan("coverage") + store.plan("random")
        assert len({LayerSpec.from_dict(r).key() for r in training}) == 4  # the first half of the budget
        # the adaptive half is spent in ADAPTIVE_STEPS steps of equal size, the last one taking what is left
        step = -(-len(adaptive) // session.ADAPTIVE_STEPS)
        assert len(adaptive) >= 4 and len(pick_small.CALLS) == -(-len(adaptive) // step)
        assert [n for *_, n in pick_small.CALLS][:-1] == [step] * (len(pick_small.CALLS) - 1)
        assert all(m > 0 for _, m, _ in pick_small.CALLS)
        assert_exactly_once_per_round(store, 1)
        assert summary.samples["adaptive"] == len(adaptive)
    sys.modules.pop("pick_small", None)


def test_adaptive_without_plugin_fails_before_measuring(tmp_path, monkeypatch):
    monkeypatch.setattr(acquisition.metadata, "entry_points", lambda group: [])
    with pytest.raises(acquisition.AcquisitionError, match="needs an acquisition plug-in"):
        session.profile(LocalDevice(), tmp_path / "p", budget=4, adaptive=True, runner_args=FAST)
    assert not (tmp_path / "p").exists()


def test_measure_yields_each_layer_and_implementation(tmp_path):
    specs = [("a", LayerSpec(op="conv", cin=8, cout=8, k=3, h=8, w=8, density=0.2)),
             ("b", LayerSpec(op="dwconv", cin=8, cout=8, k=3, h=8, w=8)),
             ("a", LayerSpec(op="conv", cin=4, cout=8, k=1, h=8, w=8))]
    results = list(session.measure(LocalDevice(), specs, runner_args=FAST))
    assert [(r["id"], r["impl"]) for r in results] == [("a", "dense"), ("a", "sparse"), ("b", "dense"),
                                                       ("a", "dense"), ("a", "sparse")]
    assert all(r["us_min"] > 0 and r["max_abs_err"] < 1e-3 for r in results)
    dense_only = list(session.measure(LocalDevice(), specs[:1], impl="dense", runner_args=FAST))
    assert [r["impl"] for r in dense_only] == ["dense"]


def test_broken_runner_is_a_device_error_not_a_profile_of_errors(tmp_path):
    with pytest.raises(DeviceError, match="fails before measuring anything"):
        session.profile(LocalDevice(), tmp_path / "p", budget=2, rounds=1, runner_args=["--min-reps", "zero"])
