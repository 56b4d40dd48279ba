"""`jcw profile --sparse-programs`: whole programs for the sparse engine exported as network files in the
program phase and timed on the host runner's engine ("net" lines) in the same rounds as the ExecuTorch ones,
resumable exactly like them; the same spec under both runtimes stays two programs; a runner without the
engine skips them with one sentence and still measures the rest."""

import pytest

from jcw.__main__ import main
from jcw.android_harness.device import DeviceDisconnected
from jcw.android_harness.local import LocalDevice
from jcw.profiler import program_export, program_session, program_zoo, programs, session, sparse_programs
from jcw.profiler.store import ProfileStore
from test_program_session import FAST, runners_built  # noqa: F401  (runners_built: an autouse fixture)


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(session, "DRIFT_THRESHOLD", 10.0)
    monkeypatch.setattr(program_export, "EXPORT_WORKERS", 1)  # in-process: the plans patched below apply


def tiny(index, density):
    """A small network the engine runs: a stem, a 1x1 pruned to `density` (sparse when < 1), a classifier."""
    return programs.validate({"name": f"tiny{index}", "family": "tiny", "input": [1, 3, 8, 8], "nodes": [
        {"name": "stem", "op": "conv", "cout": 4 + index, "k": 3, "act": "relu"},
        {"name": "pw", "op": "conv", "cout": 8, "k": 1, "density": density, "act": "relu"},
        {"name": "pool", "op": "gap"}, {"name": "flat", "op": "flatten"}, {"name": "fc", "op": "linear", "cout": 5}]})


@pytest.fixture
def tiny_plans(monkeypatch):
    """One ExecuTorch program (tiny0 at density 0.5) and sparse ones, tiny0 among them: the same spec on both
    runtimes. The zoo's networks take seconds each to export; the phase is the same with tiny ones."""
    def executorch_plan(n_train, n_holdout, n_unseen, seed=0, resolutions=None, n_operator=0):
        return [(tiny(0, 0.5), "train")] if n_train else []

    def sparse_plan(n_train, n_holdout, seed=0, resolutions=None):
        entries = [(tiny(i, 0.5 if i % 2 == 0 else 1.0), "train") for i in range(n_train)]
        return entries + [(tiny(10 + i, 0.3), "holdout") for i in range(n_holdout)]

    monkeypatch.setattr(program_zoo, "program_plan", executorch_plan)
    monkeypatch.setattr(sparse_programs, "sparse_plan", sparse_plan)
    monkeypatch.setattr(sparse_programs, "sparse_counts", lambda n: (n, 1) if n else (0, 0))
    monkeypatch.setattr(program_session, "program_counts", lambda n: (n, 0, 0) if n else (0, 0, 0))
    monkeypatch.setattr(program_session, "operator_count", lambda n: 0)


class EngineDevice(LocalDevice):
    """The local device, recording the program lines it runs; `engine=False` reports a runner from before
    the network engine."""

    def __init__(self, engine=True, **kw):
        super().__init__(**kw)
        self.engine, self.program_lines = engine, []

    def program_runner_info(self):
        header = super().program_runner_info()
        return header if self.engine else {k: v for k, v in header.items() if k != "net_format_version"}

    def run_programs(self, lines, runner_args=()):
        lines = list(lines)
        self.program_lines.extend(lines)
        yield from super().run_programs(lines, runner_args)


def profile(device, path, **kw):
    kw = {"budget": 2, "holdout": 1, "unseen": 0, "rounds": 2, "programs": 1, "sparse_programs": 2,
          "runner_args": FAST, "settle_cap": 0, **kw}
    return session.profile(device, path, **kw)


def once_per_round(store, rounds):
    planned = {r["program_id"] for r in store.programs()}
    seen = [(r["program_id"], r["round"]) for r in store.program_rounds()]
    return len(seen) == len(set(seen)) and set(seen) == {(p, r) for p in planned for r in range(rounds)}


def test_sparse_programs_are_exported_as_network_files_and_timed_on_the_engine_in_every_round(tmp_path, tiny_plans):
    device = EngineDevice()
    summary = profile(device, tmp_path / "p")
    assert summary.programs == 1 and summary.sparse_programs == 3 and summary.sparse_note is None
    assert summary.program_measured == 4 * 2 and summary.program_failures == 0
    with ProfileStore(tmp_path / "p") as store:
        rows = store.programs()
        assert [(r["name"], r["runtime"]) for r in rows].count(("tiny0", "executorch")) == 1
        assert [(r["name"], r["runtime"]) for r in rows].count(("tiny0", "sparse")) == 1
        assert once_per_round(store, 2)
        folder = tmp_path / "p" / "programs"
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            programs.program_id(r["spec"]) + (".pte" if r["runtime"] == "executorch" else ".jcwnet") for r in rows)
        measured = {(m["name"], m["runtime"]): m for m in store.program_measurements()}
        assert all(m["latency_us"] > 0 and m["rounds"] == 2 for m in measured.values())
        assert store.get_meta("program_params")["sparse"] == 2
    net_lines = [line for line in device.program_lines if "net" in line]
    assert len(net_lines) == 3 * 2 and all(line["net"].endswith(".jcwnet") for line in net_lines)
    assert len([line for line in device.program_lines if "pte" in line]) == 2

    device = EngineDevice()
    again = profile(device, tmp_path / "p")  # the same command again: nothing left to export or measure
    assert again.program_new_results == 0 and again.programs_exported == 0 and device.program_lines == []
    with pytest.raises(session.ProfileParamsError, match="--sparse-programs 2 and a rerun may raise it"):
        profile(EngineDevice(), tmp_path / "p", sparse_programs=1)


def test_an_interrupted_sparse_round_resumes_with_each_result_exactly_once(tmp_path, tiny_plans):
    class Dropping(EngineDevice):
        address = "tcp:10.0.0.9:5555"
        left = 3

        def run_programs(self, lines, runner_args=()):
            for result in super().run_programs(lines, runner_args):
                if Dropping.left == 0:
                    raise DeviceDisconnected("the connection to tcp:10.0.0.9:5555 dropped")
                Dropping.left -= 1
                yield result

    with pytest.raises(DeviceDisconnected, match="rerun the same command to resume"):
        profile(Dropping(), tmp_path / "p", programs=0, sparse_programs=3)
    with ProfileStore(tmp_path / "p") as store:
        first = {(r["program_id"], r["round"]): r["measured_at"] for r in store.program_rounds()}
        assert len(first) == 3 and {r["runtime"] for r in store.programs()} == {"sparse"}
    Dropping.left = 10 ** 6
    resumed = profile(Dropping(), tmp_path / "p", programs=0, sparse_programs=3)
    with ProfileStore(tmp_path / "p") as store:
        assert once_per_round(store, 2) and len(store.programs()) == 4
        kept = {(r["program_id"], r["round"]): r["measured_at"] for r in store.program_rounds()}
        assert all(kept[k] == v for k, v in first.items())  # what was committed was not measured again
    assert resumed.program_new_results == 4 * 2 - 3


def test_a_runner_without_the_engine_skips_sparse_programs_and_measures_the_rest(tmp_path, tiny_plans, capsys):
    device = EngineDevice(engine=False)
    summary = profile(device, tmp_path / "p")
    assert "no sparse network engine" in summary.sparse_note and summary.sparse_programs == 0
    assert summary.programs == 1 and summary.program_measured == 2 and summary.programs_note is None
    assert all("net" not in line for line in device.program_lines)


def test_jcw_profile_takes_sparse_programs_and_reports_them(tmp_path, tiny_plans, capsys):
    assert main(["profile", "--device", "local", "--out", str(tmp_path / "p"), "--budget", "2", "--holdout", "1",
                 "--unseen", "0", "--rounds", "1", "--settle-cap", "0", "--programs", "0", "--sparse-programs", "2",
                 "--threads", "1", "--runner-arg=--warmup=0", "--runner-arg=--min-reps=2",
                 "--runner-arg=--min-time-ms=0"]) == 0
    out = capsys.readouterr().out
    assert "whole programs planned (sparse engine)" in out and "3 (holdout 1, train 2)" in out
    assert "whole programs planned (ExecuTorch)" not in out
