"""`jcw profile` when the fault is not the layers' (issue 14): a failure that hits every line of a batch,
reference layer included, stops the run with that error and a non-zero exit and is never stored, so a
rerun measures those lines; results are counted apart from failures; a run whose every result failed is
not a success; two runs into one directory (two real processes) are refused, naming the holder; the
profile directory is checked before anything connects."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jcw.__main__ import EXIT_DEVICE
from jcw.android_harness.local import LocalDevice
from jcw.profiler import session
from jcw.profiler.batches import SystematicFailure, common_error, error_kind, same_failure
from jcw.profiler.profile_lock import LOCK_NAME, lock_holder
from jcw.profiler.store import ProfileStore

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--warmup", "0", "--min-reps", "1", "--min-time-ms", "0", "--check-samples", "4"]
CLI_FAST = ["--runner-arg=--min-time-ms=1", "--runner-arg=--min-reps=1", "--holdout", "0", "--rounds", "1"]


class ThreadsTypo(LocalDevice):
    """The real runner, sent lines with an impossible thread count: it rejects every one of them
    ("field "threads" must be between 1 and 256, got 1000"), as with the old `jcw profile --threads 1000`."""

    def run_batch(self, plan_lines, runner_args=()):
        return super().run_batch([{**line, "threads": 1000} for line in plan_lines], runner_args)


class OddLayersFail(LocalDevice):
    """Every odd plan line fails in the runner; the reference layer measures: the layers' own failures."""

    def run_batch(self, plan_lines, runner_args=()):
        lines = [line if line["id"].startswith("ref") or int(line["id"][1:]) % 2 == 0 else {**line, "k": 0}
                 for line in plan_lines]
        return super().run_batch(lines, runner_args)


def jcw(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "jcw", *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def sentence(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(autouse=True)
def no_drift(monkeypatch):
    """Counts below are exact only without drift re-measurements (a busy machine flags batches)."""
    monkeypatch.setattr(session, "DRIFT_THRESHOLD", 10.0)


def test_a_failure_of_every_line_stops_the_run_and_is_not_stored(tmp_path):
    out = tmp_path / "p"
    with pytest.raises(SystematicFailure, match=r"every line of a batch failed on local, the reference layer too.*"
                                                r"must be between 1 and 256, got 1000.*rerunning once this is fixed"):
        session.profile(ThreadsTypo(), out, budget=6, rounds=1, holdout=0, runner_args=FAST)
    with ProfileStore(out, readonly=True) as store:
        assert store.errors() == [] and store.rounds() == []  # nothing stored as final
        planned = len(store.plan())
    summary = session.profile(LocalDevice(), out, budget=6, rounds=1, holdout=0, runner_args=FAST)
    assert summary.new_results == planned and summary.new_failures == 0 and summary.failures == 0


def test_the_layers_own_failures_are_stored_and_counted_apart(tmp_path):
    summary = session.profile(OddLayersFail(), tmp_path / "p", budget=6, rounds=1, holdout=0, runner_args=FAST)
    assert summary.new_failures > 0 and summary.new_results > 0 and not summary.all_failed
    assert summary.new_results + summary.new_failures == summary.configurations
    with ProfileStore(tmp_path / "p", readonly=True) as store:
        assert len(store.errors()) == summary.new_failures
    again = session.profile(LocalDevice(), tmp_path / "p", budget=6, rounds=1, holdout=0, runner_args=FAST)
    assert again.new_results == 0 and again.new_failures == 0  # final: not measured again


def test_the_cli_stops_with_one_sentence_and_a_non_zero_exit(tmp_path, monkeypatch, capsys):
    from jcw.__main__ import main
    monkeypatch.setattr(session, "open_device", lambda address: ThreadsTypo())
    status = main(["profile", "--device", "local", "--out", str(tmp_path / "p"), "--budget", "4", "--programs", "0",
                   *CLI_FAST])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and " configs " not in line]
    assert status == EXIT_DEVICE and len(lines) == 1, err  # the runner failed: a device failure, not bad input
    assert lines[0].startswith("jcw profile: every line of a batch failed") and "got 1000" in lines[0]


def test_a_runner_option_that_breaks_every_line_stops_the_cli(tmp_path):
    """A real option the runner accepts at start but no line survives: tolerance 0 fails every check."""
    proc = jcw("profile", "--device", "local", "--out", tmp_path / "p", "--budget", "4", "--programs", "0",
               *CLI_FAST, "--runner-arg=--tolerance=0")
    line = sentence(proc)
    if proc.returncode == 0:  # a batch in which some tiny layer matched its reference exactly
        pytest.fail(f"the run looked like a success: {proc.stdout[-1500:]}")
    assert proc.returncode == EXIT_DEVICE and "the fault is not the layers'" in line and "tolerance 0" in line
    with ProfileStore(tmp_path / "p", readonly=True) as store:
        assert store.errors() == []


def test_parse_time_limits():
    for argv, word in ((["--threads", "1000"], "from 1 to 256"), (["--threads", "257"], "from 1 to 256"),
                       (["--budget", str(10 ** 9)], "--budget"), (["--programs", str(10 ** 6)], "--programs"),
                       (["--rounds", "101"], "--rounds")):
        proc = jcw("profile", "--device", "local", "--out", "/nonexistent/never", *argv)
        assert proc.returncode == 2 and word in sentence(proc), proc.stderr
    with pytest.raises(ValueError, match="threads must be at most 256"):
        session.ProfileParams(threads=1000)


def test_error_kinds():
    assert error_kind("file /a/b/c.pte: 12 MB") == error_kind("file /x/y.pte: 7 MB")
    assert same_failure(["bad g1", "bad g2", "bad g3"]) and not same_failure(["bad g1", "bad g2"])
    assert not same_failure(["bad", "bad", "worse"])
    assert common_error(["a 1.", "b", "a 2"]) == "a 1"


def test_two_profiles_into_one_directory(tmp_path):
    """Two real `jcw profile` processes: the second is refused at once naming the first's PID and host,
    and writes nothing; the first, killed, leaves no lock a third run would trip on."""
    out = tmp_path / "shared"
    argv = ["profile", "--device", "local", "--out", str(out), "--budget", "400", "--programs", "0", *CLI_FAST]
    first = subprocess.Popen([sys.executable, "-m", "jcw", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (lock_holder(out) or {}).get("pid") != first.pid:
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        planned = 0
        while time.monotonic() < deadline and not planned:
            time.sleep(0.05)
            if (out / "profile.sqlite").exists():
                with ProfileStore(out, readonly=True) as store:
                    planned = len(store.plan())
        second = jcw(*argv)
        assert first.poll() is None, "the first run ended before the second tried: make it longer"
        line = sentence(second)
        assert second.returncode == 2
        assert f"PID {first.pid} on host {os.uname().nodename}" in line and "another `jcw profile`" in line
        with ProfileStore(out, readonly=True) as store:
            assert len(store.plan()) == planned
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: no clean-up runs
        first.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid  # the file stays, the lock does not
    third = jcw("profile", "--device", "tcp:127.0.0.1:1", "--out", out, "--budget", "400", "--programs", "0",
                *CLI_FAST)
    assert "No device answers" in sentence(third)  # got past the lock to the device


def test_the_profile_directory_is_checked_before_connecting(tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "profile.sqlite").write_bytes(b"")
    proc = jcw("profile", "--device", "tcp:127.0.0.1:1", "--out", damaged, "--budget", "4")
    assert proc.returncode == 2 and "empty, 0 bytes" in sentence(proc)  # not the unreachable device
    nothing = tmp_path / "a" / "b"
    proc = jcw("profile", "--device", "tcp:127.0.0.1:1", "--out", nothing, "--budget", "4")
    assert "No device answers" in sentence(proc)
    assert not (tmp_path / "a").exists()  # the lock's directories are removed again


class AllLayersFailDifferently(LocalDevice):
    """The reference layer measures, every plan line fails in its own way: the layers' own failures."""

    def run_batch(self, plan_lines, runner_args=()):
        return super().run_batch([line if line["id"].startswith("ref") else {**line, "k": 0}
                                  for line in plan_lines], runner_args)


def test_a_run_whose_every_result_failed_is_not_a_success(tmp_path, monkeypatch, capsys):
    from jcw.__main__ import main
    monkeypatch.setattr(session, "open_device", lambda address: AllLayersFailDifferently())
    status = main(["profile", "--device", "local", "--out", str(tmp_path / "p"), "--budget", "4", "--programs", "0",
                   *CLI_FAST])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and " configs " not in line]
    assert status == 1 and len(lines) == 1, captured.err
    assert "every one of the" in lines[0] and "is a failure" in lines[0]
    assert "new failures this run" in captured.out


# ---- the program phase: no reference line, so identical failures before any success count ------------
def _tiny_program(index):
    return ({"name": f"tiny{index}", "family": "tiny", "input": [1, 3, 8, 8],
             "nodes": [{"name": "c1", "op": "conv", "cout": 4 + index, "k": 3, "act": "relu"},
                       {"name": "pool", "op": "gap"}, {"name": "flat", "op": "flatten"},
                       {"name": "fc", "op": "linear", "cout": 5}]}, "train")


@pytest.fixture
def fake_programs(monkeypatch):
    """Tiny programs whose host export only writes a stand-in file (nothing is timed for real here)."""
    from jcw.profiler import program_build, program_export, program_session, program_zoo
    monkeypatch.setattr(program_zoo, "program_plan",
                        lambda n, h, u, seed=0, resolutions=None, n_operator=0: [_tiny_program(i) for i in range(n)])
    monkeypatch.setattr(program_session, "program_counts", lambda n: (n, 0, 0))
    monkeypatch.setattr(program_export, "EXPORT_WORKERS", 1)
    state = {"fail_export": None}

    def export(spec, path, seed=0):
        if state["fail_export"]:
            raise program_build.ProgramBuildError(state["fail_export"])
        Path(path).write_bytes(b"\0\0\0\0ET12")
        return {"partitions": 1, "undelegated_ops": []}
    monkeypatch.setattr(program_build, "export_pte", export)
    return state


class BrokenPteRunner(LocalDevice):
    def program_runner_info(self):
        return {"name": "ptebench", "version": "0", "executorch": "x", "default_threads": 1}

    def run_programs(self, lines, runner_args=()):
        for line in lines:
            yield {"id": line["id"], "error": f"cannot load {line['pte']}: unknown flag --bogus"}


def test_programs_failing_the_same_way_stop_the_run_unstored(tmp_path, fake_programs):
    with pytest.raises(SystematicFailure, match="every program timed so far failed the same way.*unknown flag"):
        session.profile(BrokenPteRunner(), tmp_path / "p", budget=2, holdout=0, rounds=1, programs=6,
                        runner_args=FAST)
    with ProfileStore(tmp_path / "p", readonly=True) as store:
        assert store.program_errors() == [] and len(store.programs()) == 6
        assert len(store.measurements()) == len(store.plan())  # the layers before it are kept


def test_exports_failing_the_same_way_stop_the_run_unstored(tmp_path, fake_programs):
    fake_programs["fail_export"] = "ExecuTorch export failed (ImportError: no module named flatc)"
    with pytest.raises(SystematicFailure, match="host export of every program so far failed the same way"):
        session.profile(BrokenPteRunner(), tmp_path / "p", budget=2, holdout=0, rounds=1, programs=6,
                        runner_args=FAST)
    with ProfileStore(tmp_path / "p", readonly=True) as store:
        assert store.program_errors() == []
