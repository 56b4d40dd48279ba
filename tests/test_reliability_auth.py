"""A phone waiting for its owner to allow USB debugging (issue 14): the wait is said at once, with a
countdown, instead of 30 silent seconds; a phone that lets us in at once gets no notice."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jcw.__main__ import EXIT_DEVICE
from jcw.android_harness.adb_errors import DeviceUnauthorized
from jcw.android_harness.connect import StderrCountdown, auth_wait_text, open_device
from jcw.android_harness.emulator import EmulatedPhone

pytestmark = pytest.mark.device
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A user whose ~/.android/adbkey is new, so the phone is asked to trust it."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("ANDROID_USER_HOME", "ANDROID_SDK_HOME", "ADB_VENDOR_KEYS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def test_the_wait_is_said_at_once_and_counted_down(home, tmp_path):
    calls = []
    start = time.monotonic()
    with EmulatedPhone(sandbox=tmp_path / "phone", port=0, auth="refuse") as phone:
        with pytest.raises(DeviceUnauthorized, match="did not authorize"):
            open_device(f"tcp:127.0.0.1:{phone.port}", timeouts={"auth_s": 3},
                        auth_notice=lambda left: calls.append((time.monotonic() - start, left)))
    assert calls and calls[0][0] < 1.5 and calls[0][1] == 3  # at once (after a half-second grace)
    assert [left for _, left in calls][:3] == [3, 2, 1]  # then 0, unless the refusal is said first


def test_a_phone_that_accepts_at_once_gets_no_notice(home, tmp_path):
    calls = []
    with EmulatedPhone(sandbox=tmp_path / "phone", port=0, auth="accept") as phone:
        device = open_device(f"tcp:127.0.0.1:{phone.port}", auth_notice=calls.append)
        device.close()
    assert calls == []


def test_the_terminal_countdown_rewrites_one_line_and_erases_it():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    notice = StderrCountdown(stream)
    for left in (30, 29, 28):
        notice(left)
    notice.done()
    assert stream.getvalue().count("\r\033[K") == 4 and auth_wait_text(28) in stream.getvalue()
    log = io.StringIO()
    notice = StderrCountdown(log)
    for left in range(30, -1, -1):
        notice(left)
    assert log.getvalue().splitlines() == [auth_wait_text(n) for n in (30, 20, 10)]


def test_jcw_profile_says_it_is_waiting_before_giving_up(home, tmp_path):
    with EmulatedPhone(sandbox=tmp_path / "phone", port=0, auth="refuse") as phone:
        env = {**os.environ, "JCW_ADB_AUTH_S": "3"}
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "jcw", "profile", "--device", f"tcp:127.0.0.1:{phone.port}",
                                 "--out", str(tmp_path / "p"), "--budget", "4"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = proc.stderr.readline()
        said_at = time.monotonic() - start
        rest = proc.stderr.read()
        proc.wait(timeout=60)
    assert first.strip() == auth_wait_text(3), first + rest
    assert said_at < 15  # python start-up and imports, then at once (was: nothing for 30 s)
    assert proc.returncode == EXIT_DEVICE and "Traceback" not in rest
    assert [line for line in rest.splitlines() if line.strip()][-1].startswith(
        f"jcw profile: The device at tcp:127.0.0.1:{phone.port} did not authorize this computer")
    assert not (tmp_path / "p").exists()
