"""Each phone problem provoked for real against the emulated phone, through the `jcw` command run as its
own process: one sentence on stderr, a non-zero exit, no traceback, nothing printed as if it had worked.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jcw.__main__ import EXIT_DEVICE
from jcw.android_harness.emulator import EmulatedPhone, Faults
from jcw.android_harness.emulator.phone import DEFAULT_DESCRIPTION

pytestmark = pytest.mark.device

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def user_env(tmp_path):
    """A user whose HOME (hence ~/.android/adbkey and ~/.config/jcw) is a temporary directory."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("ANDROID_USER_HOME", "ANDROID_SDK_HOME", "ADB_VENDOR_KEYS", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), PYTHONIOENCODING="utf-8")
    return env


def jcw(env, command: str, device: str, tmp_path: Path, timeout: float = 150) -> subprocess.CompletedProcess:
    if command == "profile":
        argv = ["profile", "--device", device, "--out", str(tmp_path / "profile"), "--budget", "4"]
    else:
        layers = tmp_path / "layers.jsonl"
        layers.write_text(json.dumps({"op": "conv", "cin": 4, "cout": 4, "k": 3, "h": 6, "w": 6}) + "\n")
        argv = ["measure", "--device", device, "--layers", str(layers), "--json"]
    return subprocess.run([sys.executable, "-m", "jcw", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_sentence(result: subprocess.CompletedProcess, command: str, *phrases: str) -> str:
    """Every problem here is the phone's, not the command's: the device-failure exit status."""
    assert result.returncode == EXIT_DEVICE, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # the authorisation countdown (issue 14) is progress, not an error: the error is the last line alone
    lines = [line for line in lines if not line.lstrip("\r").startswith("waiting for you to allow USB debugging")]
    assert len(lines) == 1, result.stderr
    sentence = lines[0]
    assert sentence.startswith(f"jcw {command}: ") and sentence.endswith("."), sentence
    for phrase in phrases:
        assert phrase in sentence, sentence
    assert result.stdout.strip() == "", result.stdout   # no table, no result lines: nothing was measured
    return sentence


@pytest.mark.parametrize("command", ["profile", "measure"])
def test_nothing_listening_is_no_device(user_env, tmp_path, command):
    device = f"tcp:127.0.0.1:{free_port()}"
    result = jcw(user_env, command, device, tmp_path)
    assert_one_sentence(result, command, f"No device answers at {device}")
    assert not (tmp_path / "profile").exists()


@pytest.mark.slow  # the client waits, as adb does, for someone to tap "Allow" on the phone (30 s)
def test_refused_key_is_unauthorized_and_the_key_is_the_users_own(user_env, tmp_path):
    with EmulatedPhone(sandbox=tmp_path / "phone", port=0, auth="refuse") as phone:
        device = f"tcp:127.0.0.1:{phone.port}"
        result = jcw(user_env, "profile", device, tmp_path)
    assert_one_sentence(result, "profile", f"The device at {device} did not authorize this computer",
                        "Allow USB debugging")
    key = Path(user_env["HOME"]) / ".android" / "adbkey"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (key.parent / "adbkey.pub").exists()


def test_a_phone_that_is_not_arm64_is_refused(user_env, tmp_path):
    description = copy.deepcopy(DEFAULT_DESCRIPTION)
    description["props"].update({"ro.product.cpu.abi": "x86_64", "ro.product.cpu.abilist": "x86_64,x86"})
    description["kernel"]["machine"] = "x86_64"
    with EmulatedPhone(sandbox=tmp_path / "phone", port=0, phone=description) as phone:
        device = f"tcp:127.0.0.1:{phone.port}"
        result = jcw(user_env, "profile", device, tmp_path)
        nothing_installed = not (phone.data_dir / "jcw").exists()
    assert_one_sentence(result, "profile", f"The device at {device} reports ABI x86_64", "arm64")
    assert nothing_installed


def test_a_full_disk_is_reported(user_env, tmp_path):
    with EmulatedPhone(sandbox=tmp_path / "phone", port=0, faults=Faults(disk_full=True)) as phone:
        device = f"tcp:127.0.0.1:{phone.port}"
        result = jcw(user_env, "profile", device, tmp_path)
    assert_one_sentence(result, "profile", f"The device at {device} has no space left", "free some storage")


def _deny_writes(directory: Path) -> bool:
    """Make a directory unwritable for real: immutable for root (who ignores modes), mode 0555 otherwise."""
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(directory)], capture_output=True).returncode:
            return False
    else:
        directory.chmod(0o555)
    try:
        (directory / "probe").write_text("x")
    except OSError:
        return True
    (directory / "probe").unlink()
    return False


def _allow_writes(directory: Path) -> None:
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run([shutil.which("chattr"), "-i", str(directory)], capture_output=True)
    directory.chmod(0o755)


def test_an_unwritable_data_local_tmp_is_reported(user_env, tmp_path):
    sandbox = tmp_path / "phone"
    tmp_dir = sandbox / "data" / "local" / "tmp"
    tmp_dir.mkdir(parents=True)
    try:
        if not _deny_writes(tmp_dir):
            pytest.skip(f"cannot make {tmp_dir} unwritable here (root without a working `chattr +i`), so an "
                        f"unwritable /data/local/tmp cannot be provoked")
        with EmulatedPhone(sandbox=sandbox, port=0) as phone:
            device = f"tcp:127.0.0.1:{phone.port}"
            result = jcw(user_env, "profile", device, tmp_path)
    finally:
        _allow_writes(tmp_dir)
    assert_one_sentence(result, "profile", f"/data/local/tmp on the device at {device} is not writable")
    assert list(tmp_dir.iterdir()) == []
