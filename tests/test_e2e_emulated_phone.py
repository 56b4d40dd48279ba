"""`jcw profile / measure / devices` end to end against `jcw emulate`, each in its own process as a user
would run them: the real arm64 bundle pushed over ADB and run under qemu, the phone's facts in the
profile, a dropped link, a reboot and a vanished phone mid-run, each configuration measured once.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from jcw.android_harness.adb_keys import load_signers
from jcw.android_harness.emulator import EmulatedPhone
from jcw.profiler.store import ProfileStore

pytestmark = [pytest.mark.device, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "android_harness" / "native" / "build" / "android-arm64"
# qemu runs the runner some 20x slower than native: one timed run per line keeps a profile near a minute.
FAST = ["--runner-arg=--warmup=0", "--runner-arg=--min-reps=1", "--runner-arg=--max-reps=1",
        "--runner-arg=--min-time-ms=0", "--runner-arg=--check-samples=0"]
PROFILE_TIMEOUT = 360
# A phone nothing else describes, so its facts can only have come from the emulated phone: 4 little
# cores and 2 big ones (the runner must be pinned to cores 4-5).
PHONE = {
    "serial": "ACME0042",
    "props": {"ro.product.model": "Rocket 7 Pro", "ro.product.manufacturer": "Acme",
              "ro.product.brand": "acme", "ro.product.name": "rocket7", "ro.product.device": "rocket7",
              "ro.soc.model": "AR-9000", "ro.soc.manufacturer": "AcmeSilicon", "ro.board.platform": "ar9k",
              "ro.build.version.release": "13", "ro.build.version.sdk": "33", "ro.serialno": "ACME0042"},
    "cores": [{"max_khz": 1700000, "cur_khz": 900000, "governor": "schedutil"}] * 4
             + [{"max_khz": 3100000, "cur_khz": 3100000, "governor": "schedutil"}] * 2,
    "thermal_zones": [{"type": "cpu-big", "temp_mc": 47250}, {"type": "battery", "temp_mc": 30100}],
    "battery": {"capacity": 53, "status": "Discharging"},
}
RESULT_KEYS = {"id", "impl", "threads", "us_min", "us_median", "us_mean", "us_std", "reps", "max_abs_err"}

if not (BUNDLE / "manifest.json").exists():
    pytest.fail(f"the arm64 bundle is missing at {BUNDLE}: run `make -C android_harness/native android`",
                pytrace=False)


# ---- processes and their environment -------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One cache for every test's emulator, so its exec shim is compiled once, not in the user's ~/.cache."""
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture
def user_env(tmp_path, shared_cache):
    """A user whose HOME (hence ~/.android/adbkey and ~/.config/jcw) is a temporary directory."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("ANDROID_USER_HOME", "ANDROID_SDK_HOME", "ADB_VENDOR_KEYS", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(shared_cache),
               COLUMNS="200", PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1")
    return env


def jcw_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "jcw", *argv]


def run_jcw(env, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(jcw_command(*argv), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def kill_processes_naming(marker: str) -> None:
    """Kill (by pid) what the emulator started for this test and left behind: commands naming its sandbox."""
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


class Emulator:
    """`jcw emulate` in its own process, on a fixed port and sandbox so it can come back after a stop."""

    def __init__(self, env, workdir: Path, port: int, *flags: str, phone: dict | None = PHONE):
        self.env, self.workdir, self.port, self.flags = env, workdir, port, flags
        self.sandbox = workdir / "phone"
        self.phone_file = workdir / "phone.json"
        self.phone_file.write_text(json.dumps(phone or {}))
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def device(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> Emulator:
        self.starts += 1
        self.log = self.workdir / f"emulate-{self.starts}.out"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                jcw_command("emulate", "--port", str(self.port), "--sandbox", str(self.sandbox),
                            "--phone", str(self.phone_file), *self.flags),
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while f"serving 127.0.0.1:{self.port}" not in self.log.read_text():
            if self.process.poll() is not None:
                pytest.fail(f"jcw emulate exited with {self.process.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"jcw emulate did not start serving within {timeout} s:\n{self.log.read_text()}")
            time.sleep(0.2)
        return self

    def stop(self) -> str:
        """SIGTERM (the phone goes away: connections cut, its commands ended); returns what it printed."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        kill_processes_naming(str(self.sandbox))
        return self.log.read_text() if self.starts else ""


@pytest.fixture
def emulators(user_env, tmp_path):
    started: list[Emulator] = []

    def make(*flags: str, phone: dict | None = PHONE, port: int | None = None) -> Emulator:
        emulator = Emulator(user_env, tmp_path, port or free_port(), *flags, phone=phone)
        started.append(emulator)
        return emulator.start()

    yield make
    for emulator in started:
        emulator.stop()


# ---- reading what a run left behind --------------------------------------------------------------
def summary_value(stdout: str, label: str) -> str:
    """A row of `jcw profile`'s summary table."""
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line) if c.strip()]
        if len(cells) == 2 and cells[0] == label:
            return cells[1]
    raise AssertionError(f"no {label!r} row in the summary table:\n{stdout}")


def extra_measurements(stdout: str) -> int:
    """Configurations a drift-flagged batch sent back for one more measurement (by design, not a repeat)."""
    match = re.fullmatch(r"(\d+) \((\d+) configs\)", summary_value(stdout, "drift-flagged batches (re-measured once)"))
    assert match, stdout
    return int(match.group(2))


def stored_rounds(out: Path) -> dict[tuple[str, int], float]:
    """(config, round) -> measured_at, read-only while another process may be writing."""
    if not (out / "profile.sqlite").exists():
        return {}
    try:
        db = sqlite3.connect(f"file:{out / 'profile.sqlite'}?mode=ro", uri=True, timeout=10)
        try:
            return {(c, r): at for c, r, at in db.execute("SELECT config_id, round, measured_at FROM measurement")}
        finally:
            db.close()
    except sqlite3.Error:
        return {}


def assert_every_configuration_once(out: Path, rounds: int = 1) -> int:
    """Every planned configuration has exactly one good result per round; returns the plan size."""
    with ProfileStore(out) as store:
        plan = [row["config_id"] for row in store.plan()]
        rows = store.rounds()
        assert store.errors() == [], store.errors()[:3]
        per_key = Counter((row["config_id"], row["round"]) for row in rows)
        assert set(per_key) == {(config, r) for config in plan for r in range(rounds)}
        assert max(per_key.values()) == 1
        assert all(store.pending(r) == [] for r in range(rounds))
        assert all(row["us_min"] and row["us_min"] > 0 for row in rows)
    return len(plan)


def assert_measured_once_this_run(stdout: str, missing_before: int) -> None:
    """The run reported each missing configuration once (plus only drift's deliberate re-measurements)."""
    assert int(summary_value(stdout, "new results this run")) == missing_before + extra_measurements(stdout), stdout


def installed_bundle(sandbox: Path) -> Path:
    """The bundle directory on the emulated phone: every manifest file, byte-identical to the build."""
    manifest = json.loads((BUNDLE / "manifest.json").read_text())["files"]
    found = sorted((sandbox / "data" / "local" / "tmp").rglob("convbench"))
    assert len(found) == 1, f"expected one installed runner under /data/local/tmp, found {found}"
    installed = found[0].parent
    for name, digest in manifest.items():
        assert hashlib.sha256((installed / name).read_bytes()).hexdigest() == digest, name
    return installed


def profile_command(device: str, out: Path, budget: int = 6) -> list[str]:
    return ["profile", "--device", device, "--out", str(out), "--budget", str(budget), "--rounds", "1",
            "--holdout", "3", "--programs", "0", *FAST]


def assert_clean_stderr(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr


# ---- the tests ---------------------------------------------------------------------------------------
def test_profile_over_tcp_fills_a_profile_with_the_emulated_phones_facts(emulators, tmp_path, user_env):
    phone = emulators()
    out = tmp_path / "p"
    result = run_jcw(user_env, *profile_command(phone.device, out), timeout=PROFILE_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_clean_stderr(result)

    planned = assert_every_configuration_once(out)
    assert_measured_once_this_run(result.stdout, planned)
    assert int(summary_value(result.stdout, "results measured (all rounds)")) == planned
    with ProfileStore(out) as store:
        facts, runner = store.get_meta("device_facts"), store.get_meta("runner")
        layers = Counter(row["sample"] for row in {row["config_id"].rsplit("|", 2)[0]: row
                                                   for row in store.plan()}.values())
        assert store.get_meta("device_address") == phone.device
    assert (facts["model"], facts["manufacturer"], facts["brand"]) == ("Rocket 7 Pro", "Acme", "acme")
    assert facts["soc"]["model"] == "AR-9000" and facts["soc"]["manufacturer"] == "AcmeSilicon"
    assert (facts["android_release"], facts["sdk"], facts["abi"]) == ("13", 33, "arm64-v8a")
    assert facts["cpu_count"] == 6 and facts["pinned_cpus"] == [4, 5] and facts["pinning"] == "taskset"
    assert facts["battery"]["level"] == 53 and not facts["battery"]["charging"]
    assert {zone["type"]: zone["temp_c"] for zone in facts["thermal"]} == {"cpu-big": 47.25, "battery": 30.1}
    assert runner["arch"] == "aarch64"
    assert layers["prior"] + layers["coverage"] + layers["random"] == 6 and layers["holdout"] >= 1, layers  # --budget 6

    # The real bundle went to the phone's /data/local/tmp, and the run's plan files were cleaned up.
    installed = installed_bundle(phone.sandbox)
    assert installed.is_relative_to(phone.sandbox / "data" / "local" / "tmp")
    assert not list(installed.parent.glob("run-*")), list(installed.parent.iterdir())


def test_a_connection_dropped_mid_batch_still_measures_every_configuration_once(emulators, tmp_path, user_env):
    # The first batch is 8 configurations between two reference lines: the cut lands inside it.
    phone = emulators("--drop-at-line", "5")
    out = tmp_path / "p"
    result = run_jcw(user_env, *profile_command(phone.device, out), timeout=PROFILE_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_clean_stderr(result)
    planned = assert_every_configuration_once(out)
    assert_measured_once_this_run(result.stdout, planned)
    printed = phone.stop()
    assert re.search(r"faults fired\s*[│|]\s*drop_at_line=5", printed), printed   # the cut really happened
    served = re.search(r"connections served\s*[│|]\s*(\d+)", printed)
    assert served and int(served.group(1)) >= 2, printed                          # ... and was reconnected


def wait_for_results(process: subprocess.Popen, out: Path, at_least: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(stored_rounds(out)) < at_least:
        if process.poll() is not None:
            stdout, stderr = process.communicate()
            pytest.fail(f"jcw profile ended ({process.returncode}) before {at_least} results:\n{stderr[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {at_least} results after {timeout} s")
        time.sleep(0.3)


def finish(process: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"jcw profile did not end within {timeout} s after the phone went away:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def reboot_over_adb(port: int, home: Path) -> None:
    """What `adb reboot` does: open the reboot: service (the phone cuts every connection as it goes down)."""
    from adb_shell.adb_device import AdbDeviceTcp
    adb = AdbDeviceTcp("127.0.0.1", port, default_transport_timeout_s=20)
    adb.connect(rsa_keys=load_signers(home / ".android" / "adbkey"), auth_timeout_s=20)
    try:
        adb.reboot()
    except Exception:  # the phone may cut the link before acknowledging; the reboot is what matters
        pass
    finally:
        adb.close()


def test_reboot_and_vanished_phone_end_the_run_clearly_and_rerunning_completes_it(emulators, tmp_path, user_env):
    phone = emulators()
    out = tmp_path / "p"
    # Large enough that the run is still going after two interruptions of 10 and 8 results.
    command = jcw_command(*profile_command(phone.device, out, budget=24))
    running: list[subprocess.Popen] = []

    def start_profile() -> subprocess.Popen:
        running.append(subprocess.Popen(command, cwd=ROOT, env=user_env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
        return running[-1]

    try:
        # 1. The phone reboots mid-run: the run stops with a sentence saying so; results so far are kept.
        first = start_profile()
        wait_for_results(first, out, at_least=10)
        reboot_over_adb(phone.port, Path(user_env["HOME"]))
        ended = finish(first)
        assert ended.returncode != 0, ended.stdout
        assert_clean_stderr(ended)
        assert "rebooted" in ended.stderr and "resume" in ended.stderr, ended.stderr[-2000:]
        print("after the reboot:", ended.stderr.splitlines()[-1])
        kept_after_reboot = stored_rounds(out)
        assert len(kept_after_reboot) >= 10

        # 2. Rerun; this time the phone vanishes (emulator gone, nothing listening) mid-run.
        second = start_profile()
        wait_for_results(second, out, at_least=len(kept_after_reboot) + 8)
        phone.stop()
        ended = finish(second)
        assert ended.returncode != 0, ended.stdout
        assert_clean_stderr(ended)
        message = [line for line in ended.stderr.splitlines() if line.startswith("jcw profile:")]
        assert len(message) == 1 and "Lost the connection" in message[0] and "resume" in message[0], ended.stderr
        print("after the phone vanished:", message[0])
        kept_after_vanish = stored_rounds(out)
        assert len(kept_after_vanish) > len(kept_after_reboot)

        # 3. The phone is back (same address, its /data kept): the same command completes the profile.
        phone.start()
        third = start_profile()
        done = finish(third, timeout=PROFILE_TIMEOUT)
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert done.returncode == 0, done.stderr[-3000:]
    assert_clean_stderr(done)
    planned = assert_every_configuration_once(out)
    assert_measured_once_this_run(done.stdout, planned - len(kept_after_vanish))
    final = stored_rounds(out)
    # Nothing measured before an interruption was measured again by a rerun.
    assert {k: final[k] for k in kept_after_reboot} == kept_after_reboot
    assert {k: final[k] for k in kept_after_vanish} == kept_after_vanish
    installed_bundle(phone.sandbox)  # the reboot wiped /data/local/tmp; a rerun installed the runner again


def test_measure_prints_one_runner_line_per_layer_and_implementation(emulators, tmp_path, user_env):
    phone = emulators()
    layers = [{"id": "conv3", "op": "conv", "cin": 8, "cout": 16, "k": 3, "h": 10, "w": 10, "density": 0.4},
              {"id": "dw", "op": "dwconv", "cin": 12, "cout": 12, "k": 3, "stride": 2, "h": 9, "w": 9},
              {"id": "fc", "op": "conv", "cin": 32, "cout": 10, "k": 1, "h": 1, "w": 1, "density": 0.25}]
    path = tmp_path / "layers.jsonl"
    path.write_text("".join(json.dumps(layer) + "\n" for layer in layers))
    result = run_jcw(user_env, "measure", "--device", phone.device, "--layers", str(path), "--json", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_clean_stderr(result)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert sorted((r["id"], r["impl"]) for r in lines) == [("conv3", "dense"), ("conv3", "sparse"), ("dw", "dense"),
                                                           ("fc", "dense"), ("fc", "sparse")]
    for line in lines:
        assert RESULT_KEYS <= set(line), line
        assert line.get("error") is None and line["threads"] == 1 and line["reps"] >= 1, line
        assert 0 < line["us_min"] <= line["us_median"] and line["max_abs_err"] < 1e-2, line
    installed_bundle(phone.sandbox)


def test_devices_lists_an_added_tcp_phone_in_the_users_own_config(user_env, tmp_path):
    # Only reachability matters here, so the phone runs in this process (a `jcw emulate` costs ~8 s to start).
    with EmulatedPhone(sandbox=tmp_path / "phone", port=0) as emulated:
        listed, phone_device, nobody = _add_and_list(user_env, f"tcp:127.0.0.1:{emulated.port}")
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in re.split(r"[│|┃]", line) if c.strip()] for line in listed.stdout.splitlines())
            if cells}
    assert rows.get("local", [None])[0] == "local", listed.stdout
    assert rows[phone_device][:2] == ["tcp", "reachable"], listed.stdout
    assert rows[nobody][:2] == ["tcp", "unreachable"], listed.stdout


def _add_and_list(user_env, phone_device: str):
    nobody = f"tcp:127.0.0.1:{free_port()}"
    for address in (phone_device, nobody):
        added = run_jcw(user_env, "devices", "--add", address)
        assert added.returncode == 0, added.stderr
    registry = Path(user_env["XDG_CONFIG_HOME"]) / "jcw" / "devices.json"   # the temporary user's, not ours
    assert json.loads(registry.read_text())["tcp"] == [phone_device, nobody]
    listed = run_jcw(user_env, "devices")
    assert listed.returncode == 0, listed.stderr
    assert_clean_stderr(listed)
    return listed, phone_device, nobody
