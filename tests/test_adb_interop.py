"""Interoperability of the emulated phone with a client nobody here wrote: Debian's `adb`.

Each test runs a private adb server (its own port, a temporary HOME so its adbkey is
throw-away) and always kills it afterwards.
"""
from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from jcw.android_harness.emulator import EmulatedPhone
from jcw.android_harness.emulator.phone import DEFAULT_DESCRIPTION

pytestmark = pytest.mark.device
ADB = shutil.which("adb")
if ADB is None:  # a declared apt dependency: say so loudly instead of skipping
    raise RuntimeError("Debian's adb is missing: `make setup` installs it (apt-get install adb)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AdbClient:
    """Runs /usr/bin/adb against a private server."""

    def __init__(self, home: Path):
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "HOME": str(home), "ANDROID_ADB_SERVER_PORT": str(free_port())}
        self.env.pop("ANDROID_USER_HOME", None)
        self.env.pop("ADB_VENDOR_KEYS", None)

    def __call__(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([ADB, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"adb {' '.join(args)} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def state(self, serial: str) -> str:
        for line in self("devices").stdout.splitlines()[1:]:
            if line.startswith(serial + "\t"):
                return line.split("\t")[1]
        return "absent"

    def wait_state(self, serial: str, wanted: str, within_s: float = 10) -> str:
        deadline = time.monotonic() + within_s
        state = self.state(serial)
        while state != wanted and time.monotonic() < deadline:
            time.sleep(0.1)
            state = self.state(serial)
        return state


@pytest.fixture
def adb(tmp_path):
    client = AdbClient(tmp_path / "home")
    client("start-server")
    try:
        yield client
    finally:
        client("kill-server", check=False, timeout=15)


@pytest.fixture
def phone(tmp_path):
    description = copy.deepcopy(DEFAULT_DESCRIPTION)
    description["props"]["ro.product.model"] = "JCW Interop 3"
    with EmulatedPhone(sandbox=tmp_path / "phone", port=0, phone=description) as emulated:
        yield emulated


def test_connect_shell_getprop_and_banner(adb, phone):
    serial = phone.address
    out = adb("connect", serial).stdout
    assert serial in out   # "failed to authenticate" while the 'Allow' prompt is answered, then online
    assert adb.wait_state(serial, "device") == "device"
    assert adb("-s", serial, "shell", "echo", "hi").stdout == "hi\n"
    assert adb("-s", serial, "shell", "getprop ro.product.model").stdout == "JCW Interop 3\n"
    listing = adb("devices", "-l").stdout
    assert "model:JCW_Interop_3" in listing and "device:oriole" in listing
    echoed = adb("-s", serial, "shell", "echo", "x", ">", "/data/local/tmp/y;", "cat", "/data/local/tmp/y")
    assert echoed.stdout == "x\n"


def test_push_pull_round_trip_of_a_multi_megabyte_file(adb, phone, tmp_path):
    serial = phone.address
    adb("connect", serial)
    assert adb.wait_state(serial, "device") == "device"
    original = tmp_path / "random.bin"
    original.write_bytes(os.urandom(6 * 1024 * 1024 + 7))
    pushed = adb("-s", serial, "push", str(original), "/data/local/tmp/rt/random.bin")
    assert "1 file pushed" in pushed.stdout
    assert (phone.data_dir / "rt" / "random.bin").read_bytes() == original.read_bytes()
    back = tmp_path / "back.bin"
    pulled = adb("-s", serial, "pull", "/data/local/tmp/rt/random.bin", str(back))
    assert "1 file pulled" in pulled.stdout
    assert back.read_bytes() == original.read_bytes()
    # A missing remote file is an adb error, not a hang or an empty file.
    missing = adb("-s", serial, "pull", "/data/local/tmp/none", str(tmp_path / "none"), check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr + missing.stdout


def test_arm64_binary_pushed_and_run_through_qemu(adb, phone, tmp_path):
    source = tmp_path / "hi.c"
    source.write_text('#include <stdio.h>\nint main(void) { printf("hello from aarch64\\n"); return 0; }\n')
    binary = tmp_path / "hi"
    subprocess.run(["aarch64-linux-gnu-gcc", "-static", "-O1", "-o", str(binary), str(source)], check=True)
    serial = phone.address
    adb("connect", serial)
    assert adb.wait_state(serial, "device") == "device"
    adb("-s", serial, "push", str(binary), "/data/local/tmp/hi")
    assert adb("-s", serial, "shell", "chmod 755 /data/local/tmp/hi && /data/local/tmp/hi").stdout == \
        "hello from aarch64\n"


def test_preauthorized_key_connects_at_once(adb, tmp_path):
    public = Path(adb.env["HOME"]) / ".android" / "adbkey.pub"
    assert public.exists()                  # created by `adb start-server`
    with EmulatedPhone(sandbox=tmp_path / "p", port=0, auth="listed", authorized_keys=public) as phone:
        assert f"connected to {phone.address}" in adb("connect", phone.address).stdout
        assert adb.wait_state(phone.address, "device") == "device"


def test_refusing_phone_is_reported_unauthorized(adb, tmp_path):
    with EmulatedPhone(sandbox=tmp_path / "p", port=0, auth="refuse") as phone:
        out = adb("connect", phone.address, check=False)
        assert "failed to authenticate" in out.stdout + out.stderr
        assert adb.wait_state(phone.address, "unauthorized", within_s=5) == "unauthorized"
        shell = adb("-s", phone.address, "shell", "echo", "hi", check=False, timeout=20)
        assert shell.returncode != 0 and "unauthorized" in shell.stderr
        assert phone.auth.keys == []


def test_adb_reboot_wipes_tmp_and_comes_back_with_a_new_boot_id(adb, phone):
    serial = phone.address
    adb("connect", serial)
    assert adb.wait_state(serial, "device") == "device"
    boot_id = adb("-s", serial, "shell", "echo x > /data/local/tmp/f; cat /proc/sys/kernel/random/boot_id").stdout
    adb("-s", serial, "reboot")
    deadline = time.monotonic() + 10
    while phone.boot_id == boot_id.strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert phone.boot_id != boot_id.strip()
    adb("connect", serial)                      # adb may already have reconnected by itself
    assert adb.wait_state(serial, "device") == "device"
    after = adb("-s", serial, "shell", "ls /data/local/tmp; cat /proc/sys/kernel/random/boot_id").stdout
    assert after.strip() == phone.boot_id
