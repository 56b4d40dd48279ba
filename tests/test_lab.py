"""The device lab on one host (profiler.lab): phones named and checked, each phone profiled by its own worker
process into its own directory, a killed worker resumed, a phone that goes away reported while the others
finish; and the lab's bad input, each one sentence and a non-zero exit."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from jcw.android_harness.emulator import EmulatedPhone
from jcw.android_harness.emulator.phone import DEFAULT_DESCRIPTION
from jcw.profiler import lab
from jcw.profiler.lab import LabUsageError, PhoneId
from jcw.profiler.store import ProfileStore

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--warmup=0", "--min-reps=1", "--max-reps=1", "--min-time-ms=0", "--check-samples=0"]
OPTIONS = {"budget": 4, "rounds": 1, "holdout": 2, "unseen": 0, "programs": 0, "sparse_programs": 0,
           "settle_cap": 0, "threads": 1, "runner_args": [token for flag in FAST for token in flag.split("=")]}


def describe(serial: str, model: str) -> dict:
    """The default emulated phone under another serial and model."""
    return {**DEFAULT_DESCRIPTION, "serial": serial,
            "props": {**DEFAULT_DESCRIPTION["props"], "ro.product.model": model, "ro.serialno": serial}}


@pytest.fixture
def user_home(tmp_path, monkeypatch):
    """Worker processes inherit the environment: a private ADB key, not the user's ~/.android."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("ANDROID_USER_HOME", str(home / ".android"))
    return home


@pytest.fixture
def phones(tmp_path, user_home):
    """Three emulated phones with their own serials and models."""
    started = []
    for serial, model in (("LABA01", "Lab Alpha"), ("LABB02", "Lab Beta"), ("LABC03", "Lab Gamma")):
        phone = EmulatedPhone(sandbox=tmp_path / serial, port=0, phone=describe(serial, model)).start()
        started.append(phone)
    yield started
    for phone in started:
        phone.stop()


def assert_every_configuration_once(out: Path) -> int:
    with ProfileStore(out) as store:
        plan = [row["config_id"] for row in store.plan()]
        per_key = Counter((row["config_id"], row["round"]) for row in store.rounds())
        assert store.errors() == []
        assert set(per_key) == {(config, 0) for config in plan} and max(per_key.values()) == 1
    return len(plan)


class Recorder(lab.Display):
    """Remembers what the lab showed; `on_progress` lets a test act mid-run."""

    def __init__(self, on_progress=None):
        self.states: dict[str, list[str]] = {}
        self.on_progress = on_progress

    def state(self, serial, text):
        self.states.setdefault(serial, []).append(text)

    def progress(self, serial, done, total, what):
        if self.on_progress is not None:
            self.on_progress(serial, done)


# ---- naming the phones ---------------------------------------------------------------------------
LISTED = [{"address": "local", "kind": "local", "state": "ready"},
          {"address": "usb:R58M12", "kind": "usb", "state": "ready"},
          {"address": "tcp:10.0.0.7:5555", "kind": "tcp", "state": "reachable"},
          {"address": "tcp:10.0.0.8:5555", "kind": "tcp", "state": "unreachable"}]


def test_all_names_every_usable_phone_and_not_this_machine():
    assert lab.expand_devices(["all"], LISTED) == ["usb:R58M12", "tcp:10.0.0.7:5555"]
    assert lab.expand_devices(["R58M12", "10.0.0.9:5555"], LISTED) == ["usb:R58M12", "tcp:10.0.0.9:5555"]


def test_an_unknown_serial_a_phone_named_twice_and_an_empty_lab_are_one_sentence_each():
    with pytest.raises(LabUsageError, match=r"no phone with serial 'NOPE' is attached to this host"):
        lab.expand_devices(["usb:R58M12", "NOPE"], LISTED)
    with pytest.raises(LabUsageError, match=r"the phone tcp:10.0.0.7:5555 is named twice"):
        lab.expand_devices(["tcp:10.0.0.7:5555", "10.0.0.7:5555"], LISTED)
    with pytest.raises(LabUsageError, match=r"named twice"):
        lab.expand_devices(["all", "R58M12"], LISTED)
    with pytest.raises(LabUsageError, match=r"--device all found no phone"):
        lab.expand_devices(["all"], LISTED[:1])


def test_profile_directories_are_named_from_model_and_serial():
    assert PhoneId("usb:X1", "X1", "Pixel 7 Pro").dir_name == "Pixel-7-Pro-X1"
    assert PhoneId("usb:X1", "X1", "../..").dir_name == "phone-X1"  # never a path outside the lab


def run_jcw(*argv, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "jcw", *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def one_sentence(result, status):
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


def test_same_phone_twice_on_the_command_line_is_refused_before_anything_runs(tmp_path, user_home):
    line = one_sentence(run_jcw("profile", "--device", "tcp:127.0.0.1:9", "--device", "127.0.0.1:9",
                                "--out", tmp_path / "lab", env=dict(os.environ)), 2)
    assert line == ("jcw profile: the phone tcp:127.0.0.1:9 is named twice; name each phone once, as each has one "
                    "profile and one runner at a time.")
    assert not (tmp_path / "lab").exists()


def test_an_unreachable_ray_cluster_is_one_sentence(tmp_path, user_home):
    pytest.importorskip("ray", reason="the lab extra is part of make setup")
    line = one_sentence(run_jcw("lab", "status", "--address", "127.0.0.1:9", env=dict(os.environ)), 3)
    assert line.startswith("jcw lab: no Ray cluster answers at 127.0.0.1:9 (")
    assert line.endswith("start one with `ray start --head` there, or check --address.")


HIDE_RAY = textwrap.dedent("""
    import sys
    from importlib.machinery import PathFinder

    class HideRay(PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            return None if name.partition(".")[0] == "ray" else super().find_spec(name, path, target)

    sys.meta_path[:] = [HideRay if finder is PathFinder else finder for finder in sys.meta_path]
    from jcw.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")


def test_without_the_lab_extra_jcw_lab_says_so_and_the_one_host_lab_still_parses(user_home):
    done = subprocess.run([sys.executable, "-c", HIDE_RAY, "lab", "status", "--address", "127.0.0.1:9"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = one_sentence(done, 2)
    assert "needs the lab extra, which brings Ray: pip install 'jcw[lab]'" in line
    helped = subprocess.run([sys.executable, "-c", HIDE_RAY, "lab", "profile", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--address" in helped.stdout


# ---- the lab at work: emulated phones ------------------------------------------------------------
@pytest.mark.device
@pytest.mark.slow
def test_three_phones_profile_in_parallel_each_into_its_own_directory(phones, tmp_path, user_home):
    root = tmp_path / "lab"
    done = run_jcw("profile", *(arg for p in phones for arg in ("--device", f"tcp:{p.address}")), "--out", root,
                   "--budget", 4, "--rounds", 1, "--holdout", 2, "--unseen", 0, "--programs", 0,
                   "--sparse-programs", 0, "--settle-cap", 0, *(f"--runner-arg={flag}" for flag in FAST),
                   env=dict(os.environ, COLUMNS="200"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(path.name for path in root.iterdir()) == ["Lab-Alpha-LABA01", "Lab-Beta-LABB02",
                                                             "Lab-Gamma-LABC03"]
    for directory in root.iterdir():
        assert assert_every_configuration_once(directory) > 0
        with ProfileStore(directory) as store:
            assert store.get_meta("device_facts")["model"] in directory.name.replace("-", " ")
    for serial in ("LABA01", "LABB02", "LABC03"):  # the per-phone table and the shared display
        assert serial in done.stdout and serial in done.stderr


@pytest.mark.device
@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_resumes_its_phones_profile(phones, tmp_path, user_home):
    identified = lab.identify_all([f"tcp:{p.address}" for p in phones[:2]])
    jobs = lab.profile_jobs(identified, tmp_path / "lab", {**OPTIONS, "budget": 10})
    workers: dict[str, list[int]] = {}
    killed = []

    def kill_once(serial, done):
        if serial == "LABA01" and done >= 3 and not killed:
            killed.append(done)
            os.kill(workers[serial][-1], signal.SIGKILL)

    outcomes = lab.run_lab(jobs, display=Recorder(kill_once), reconnects=1, backoff_s=0.1,
                           on_worker_start=lambda serial, pid: workers.setdefault(serial, []).append(pid))
    assert killed, "the worker finished before it could be killed"
    assert [o.state for o in outcomes] == ["done", "done"]
    assert [o.attempts for o in outcomes] == [2, 1] and len(workers["LABA01"]) == 2
    for job in jobs:
        assert assert_every_configuration_once(Path(job.out_dir)) > 0
    resumed = outcomes[0].result
    assert resumed["new_results"] - resumed["requeued"] < resumed["configurations"]  # it did not start over


@pytest.mark.device
@pytest.mark.slow
def test_a_phone_that_goes_away_is_reported_while_the_others_finish(phones, tmp_path, user_home):
    identified = lab.identify_all([f"tcp:{p.address}" for p in phones])
    jobs = lab.profile_jobs(identified, tmp_path / "lab", {**OPTIONS, "budget": 8})
    gone, unplugged = phones[2], []

    def unplug(serial, done):
        if serial == gone.serial and done >= 2 and not unplugged:
            unplugged.append(done)
            gone.stop()

    recorder = Recorder(unplug)
    outcomes = lab.run_lab(jobs, display=recorder, reconnects=1, backoff_s=0.1)
    assert [o.state for o in outcomes] == ["done", "done", "failed"]
    assert outcomes[2].attempts == 2 and outcomes[2].error.startswith(f"No device answers at tcp:{gone.host}:")
    assert any(text.startswith("dropped (") for text in recorder.states[gone.serial])
    for job in jobs[:2]:
        assert assert_every_configuration_once(Path(job.out_dir)) > 0
    with ProfileStore(jobs[2].out_dir) as store:  # what it measured before it went stays
        assert 0 < len(store.rounds()) < len(store.plan())


@pytest.mark.device
@pytest.mark.slow
def test_measure_times_one_program_on_every_phone_as_a_table_and_as_json(phones, tmp_path, user_home):
    import json

    import torch

    from test_measure_pte import _export
    pte = _export(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()),
                  (torch.randn(1, 3, 8, 8),), tmp_path / "tiny.pte")
    devices = [arg for p in phones[:2] for arg in ("--device", f"tcp:{p.address}")]
    table = run_jcw("measure", "--pte", pte, *devices, env=dict(os.environ, COLUMNS="200"))
    assert table.returncode == 0, table.stderr[-2000:]
    rows = [line for line in table.stdout.splitlines() if "LABA01" in line or "LABB02" in line]
    assert len(rows) == 2 and all("done" in row and "tiny.pte" not in row for row in rows)
    lines = run_jcw("lab", "measure", "--pte", pte, "--json", *devices, env=dict(os.environ))
    results = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [(r["serial"], r["model"]) for r in results] == [("LABA01", "Lab Alpha"), ("LABB02", "Lab Beta")]
    assert all(r["latency_ms"] > 0 and r["pte"] == str(pte) and r["runtime"] == "executorch" for r in results)
    assert {r["device"] for r in results} == {f"tcp:{p.address}" for p in phones[:2]}
