"""The device lab on a local Ray cluster (profiler.lab_ray): a head and two worker "hosts", each `jcw lab serve`
in its own process group serving emulated phones; three phones profiled in parallel, one host killed halfway,
served again, and a rerun that completes every profile with each configuration measured exactly once."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jcw.android_harness.emulator import EmulatedPhone
from jcw.profiler.store import ProfileStore
from test_lab import FAST, assert_every_configuration_once, describe

pytest.importorskip("ray", reason="the lab extra (`make setup` installs it)")
pytestmark = [pytest.mark.device, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PROFILE_FLAGS = ["--budget", "8", "--rounds", "1", "--holdout", "2", "--unseen", "0", "--programs", "0",
                 "--sparse-programs", "0", "--settle-cap", "0", *(f"--runner-arg={flag}" for flag in FAST)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Host:
    """`jcw lab serve` in its own process group: killing the group is a host going away."""

    def __init__(self, env: dict, log: Path, *args: str):
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "jcw", "lab", "serve", *args], cwd=ROOT, env=env,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while "serving" not in log.read_text():
            assert self.process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM to `jcw lab serve` (it stops its Ray node), then whatever of the group is left is killed."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


@pytest.fixture
def lab_env(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "ANDROID_USER_HOME": str(home / ".android"), "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"}


@pytest.fixture
def phones(tmp_path, lab_env, monkeypatch):
    monkeypatch.setenv("ANDROID_USER_HOME", lab_env["ANDROID_USER_HOME"])
    started = [EmulatedPhone(sandbox=tmp_path / serial, port=0, phone=describe(serial, model)).start()
               for serial, model in (("LABA01", "Lab Alpha"), ("LABB02", "Lab Beta"), ("LABC03", "Lab Gamma"))]
    yield started
    for phone in started:
        phone.stop()


def jcw(env, *argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "jcw", *map(str, argv)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def new_this_run(stdout: str) -> dict[str, int]:
    """serial -> `new this run` of the lab's per-phone table."""
    found = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) >= 8 and cells[1].startswith("LAB"):
            found[cells[1]] = int(cells[6]) if cells[6].isdigit() else None
    return found


def test_three_phones_on_two_hosts_survive_a_killed_host(phones, tmp_path, lab_env):
    port = free_port()
    address = f"127.0.0.1:{port}"
    devices = [f"tcp:{p.address}" for p in phones]
    hosts = []
    try:
        hosts.append(Host(lab_env, tmp_path / "head.log", "--head", "--port", str(port)))
        hosts.append(Host(lab_env, tmp_path / "host1.log", "--address", address, "--device", devices[0],
                          "--device", devices[1]))
        hosts.append(Host(lab_env, tmp_path / "host2.log", "--address", address, "--device", devices[2]))

        state = json.loads(jcw(lab_env, "lab", "status", "--address", address, "--json").stdout)
        assert sum(host["alive"] for host in state["hosts"]) == 3
        by_serial = {s: p["node_id"] for s, p in state["phones"].items()}
        assert by_serial["LABA01"] == by_serial["LABB02"] != by_serial["LABC03"]  # each on its own host

        for bad, sentence in ((["--device", "NOPE"], "no host of the Ray cluster serves a phone with serial 'NOPE'"),
                              (["--device", "LABA01", "--device", "LABA01"], "the phone LABA01 is named twice")):
            refused = jcw(lab_env, "lab", "profile", "--address", address, "--out", tmp_path / "x", *bad)
            assert refused.returncode == 2 and sentence in refused.stderr and "Traceback" not in refused.stderr

        root = tmp_path / "lab"
        first = subprocess.Popen([sys.executable, "-m", "jcw", "lab", "profile", "--address", address, "--out",
                                  str(root), *PROFILE_FLAGS], cwd=ROOT, env=lab_env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        gamma = root / "Lab-Gamma-LABC03"
        deadline = time.monotonic() + 180
        while _stored(gamma) < 3:  # halfway: some of its configurations are in, not all
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.2)
        hosts[2].kill()
        stdout, stderr = first.communicate(timeout=300)
        assert first.returncode == 3, stderr
        assert "Lab Gamma LABC03" in stderr and "its host left the Ray cluster" in stderr
        assert "Traceback" not in stderr
        with ProfileStore(gamma) as store:
            missing = len(store.plan()) - len(store.rounds())
        assert missing > 0  # the kill landed halfway

        hosts[2] = Host(lab_env, tmp_path / "host2-again.log", "--address", address, "--device", devices[2])
        rerun = jcw(lab_env, "lab", "profile", "--address", address, "--out", root, *PROFILE_FLAGS)
        assert rerun.returncode == 0, rerun.stderr
        fresh = new_this_run(rerun.stdout)
        assert fresh["LABA01"] == 0 and fresh["LABB02"] == 0, rerun.stdout  # nothing measured twice
        assert fresh["LABC03"] >= missing
        for name in ("Lab-Alpha-LABA01", "Lab-Beta-LABB02", "Lab-Gamma-LABC03"):
            assert assert_every_configuration_once(root / name) > 0

        state = json.loads(jcw(lab_env, "lab", "status", "--address", address, "--json").stdout)
        assert {s: j["state"] for s, j in state["jobs"].items()} == dict.fromkeys(("LABA01", "LABB02", "LABC03"),
                                                                                    "done")
        for serial, job in state["jobs"].items():  # each job ran on the host that serves its phone
            assert job["node_id"] == state["phones"][serial]["node_id"]
    finally:
        for host in reversed(hosts):
            host.stop()


def _stored(profile: Path) -> int:
    if not (profile / "profile.sqlite").exists():
        return 0
    try:
        with ProfileStore(profile, readonly=True) as store:
            return len(store.rounds())
    except Exception:  # being created by the other process this very moment
        return 0
