"""`jcw profile / measure / devices`: killed halfway and rerun, bad input as one sentence, output formats."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jcw.__main__ import main
from jcw.android_harness.runner import HOST_BINARY
from jcw.profiler import acquisition, session
from jcw.profiler.store import ProfileStore

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--runner-arg=--warmup=0", "--runner-arg=--min-reps=2", "--runner-arg=--min-time-ms=0",
        "--runner-arg=--check-samples=4"]
LAYERS = [{"id": "c1", "op": "conv", "cin": 8, "cout": 16, "k": 3, "h": 8, "w": 8, "density": 0.3},
          {"id": "d1", "op": "dwconv", "cin": 8, "cout": 8, "k": 3, "h": 8, "w": 8}]


@pytest.fixture(scope="module", autouse=True)
def runner_built():
    if not os.access(HOST_BINARY, os.X_OK):
        pytest.fail(f"the host runner {HOST_BINARY} is not built; run `make -C android_harness/native host` "
                    f"(make test builds it first)")


def run_cli(capsys, *argv):
    """Run `jcw ARGV` in this process; returns (exit status, stdout, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse's own usage errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_sentence(status, err, *words):
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("usage:")
             and not line.startswith(" ") and " configs " not in line]  # usage and the progress bar aside
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]


def write_layers(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- killed halfway, then rerun --------------------------------------------------------------
def count_results(out):
    try:
        db = sqlite3.connect(f"file:{out / 'profile.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM measurement").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def start_profile(out):
    # settle rounds off: these tests count the base rounds exactly (tests/test_settle.py covers settling)
    command = [sys.executable, "-m", "jcw", "profile", "--device", "local", "--out", str(out), "--budget", "6",
               "--rounds", "2", "--programs", "0", "--settle-cap", "0", "--runner-arg=--warmup=0",
               "--runner-arg=--min-reps=2", "--runner-arg=--min-time-ms=8"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def interrupt_after(out, at_least, sig, timeout=120):
    process = start_profile(out)
    deadline = time.monotonic() + timeout
    while count_results(out) < at_least:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the profile made no progress"
        time.sleep(0.02)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


@pytest.mark.slow
def test_profile_killed_halfway_then_rerun_measures_everything_exactly_once(tmp_path):
    out = tmp_path / "prof"
    status, err = interrupt_after(out, 20, signal.SIGINT)
    assert status == 130 and "interrupted; everything measured so far is saved in" in err and "Traceback" not in err
    assert "rerun the same command to resume" in err
    with ProfileStore(out) as store:
        first = {(r["config_id"], r["round"]): r["measured_at"] for r in store.rounds()}
        total = 2 * len(store.plan())
    assert 20 <= len(first) < total

    status, _ = interrupt_after(out, len(first) + 20, signal.SIGKILL)
    assert status == -signal.SIGKILL
    with ProfileStore(out) as store:
        second = {(r["config_id"], r["round"]): r["measured_at"] for r in store.rounds()}
    assert len(second) < total and set(first) <= set(second)

    done = subprocess.run([sys.executable, "-m", "jcw", "profile", "--device", "local", "--out", str(out),
                           "--budget", "6", "--rounds", "2", "--programs", "0", "--settle-cap", "0", *FAST],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "results measured (all rounds)" in done.stdout
    with ProfileStore(out) as store:
        rows = store.rounds()
        keys = [(r["config_id"], r["round"]) for r in rows]
        assert len(keys) == len(set(keys)) == total
        assert {c for c, _ in keys} == {r["config_id"] for r in store.plan()}
        # what the killed runs committed was kept, not measured again (unless drift re-queued its batch)
        flagged = {b["batch"] for b in store.drift_batches()}
        kept = {(r["config_id"], r["round"]): r["measured_at"] for r in rows}
        unchanged = sum(kept[k] == v for k, v in second.items())
        assert unchanged >= len(second) - sum(1 for r in rows if r["batch"] in flagged) - 40


# ---- profile: summary, CSV and bad input --------------------------------------------------------
def test_profile_prints_summary_and_exports_csv(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(session, "DRIFT_THRESHOLD", 10.0)
    status, out, err = run_cli(capsys, "profile", "--device", "local", "--out", str(tmp_path / "p"), "--budget", "2",
                               "--holdout", "2", "--rounds", "1", "--programs", "0", "--csv",
                               str(tmp_path / "all.csv"), *FAST)
    assert status == 0, err
    with ProfileStore(tmp_path / "p") as store:
        n = len(store.plan())
    assert "results measured (all rounds)" in out and f"wrote {n} rows" in out
    assert len((tmp_path / "all.csv").read_text().splitlines()) == n + 1


def test_profile_bad_input_is_one_sentence(tmp_path, capsys, monkeypatch):
    status, _, err = run_cli(capsys, "profile", "--device", "local", "--out", str(tmp_path / "p"), "--budget", "0")
    assert_one_sentence(status, err, "--budget", "expected a number >= 1, got '0'")
    status, _, err = run_cli(capsys, "profile", "--device", "local", "--out", str(tmp_path / "p"), "--seed", "x")
    assert_one_sentence(status, err, "--seed", "expected a whole number")
    status, _, err = run_cli(capsys, "profile", "--device", "local", "--out", str(tmp_path / "p"), "--holdout", "9999")
    assert_one_sentence(status, err, "--holdout", "expected at most 3000")
    status, _, err = run_cli(capsys, "profile", "--device", "local", "--out", str(tmp_path / "p"), "--unseen", "-2")
    assert_one_sentence(status, err, "--unseen", "expected a number >= 0")
    status, _, err = run_cli(capsys, "profile", "--device", "tcp:bad host", "--out", str(tmp_path / "p"))
    assert_one_sentence(status, err, "is not a device address")
    (tmp_path / "afile").write_text("x")
    status, _, err = run_cli(capsys, "profile", "--device", "local", "--out", str(tmp_path / "afile"))
    assert_one_sentence(status, err, "exists and is not a directory")
    monkeypatch.setattr(acquisition.metadata, "entry_points", lambda group: [])
    status, _, err = run_cli(capsys, "profile", "--device", "local", "--out", str(tmp_path / "p"), "--adaptive")
    assert_one_sentence(status, err, "needs an acquisition plug-in")
    monkeypatch.undo()

    monkeypatch.setattr(session, "DRIFT_THRESHOLD", 10.0)
    status, _, err = run_cli(capsys, "profile", "--device", "local", "--out", str(tmp_path / "p"), "--budget", "2",
                             "--holdout", "2", "--rounds", "1", "--programs", "0", *FAST)
    assert status == 0, err
    status, _, err = run_cli(capsys, "profile", "--device", "local", "--out", str(tmp_path / "p"), "--budget", "2",
                             "--holdout", "2", "--rounds", "1", "--seed", "3", "--programs", "0", *FAST)
    assert_one_sentence(status, err, "was planned with --seed 0 (you asked for 3)")
    status, _, err = run_cli(capsys, "profile", "--device", "local", "--out", str(tmp_path / "q"), "--budget", "2",
                             "--rounds", "1", "--runner-arg=--min-reps=zero")
    assert_one_sentence(status, err, "fails before measuring anything")


# ---- measure ----------------------------------------------------------------------------------
def test_measure_json_prints_one_result_line_per_layer_and_impl(tmp_path, capsys):
    layers = write_layers(tmp_path / "layers.jsonl", LAYERS)
    status, out, err = run_cli(capsys, "measure", "--device", "local", "--layers", str(layers), "--json", *FAST)
    assert status == 0, err
    results = [json.loads(line) for line in out.splitlines()]
    assert [(r["id"], r["impl"]) for r in results] == [("c1", "dense"), ("c1", "sparse"), ("d1", "dense")]
    assert all(set(r) >= {"us_min", "us_median", "us_mean", "us_std", "reps", "max_abs_err"} for r in results)
    status, out, _ = run_cli(capsys, "measure", "--device", "local", "--layers", str(layers), "--impl", "dense", *FAST)
    assert status == 0 and "c1" in out and "d1" in out and "sparse" not in out and "3 measurements" not in out


def test_measure_bad_input_is_one_sentence(tmp_path, capsys):
    status, _, err = run_cli(capsys, "measure", "--device", "local", "--layers", str(tmp_path / "none.jsonl"))
    assert_one_sentence(status, err, "cannot read layer file")
    bad = write_layers(tmp_path / "bad.jsonl", [LAYERS[0], {**LAYERS[0], "cin": -3}])
    status, _, err = run_cli(capsys, "measure", "--device", "local", "--layers", str(bad))
    assert_one_sentence(status, err, "bad.jsonl:2:", "'cin' must be >= 1, got -3")
    layers = write_layers(tmp_path / "layers.jsonl", LAYERS)
    status, _, err = run_cli(capsys, "measure", "--device", "local", "--layers", str(layers), "--impl", "sparse")
    assert_one_sentence(status, err, "cannot measure a dwconv layer")
    status, _, err = run_cli(capsys, "measure", "--device", "local", "--layers", str(layers), "--impl", "fast")
    assert status == 2 and "invalid choice: 'fast'" in err and "Traceback" not in err


# ---- devices ----------------------------------------------------------------------------------
def test_devices_lists_local_and_remembers_tcp_phones(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    status, out, _ = run_cli(capsys, "devices")
    assert status == 0 and "local" in out
    status, out, _ = run_cli(capsys, "devices", "--add", "tcp:127.0.0.1:5599")
    assert status == 0 and "tcp:127.0.0.1:5599" in out and "unreachable" in out
    status, out, _ = run_cli(capsys, "devices", "--remove", "tcp:127.0.0.1:5599")
    assert status == 0 and "removed" in out
    status, _, err = run_cli(capsys, "devices", "--remove", "tcp:127.0.0.1:5599")
    assert_one_sentence(status, err, "is not in the list of known TCP phones")
    status, _, err = run_cli(capsys, "devices", "--add", "usb:ABC")
    assert_one_sentence(status, err, "is not a TCP device address")


def test_a_ctrl_c_is_remembered_even_if_its_exception_is_swallowed():
    from jcw.profiler.cli_display import CtrlC

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever runs pytest
    with CtrlC() as ctrl_c:
        ctrl_c.check()  # nothing yet
        try:  # what a garbage-collector finalizer does with an exception: drop it
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # a SIGINT a background script ignores stays ignored
        with CtrlC():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, outer)
