"""Exit statuses a script can tell apart (README "Errors, limits and what is kept"): bad input, a device
failure and an interrupted run each end `jcw` with their own status and one sentence; and the loose ends
of issue 12 that end in one sentence too: duplicate layer ids in `jcw measure`, a failing acquisition
plug-in."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jcw.__main__ import EXIT_DEVICE, EXIT_INTERRUPTED, EXIT_OK, EXIT_RESULTS_FAILED, EXIT_USAGE, exit_status_of, main
from jcw.android_harness.device import DeviceDisconnected, DeviceError, DeviceNotFound, DeviceUsageError
from jcw.profiler import acquisition
from jcw.profiler import cli as profiler_cli
from jcw.profiler.program_session import PteError
from jcw.profiler.store import ProfileStore, StoreDamaged
from jcw.search.errors import DeviceMeasureError, SearchError

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--runner-arg=--warmup=0", "--runner-arg=--min-reps=1", "--runner-arg=--max-reps=1",
        "--runner-arg=--min-time-ms=0", "--runner-arg=--check-samples=0"]
LAYER = {"op": "conv", "cin": 4, "cout": 4, "k": 3, "stride": 1, "h": 6, "w": 6}


def test_the_statuses_are_distinct_and_keep_their_old_meanings():
    statuses = [EXIT_OK, EXIT_RESULTS_FAILED, EXIT_USAGE, EXIT_DEVICE, EXIT_INTERRUPTED]
    assert len(set(statuses)) == len(statuses)
    assert (EXIT_OK, EXIT_RESULTS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED) == (0, 1, 2, 130)  # what scripts relied on


@pytest.mark.parametrize("error, status", [
    (DeviceNotFound("No device answers at tcp:x:1."), EXIT_DEVICE),
    (DeviceDisconnected("The link dropped."), EXIT_DEVICE),
    (DeviceError("The runner crashed."), EXIT_DEVICE),
    (DeviceMeasureError("the .pte could not be measured"), EXIT_DEVICE),
    (DeviceUsageError("'x' is not a device address."), EXIT_USAGE),      # a DeviceError, but the user's mistake
    (PteError("m.pte is not an ExecuTorch program"), EXIT_USAGE),          # a DeviceError too: the file's fault
    (SearchError("--pop must be at least 4"), EXIT_USAGE),
    (StoreDamaged("profile.sqlite is damaged"), EXIT_USAGE),
])
def test_each_error_ends_with_its_status_and_one_sentence(error, status, monkeypatch, capsys):
    def handler(args):
        raise error
    monkeypatch.setattr(profiler_cli, "cmd_devices", handler)
    assert exit_status_of(error) == status
    assert main(["devices"]) == status
    err = capsys.readouterr().err
    assert err == f"jcw devices: {error}\n"


def test_ctrl_c_is_interrupted_and_a_bug_stays_a_traceback(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(profiler_cli, "cmd_devices", interrupted)
    assert main(["devices"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "jcw devices: interrupted.\n"

    def bug(args):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(profiler_cli, "cmd_devices", bug)
    with pytest.raises(ZeroDivisionError):  # no stage phrased it: hiding it behind a status would hide the bug
        main(["devices"])


# ---- the real command, as a script sees it ---------------------------------------------------------
def jcw(*argv, home: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "jcw", *map(str, argv)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def one_sentence(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_usage_device_and_address_mistakes_exit_apart(tmp_path):
    layers = tmp_path / "layers.jsonl"
    layers.write_text(json.dumps(LAYER) + "\n")
    usage = jcw("measure", "--device", "local", "--layers", layers, "--impl", "fastest", home=tmp_path)
    assert usage.returncode == EXIT_USAGE and "invalid choice" in one_sentence(usage)
    address = jcw("measure", "--device", "tcp:no such host", "--layers", layers, home=tmp_path)
    assert address.returncode == EXIT_USAGE and "is not a device address" in one_sentence(address)
    device = f"tcp:127.0.0.1:{free_port()}"  # nothing listens there
    unreachable = jcw("measure", "--device", device, "--layers", layers, home=tmp_path)
    assert unreachable.returncode == EXIT_DEVICE and f"No device answers at {device}" in one_sentence(unreachable)


def test_measure_refuses_layers_that_share_an_id(tmp_path, capsys):
    layers = tmp_path / "layers.jsonl"
    rows = [{"id": "a", **LAYER}, {"id": "b", **LAYER, "cout": 8}, {"id": "a", **LAYER, "op": "dwconv"}]
    layers.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["measure", "--device", "local", "--layers", str(layers)]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "layers 1 and 3 share the id 'a'" in err


# ---- acquisition plug-ins --------------------------------------------------------------------------
def broken_plugin(candidates, measured, n, seed):
    raise RuntimeError("model not fitted\nsee the log")


def test_a_plug_in_that_raises_is_one_sentence_naming_it():
    name = f"{broken_plugin.__module__}:broken_plugin"
    with pytest.raises(acquisition.AcquisitionError) as caught:
        acquisition.choose(broken_plugin, [{"op": "conv"}], [], 1, 0)
    message = str(caught.value)
    assert f"the acquisition plug-in '{name}' failed (RuntimeError: model not fitted see the log)" in message
    assert "\n" not in message


def test_jcw_profile_adaptive_with_a_broken_plug_in_keeps_the_profile(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(acquisition, "load_chooser", lambda name=acquisition.DEFAULT_NAME: broken_plugin)
    monkeypatch.setattr(profiler_cli, "load_chooser", lambda name=acquisition.DEFAULT_NAME: broken_plugin)
    out = tmp_path / "p"
    status = main(["profile", "--device", "local", "--out", str(out), "--adaptive", "--budget", "8", "--holdout", "0",
                   "--rounds", "1", "--programs", "0", *FAST])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and " configs " not in line]
    assert status == EXIT_USAGE and len(err) == 1, err
    assert err[0].startswith("jcw profile: the acquisition plug-in") and "broken_plugin' failed" in err[0]
    with ProfileStore(out, readonly=True) as store:  # the first half, measured before the plug-in ran, stays
        assert len(store.measurements()) > 0
