"""`jcw profile`'s program phase on the real host runners: programs exported once, timed in the layers'
rounds, resumable exactly like layers; the thread default; devices and hosts that cannot run programs."""
import importlib.util
import os
from pathlib import Path

import pytest

from jcw.android_harness.device import DeviceDisconnected, DeviceError
from jcw.android_harness.local import LocalDevice
from jcw.android_harness.runner import HOST_BINARY
from jcw.profiler import program_build, program_export, program_session, program_zoo, programs, session
from jcw.profiler.store import ProfileStore

FAST = ["--warmup", "0", "--min-reps", "2", "--min-time-ms", "0", "--check-samples", "4"]
PTE_FAST = ["--warmup", "0", "--min-reps", "2", "--min-time-ms", "0"]
PTEBENCH = HOST_BINARY.parent / "ptebench"


@pytest.fixture(scope="module", autouse=True)
def runners_built():
    for binary in (HOST_BINARY, PTEBENCH):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"the host runner {binary} is not built; run `make -C android_harness/native host`")


@pytest.fixture(autouse=True)
def quiet_drift(monkeypatch):
    monkeypatch.setattr(session, "DRIFT_THRESHOLD", 10.0)


_EXPORTED = {}
_REAL_EXPORT = program_build.export_pte


@pytest.fixture(autouse=True)
def export_once_per_module(monkeypatch):
    """Each tiny program is really exported once per module; later exports copy its bytes (the phase
    still calls export_pte, which is what the tests count)."""
    def export(spec, path, seed=0):
        key = programs.canonical_json(programs.validate(spec))
        if key not in _EXPORTED:
            built = _REAL_EXPORT(spec, path, seed)
            _EXPORTED[key] = (Path(path).read_bytes(), built)
        else:
            Path(path).write_bytes(_EXPORTED[key][0])
        return {**_EXPORTED[key][1], "path": Path(path)}

    monkeypatch.setattr(program_build, "export_pte", export)
    monkeypatch.setattr(program_export, "EXPORT_WORKERS", 1)  # in-process, so the patch above applies


def tiny(index, samples=("train", "holdout", "unseen")):
    spec = {"name": f"tiny{index}", "family": "tiny", "input": [1, 3, 8, 8],
            "nodes": [{"name": "c1", "op": "conv", "cout": 4 + index, "k": 3, "act": "relu"},
                      {"name": "pool", "op": "gap"}, {"name": "flat", "op": "flatten"},
                      {"name": "fc", "op": "linear", "cout": 5}]}
    return spec, samples[index % len(samples)]


@pytest.fixture
def tiny_plan(monkeypatch):
    """The zoo's networks take seconds each to export; the phase is the same with tiny programs."""
    calls = []

    def plan(n_train, n_holdout, n_unseen, seed=0, resolutions=None, n_operator=0):
        calls.append((n_train, n_holdout, n_unseen, seed))
        return [tiny(i) for i in range(n_train + n_holdout + n_unseen)]

    monkeypatch.setattr(program_zoo, "program_plan", plan)
    monkeypatch.setattr(program_session, "program_counts", lambda n: (n, 1, 1) if n else (0, 0, 0))
    monkeypatch.setattr(program_session, "operator_count", lambda n: 0)
    return calls


class PteDevice(LocalDevice):
    """The local device, recording the .pte runner lines it runs; optionally reporting another default."""

    def __init__(self, default_threads=None, **kw):
        super().__init__(**kw)
        self.forced_default = default_threads
        self.program_lines = []

    def program_runner_info(self):
        header = super().program_runner_info()
        return {**header, "default_threads": self.forced_default} if self.forced_default else header

    def run_programs(self, lines, runner_args=()):
        lines = list(lines)
        self.program_lines.extend(lines)
        yield from super().run_programs(lines, runner_args)


def profile(device, path, **kw):
    kw = {"budget": 2, "holdout": 1, "rounds": 2, "programs": 2, "runner_args": FAST, **kw}
    return session.profile(device, path, **kw)


def _program_ids(path):
    with ProfileStore(path) as store:
        return [programs.program_id(r["spec"]) for r in store.programs()]  # exports are named by spec


def assert_programs_once_per_round(store, rounds):
    planned = {r["program_id"] for r in store.programs()}
    seen = [(r["program_id"], r["round"]) for r in store.program_rounds()]
    assert len(seen) == len(set(seen))
    assert set(seen) == {(p, r) for p in planned for r in range(rounds)}


def test_profile_exports_each_program_once_and_times_it_in_every_round(tmp_path, tiny_plan, monkeypatch):
    exports = []
    real_export = program_build.export_pte
    monkeypatch.setattr(program_build, "export_pte",
                        lambda spec, path, seed=0: exports.append(spec["name"]) or real_export(spec, path, seed))
    device = PteDevice()
    ticks = []
    summary = profile(device, tmp_path / "p", progress=lambda done, total, info: ticks.append((done, total, info)))
    with ProfileStore(tmp_path / "p") as store:
        rows = store.programs()
        assert len(rows) == 4 and {r["sample"] for r in rows} == {"train", "holdout", "unseen"}
        assert_programs_once_per_round(store, 2)
        assert sorted(exports) == sorted(r["name"] for r in rows)
        for row in rows:
            pte = tmp_path / "p" / "programs" / f"{programs.program_id(row['spec'])}.pte"
            assert pte.read_bytes()[4:8] == b"ET12" and row["partitions"] == 1 and row["undelegated_ops"] == []
        assert not [p for p in (tmp_path / "p" / "programs").iterdir() if not p.name.endswith(".pte")
                    or p.name.startswith(".")]
        measured = store.program_measurements()
        assert len(measured) == 4 and all(m["rounds"] == 2 and m["latency_us"] > 0 for m in measured)
        # exported after the layers' first round; each program round between the layers' round of its index and
        # the next
        layers = [[r["measured_at"] for r in store.rounds() if r["round"] == i] for i in range(2)]
        timed = [[r["measured_at"] for r in store.program_rounds() if r["round"] == i] for i in range(2)]
        files = [p.stat().st_mtime for p in (tmp_path / "p" / "programs").iterdir()]
        assert max(layers[0]) < min(files) <= max(files) < min(timed[0])
        assert max(timed[0]) < min(layers[1]) and max(layers[1]) < min(timed[1])
        threads = store.get_meta("threads")
        assert store.get_meta("runtime") == "executorch" and store.get_meta("program_runner")["name"] == "ptebench"
        assert store.get_meta("program_params") == {"programs": 2, "holdout": 1, "unseen": 1, "operator": 0,
                                                      "sizes": None}
        assert {r["threads"] for r in store.plan()} == {threads} == {r["threads"] for r in rows}
    assert threads == 1  # the Python API keeps 1 unless told None (the device default)
    assert {line["threads"] for line in device.program_lines} == {1}
    assert summary.programs == 4 and summary.program_measured == 8 and summary.program_failures == 0
    assert summary.programs_exported == 4 and summary.program_new_results == 8 and summary.programs_note is None
    done, total, _ = ticks[-1]
    assert done == total == summary.measured + 4 + 8
    assert any(info.get("phase") == "export" for _, _, info in ticks)
    assert any(info.get("phase") == "programs" and info.get("round") == 1 for _, _, info in ticks)

    exports.clear()
    again = profile(PteDevice(), tmp_path / "p")
    assert again.program_new_results == 0 and again.new_results == 0 and exports == []
    more = profile(PteDevice(), tmp_path / "p", rounds=3, programs=3)  # a third round and one more program
    with ProfileStore(tmp_path / "p") as store:
        assert_programs_once_per_round(store, 3)
        assert len(store.programs()) == 5 and more.program_new_results == 5 * 3 - 8 and len(exports) == 1
    with pytest.raises(session.ProfileParamsError, match="--programs 3 and a rerun may raise it but not lower it"):
        profile(PteDevice(), tmp_path / "p", rounds=3, programs=1)
    skipped = profile(PteDevice(), tmp_path / "p", rounds=3, programs=0)  # 0 skips, whatever was planned
    assert skipped.program_new_results == 0 and skipped.programs == 5


def test_interrupted_program_round_resumes_with_each_result_exactly_once(tmp_path, tiny_plan):
    class Dropping(PteDevice):
        address = "tcp:10.0.0.9:5555"
        left = 3

        def run_programs(self, lines, runner_args=()):
            for result in super().run_programs(lines, runner_args):
                if Dropping.left == 0:
                    raise DeviceDisconnected("the connection to tcp:10.0.0.9:5555 dropped")
                Dropping.left -= 1
                yield result

    with pytest.raises(DeviceDisconnected, match="saved in .*rerun the same command to resume"):
        profile(Dropping(), tmp_path / "p", programs=3)
    with ProfileStore(tmp_path / "p") as store:
        first = {(r["program_id"], r["round"]): r["measured_at"] for r in store.program_rounds()}
        # the drop came in the first program round, right after the layers' first round and before their second
        assert len(first) == 3 and {r["round"] for r in store.rounds()} == {0}
        assert len(store.measurements()) == len(store.plan()) and len(store.programs()) == 5
    Dropping.left = 10 ** 6
    resumed = profile(Dropping(), tmp_path / "p", programs=3)
    with ProfileStore(tmp_path / "p") as store:
        assert_programs_once_per_round(store, 2)
        kept = {(r["program_id"], r["round"]): r["measured_at"] for r in store.program_rounds()}
        assert all(kept[k] == v for k, v in first.items())  # what was committed was not measured again
        assert resumed.program_new_results == 2 * 5 - 3 and resumed.new_results == len(store.plan())  # round 1


def test_ctrl_c_during_export_loses_no_finished_file(tmp_path, tiny_plan, monkeypatch):
    real_export = program_build.export_pte
    done = []

    def export(spec, path, seed=0):
        if len(done) == 2:
            Path(path).write_bytes(b"half")  # a file being written when Ctrl-C lands
            raise KeyboardInterrupt
        done.append(spec["name"])
        return real_export(spec, path, seed)

    monkeypatch.setattr(program_build, "export_pte", export)
    with pytest.raises(KeyboardInterrupt):
        profile(PteDevice(), tmp_path / "p", programs=3)
    folder = tmp_path / "p" / "programs"
    finished = sorted(p.name for p in folder.glob("*.pte") if not p.name.startswith("."))
    assert len(finished) == 2 and all(p.read_bytes()[4:8] == b"ET12" for p in folder.glob("[!.]*.pte"))
    monkeypatch.setattr(program_build, "export_pte", lambda spec, path, seed=0: done.append(spec["name"])
                        or real_export(spec, path, seed))
    assert len(list(folder.glob(".*.tmp.pte"))) == 1  # the file cut short never took a program's name
    profile(PteDevice(), tmp_path / "p", programs=3)
    assert len(done) == 5 and len(set(done)) == 5  # the two finished exports were not redone
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{r}.pte" for r in _program_ids(tmp_path / "p"))
    with ProfileStore(tmp_path / "p") as store:
        assert_programs_once_per_round(store, 2)


def test_threads_default_to_what_executorch_uses_on_the_device(tmp_path, tiny_plan):
    device = PteDevice(default_threads=2)
    profile(device, tmp_path / "p", threads=None, rounds=1)
    with ProfileStore(tmp_path / "p") as store:
        assert store.get_meta("threads") == 2 and store.get_meta("plan_params")["threads"] == 2
        assert {r["threads"] for r in store.plan()} == {2} and {r["threads"] for r in store.programs()} == {2}
        assert store.get_meta("program_runner")["default_threads"] == 2
        assert all(m["threads"] == 2 for m in store.measurements())
    assert {line["threads"] for line in device.program_lines} == {2}
    # a rerun keeps the profile's count, even when the runner would now say otherwise
    assert profile(PteDevice(default_threads=3), tmp_path / "p", threads=None, rounds=1).threads == 2

    class NoPrograms(LocalDevice):
        def runner_info(self):
            return {**super().runner_info(), "default_threads": 3}

        def program_runner_info(self):
            raise DeviceError("The .pte runner is not built; run `make runner` first.")

    summary = session.profile(NoPrograms(), tmp_path / "q", budget=2, holdout=1, rounds=1, threads=None,
                              programs=2, runner_args=FAST)
    assert summary.threads == 3 and summary.program_measured == 0
    assert summary.programs_note == ("whole programs cannot be measured on local: The .pte runner is not built; "
                                     "run `make runner` first")
    assert program_session.default_threads(type("Bare", (LocalDevice,), {"runner_info": lambda self: {}})(), None) == 1


def test_a_device_or_host_that_cannot_run_programs_keeps_the_layer_profile(tmp_path, tiny_plan, monkeypatch):
    class Refusing(PteDevice):
        def run_programs(self, lines, runner_args=()):
            raise DeviceError("The .pte runner is not in the bundle on this phone; run `make runner-android`.")
            yield

    summary = profile(Refusing(), tmp_path / "p", rounds=1)
    assert summary.programs_note.startswith("whole programs were not measured on local: The .pte runner is not")
    assert summary.measured == summary.configurations > 0 and summary.program_measured == 0
    with ProfileStore(tmp_path / "p") as store:
        assert len(store.measurements()) == len(store.plan()) and store.program_rounds() == []

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch"
                        else real_find(name, *a))
    summary = profile(PteDevice(), tmp_path / "q", rounds=1)
    assert summary.programs_note.startswith("this installation has no executorch") and summary.measured > 0
    monkeypatch.undo()


def test_a_program_that_fails_to_export_is_an_error_in_every_round(tmp_path, tiny_plan, monkeypatch):
    real_export = program_build.export_pte

    def export(spec, path, seed=0):
        if spec["name"] == "tiny1":
            raise program_build.ProgramBuildError("ExecuTorch export of program 'tiny1' failed (Boom: no)")
        return real_export(spec, path, seed)

    monkeypatch.setattr(program_build, "export_pte", export)
    summary = profile(PteDevice(), tmp_path / "p", programs=2)
    with ProfileStore(tmp_path / "p") as store:
        errors = store.program_errors()
        assert [e["round"] for e in errors] == [0, 1] and {e["name"] for e in errors} == {"tiny1"}
        assert "host export failed: ExecuTorch export of program 'tiny1' failed" in errors[0]["error"]
        assert_programs_once_per_round(store, 2)
        assert len(store.program_measurements()) == 3
    assert summary.program_failures == 2


def test_zoo_plan_sizes_follow_programs():
    assert program_session.program_counts(0) == (0, 0, 0)
    assert program_session.program_counts(120) == (120, 40, 40)
    assert program_session.program_counts(6) == (6, 10, 10)
    assert program_session.program_counts(45) == (45, 15, 15)
    assert [program_session.operator_count(n) for n in (0, 3, 40, 120)] == [0, 3, 40, 120]


def test_jcw_profile_measures_programs_at_the_runtime_default_threads(tmp_path, tiny_plan, capsys):
    from jcw.__main__ import main
    default = LocalDevice().program_runner_info()["default_threads"]
    argv = ["profile", "--device", "local", "--out", str(tmp_path / "p"), "--budget", "2", "--holdout", "1",
            "--rounds", "1", "--programs", "1", "--sparse-programs", "0", *(f"--runner-arg={a}" for a in FAST)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "whole programs planned (ExecuTorch)" in out and "program results (all rounds)" in out
    assert "jcw profile:" not in err
    with ProfileStore(tmp_path / "p") as store:
        assert store.get_meta("threads") == default == store.get_meta("plan_params")["threads"]
        assert len(store.program_measurements()) == 3 and {r["threads"] for r in store.programs()} == {default}
    # an explicit --threads that differs from the profile's is refused, as for layers
    assert main(argv + ["--threads", str(default + 1)]) == 2
    assert f"--threads {default} (you asked for {default + 1})" in capsys.readouterr().err


def test_jcw_profile_on_a_device_without_programs_says_so_and_keeps_layers(tmp_path, tiny_plan, capsys, monkeypatch):
    from jcw.__main__ import main

    class Refusing(LocalDevice):
        def run_programs(self, lines, runner_args=()):
            raise DeviceError("The .pte runner is missing on this phone; run `make runner-android`.")

    monkeypatch.setattr(session, "open_device", lambda address: Refusing())
    status = main(["profile", "--device", "local", "--out", str(tmp_path / "p"), "--budget", "2", "--holdout", "1",
                   "--rounds", "1", "--programs", "1", "--sparse-programs", "0", *(f"--runner-arg={a}" for a in FAST)])
    out, err = capsys.readouterr()
    assert status == 0 and "results measured (all rounds)" in out
    sentences = [line for line in err.splitlines() if line.startswith("jcw profile:")]
    assert len(sentences) == 1 and "The .pte runner is missing on this phone" in sentences[0]
    assert "the layer profile is complete" in sentences[0] and "Traceback" not in err


@pytest.mark.slow
def test_exports_run_in_parallel_worker_processes_and_each_lands_once(tmp_path, tiny_plan, monkeypatch):
    monkeypatch.setattr(program_export, "EXPORT_WORKERS", 2)
    summary = profile(PteDevice(), tmp_path / "p", rounds=1)  # real exports, in two spawned workers
    with ProfileStore(tmp_path / "p") as store:
        rows = store.program_measurements()
        assert len(rows) == 4 and all(r["latency_us"] > 0 for r in rows) and not store.program_errors()
        assert summary.programs_exported == 4
        assert all(r["partitions"] == 1 for r in rows)
    files = sorted(p.name for p in (tmp_path / "p" / "programs").iterdir())
    assert len(files) == 4 and all(name.endswith(".pte") and not name.startswith(".") for name in files)


def test_program_sizes_are_fixed_when_the_programs_are_first_planned(tmp_path, tiny_plan):
    profile(PteDevice(), tmp_path / "p", rounds=1, program_sizes=[48, 32])
    with ProfileStore(tmp_path / "p") as store:
        assert store.get_meta("program_params")["sizes"] == [32, 48]
    with pytest.raises(session.ProfileParamsError, match="--program-sizes 32,48"):
        profile(PteDevice(), tmp_path / "p", rounds=1, program_sizes=[64])
