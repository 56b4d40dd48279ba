"""The emulated phone at protocol level, driven by the real adb-shell client library.

Covers the handshake and the three auth policies, legacy shell, sync v1 (push, pull,
stat, list), OKAY-based flow control seen from a raw socket, sandbox confinement,
arm64 execution through qemu, fault injection, reboot, shutdown and `jcw emulate`.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from adb_shell import exceptions as adb_exc
from adb_shell.adb_device import AdbDeviceTcp
from adb_shell.auth.keygen import keygen
from adb_shell.auth.sign_pythonrsa import PythonRSASigner

from jcw.android_harness.emulator import AndroidPublicKey, EmulatedPhone, KeyFormatError
from jcw.android_harness.emulator import messages as m
from jcw.android_harness.emulator.phone import DEFAULT_DESCRIPTION, DescriptionError, Phone
from jcw.android_harness.emulator.shell import rewrite_command

pytestmark = pytest.mark.device
REPO = Path(__file__).resolve().parents[1]
# Errors adb-shell raises when the device end of a TCP connection goes away.
CONNECTION_ERRORS = (adb_exc.TcpTimeoutException, adb_exc.AdbConnectionError, adb_exc.InvalidResponseError,
                     adb_exc.AdbTimeoutError, ConnectionError, OSError, struct.error)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    base = tmp_path_factory.mktemp("keys")
    signers = []
    for name in ("trusted", "stranger"):
        keygen(str(base / name))
        signers.append(PythonRSASigner.FromRSAKeyPath(str(base / name)))
    return {"trusted": signers[0], "stranger": signers[1], "dir": base}


@pytest.fixture
def phone(tmp_path):
    with EmulatedPhone(sandbox=tmp_path / "phone", port=0) as emulated:
        yield emulated


def connect(phone: EmulatedPhone, signer, auth_timeout_s: float = 3.0) -> AdbDeviceTcp:
    device = AdbDeviceTcp(phone.host, phone.port, default_transport_timeout_s=10)
    device.connect(rsa_keys=[signer], auth_timeout_s=auth_timeout_s)
    return device


# -- handshake and auth ---------------------------------------------------------------------------
def test_accepts_a_new_key_and_then_knows_it(phone, keys):
    device = connect(phone, keys["trusted"])
    assert device.available
    assert device.shell("echo hi") == "hi\n"
    device.close()
    assert phone.auth.keys == [AndroidPublicKey.parse(keys["trusted"].GetPublicKey())]
    # The second time the key signs the token: no new key is offered and none is added.
    connect(phone, keys["trusted"]).close()
    assert len(phone.auth.keys) == 1


def test_refuse_mode_never_lets_a_host_in(tmp_path, keys):
    with EmulatedPhone(sandbox=tmp_path / "p", port=0, auth="refuse") as phone:
        with pytest.raises((adb_exc.DeviceAuthError, adb_exc.AdbTimeoutError, adb_exc.TcpTimeoutException)):
            connect(phone, keys["trusted"], auth_timeout_s=0.5)
        assert phone.auth.keys == []


def test_listed_mode_trusts_only_the_listed_key(tmp_path, keys):
    authorized = tmp_path / "adb_keys"
    authorized.write_text(keys["trusted"].GetPublicKey() + "\n# a comment line\n")
    with EmulatedPhone(sandbox=tmp_path / "p", port=0, auth="listed", authorized_keys=authorized) as phone:
        device = connect(phone, keys["trusted"])
        assert device.shell("getprop ro.product.model") == "Pixel 6\n"
        device.close()
        with pytest.raises((adb_exc.DeviceAuthError, adb_exc.AdbTimeoutError, adb_exc.TcpTimeoutException)):
            connect(phone, keys["stranger"], auth_timeout_s=0.5)
        assert len(phone.auth.keys) == 1


def test_accepted_keys_are_remembered_in_the_sandbox_like_adb_keys(tmp_path, keys):
    sandbox = tmp_path / "p"
    with EmulatedPhone(sandbox=sandbox, port=0) as phone:
        connect(phone, keys["trusted"]).close()
    stored = (sandbox / "data/misc/adb/adb_keys").read_text().splitlines()
    assert stored == [keys["trusted"].GetPublicKey().strip()]     # byte-identical to adb's own format
    with EmulatedPhone(sandbox=sandbox, port=0) as phone:            # trusted again after a restart
        assert phone.auth.keys == [AndroidPublicKey.parse(stored[0])]
    with EmulatedPhone(sandbox=sandbox, port=0, auth="listed", authorized_keys=[]) as phone:
        assert phone.auth.keys == []                                 # 'listed' trusts only the given list


def test_signature_check_is_pkcs1_sha1_over_the_raw_token(keys):
    public = AndroidPublicKey.parse(keys["trusted"].GetPublicKey())
    assert public.bits == 2048 and public.exponent == 65537
    token = os.urandom(20)
    signature = keys["trusted"].Sign(token)
    assert public.verify(token, signature)
    assert not public.verify(os.urandom(20), signature)
    assert not public.verify(token, keys["stranger"].Sign(token))
    tampered = bytearray(signature)
    tampered[-1] ^= 1
    assert not public.verify(token, bytes(tampered))


def test_malformed_public_keys_are_rejected(keys):
    good = keys["trusted"].GetPublicKey().split()[0]
    blob = bytearray(base64.b64decode(good))
    blob[4] ^= 0xFF                                              # break n0inv
    for bad in ("", "!!notbase64!!", "QUJD", base64.b64encode(bytes(blob)).decode()):
        with pytest.raises(KeyFormatError):
            AndroidPublicKey.parse(bad)


# -- shell ----------------------------------------------------------------------------------------
def test_shell_subset_behaves_like_the_phone(tmp_path, keys):
    description = copy.deepcopy(DEFAULT_DESCRIPTION)
    description["props"]["ro.product.model"] = "JCW Test 7"
    description["battery"] = {"capacity": 42, "status": "Discharging"}
    with EmulatedPhone(sandbox=tmp_path / "p", port=0, phone=description) as phone:
        device = connect(phone, keys["trusted"])
        out = device.shell("getprop ro.product.model; getprop no.such.prop fallback; uname -m; id -u 2>&1 | cut -c1-9;"
                           " cat /sys/devices/system/cpu/online /sys/class/power_supply/battery/capacity;"
                           " cat /sys/devices/system/cpu/cpu7/cpufreq/cpuinfo_max_freq")
        assert out.splitlines() == ["JCW Test 7", "fallback", "aarch64", "uid=2000(", "0-7", "42", "2802000"]
        assert "[ro.product.model]: [JCW Test 7]" in device.shell("getprop")
        out = device.shell("cd /data/local/tmp && mkdir -p a/b && echo 'x y' > a/b/f && cat a/b/f && pwd;"
                           " false || echo fell-back; test -d /data/local/tmp/a && echo dir; ls /nonexistent 2>&1 >"
                           " /dev/null | grep -c No; rm -rf /data/local/tmp/a; ls /data/local/tmp; echo end=$?")
        assert out.splitlines() == ["x y", "/data/local/tmp", "fell-back", "dir", "1", "end=0"]
        # The phone's system files are read-only, as for adbd's shell user.
        assert "Permission denied" in device.shell("echo 1 > /sys/class/power_supply/battery/capacity")
        assert (phone.root / "sys/class/power_supply/battery/capacity").read_text() == "42\n"
        # taskset checks the mask against the phone's 8 cores.
        assert device.shell("taskset c0 echo pinned") == "pinned\n"
        assert "Invalid argument" in device.shell("taskset 100 echo never")
        assert device.shell("df /data/local/tmp").splitlines()[1].split()[3] == str(64 * 1024 ** 2)
        device.close()


def test_command_rewriting_maps_only_phone_paths():
    root = "/tmp/sbx"
    assert rewrite_command("cat /sys/x /proc/cpuinfo >/data/local/tmp/o", root) == \
        "cat /tmp/sbx/sys/x /tmp/sbx/proc/cpuinfo >/tmp/sbx/data/local/tmp/o"
    assert rewrite_command("echo /database /home/data/x a/data 'cd /data'", root) == \
        "echo /database /home/data/x a/data 'cd /tmp/sbx/data'"


def test_arm64_executable_runs_under_qemu_including_a_loader_launcher(tmp_path, keys, phone):
    cross = shutil.which("aarch64-linux-gnu-gcc")
    assert cross, "gcc-aarch64-linux-gnu is a declared dependency (make setup installs it)"
    source = tmp_path / "hello.c"
    source.write_text('#include <stdio.h>\nint main(int c, char **v) { printf("arm64 says %s\\n", c > 1 ? v[1] : "-");'
                      ' return 7; }\n')
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    subprocess.run([cross, "-static", "-O1", "-o", str(tmp_path / "hello_static"), str(source)], check=True)
    subprocess.run([cross, "-O1", "-o", str(bundle / "hello"), str(source)], check=True)
    sysroot = Path("/usr/aarch64-linux-gnu/lib")
    for lib in ("ld-linux-aarch64.so.1", "libc.so.6"):
        shutil.copy(sysroot / lib, bundle / lib)
    (bundle / "run.sh").write_text('d=$(dirname "$0")\n'
                                   'exec "$d/ld-linux-aarch64.so.1" --library-path "$d" "$d/hello" "$@"\n')
    device = connect(phone, keys["trusted"])
    device.push(str(tmp_path / "hello_static"), "/data/local/tmp/hello_static", st_mode=0o100755)
    for name in os.listdir(bundle):
        device.push(str(bundle / name), f"/data/local/tmp/b/{name}", st_mode=0o100755)
    assert device.shell("/data/local/tmp/hello_static one; echo rc=$?") == "arm64 says one\nrc=7\n"
    assert device.shell("cd /data/local/tmp && taskset c0 sh b/run.sh two") == "arm64 says two\n"
    device.close()


SME_PROBE = ('#include <stdio.h>\n#include <sys/auxv.h>\n'
             'int main(void) { printf("sme=%d\\n", (int) ((getauxval(AT_HWCAP2) >> 23) & 1)); return 0; }\n')


@pytest.mark.parametrize("qemu_cpu, sme", [(None, "0"), ("max", "1")])
def test_programs_run_on_the_described_cpu_model(tmp_path, keys, qemu_cpu, sme):
    # The default phone has no SME (HWCAP2_SME, bit 23): ExecuTorch's XNNPACK then picks the NEON GEMM a
    # Pixel 6 runs, not the SME one qemu's default CPU would offer (and emulate many times slower).
    cross = shutil.which("aarch64-linux-gnu-gcc")
    assert cross, "gcc-aarch64-linux-gnu is a declared dependency (make setup installs it)"
    (tmp_path / "probe.c").write_text(SME_PROBE)
    subprocess.run([cross, "-static", "-O1", "-o", str(tmp_path / "probe"), str(tmp_path / "probe.c")], check=True)
    description = copy.deepcopy(DEFAULT_DESCRIPTION) | ({"qemu_cpu": qemu_cpu} if qemu_cpu else {})
    with EmulatedPhone(sandbox=tmp_path / "p", port=0, phone=description) as phone:
        assert phone.phone.qemu_cpu == (qemu_cpu or "cortex-a76")
        device = connect(phone, keys["trusted"])
        device.push(str(tmp_path / "probe"), "/data/local/tmp/probe", st_mode=0o100755)
        assert device.shell("/data/local/tmp/probe") == f"sme={sme}\n"
        device.close()


# -- sync -----------------------------------------------------------------------------------------
def test_push_pull_stat_list_round_trip(tmp_path, keys, phone):
    payload = os.urandom(3 * 1024 * 1024 + 123)
    local = tmp_path / "blob"
    local.write_bytes(payload)
    device = connect(phone, keys["trusted"])
    device.push(str(local), "/data/local/tmp/new/dir/blob", st_mode=0o100640, mtime=1_700_000_000)
    assert (phone.data_dir / "new/dir/blob").read_bytes() == payload
    mode, size, mtime = device.stat("/data/local/tmp/new/dir/blob")
    assert (mode & 0o777, size, mtime) == (0o640, len(payload), 1_700_000_000)
    assert device.stat("/data/local/tmp/missing") == (0, 0, 0)
    names = {bytes(f.filename).decode(): f.size for f in device.list("/data/local/tmp/new/dir")}
    assert names == {".": names["."], "..": names[".."], "blob": len(payload)}
    device.pull("/data/local/tmp/new/dir/blob", str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == payload
    assert device.shell("sha256sum /data/local/tmp/new/dir/blob").split()[0] == \
        hashlib.sha256(payload).hexdigest()
    device.close()


def test_sync_refuses_paths_outside_the_sandbox_and_read_only_places(tmp_path, keys, phone):
    os.symlink("/etc", phone.data_dir / "escape")
    device = connect(phone, keys["trusted"])
    with pytest.raises(adb_exc.AdbCommandFailureException):
        device.pull("/data/local/tmp/escape/hostname", str(tmp_path / "stolen"))
    with pytest.raises(adb_exc.AdbCommandFailureException):
        device.pull("/data/local/tmp/../../../etc/hostname", str(tmp_path / "stolen"))
    assert not (tmp_path / "stolen").exists() or (tmp_path / "stolen").stat().st_size == 0
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(adb_exc.PushFailedError, match="Permission denied"):
        device.push(str(tmp_path / "f"), "/system/bin/evil")
    with pytest.raises(adb_exc.PushFailedError, match="Permission denied"):
        device.push(str(tmp_path / "f"), "/data/local/tmp/escape/evil")
    assert not Path("/etc/evil").exists()
    device.close()


# -- flow control, seen on the wire ---------------------------------------------------------------
class RawHost:
    """Just enough of an ADB host to watch the device's flow control packet by packet."""

    def __init__(self, phone: EmulatedPhone, signer, max_payload: int):
        self.sock = socket.create_connection((phone.host, phone.port), timeout=5)
        self.send(m.Message(m.A_CNXN, m.A_VERSION_MIN, max_payload, b"host::\0"))
        command, arg0, _, token = self.recv()
        assert (command, arg0) == (m.A_AUTH, m.AUTH_TOKEN) and len(token) == 20
        self.send(m.Message(m.A_AUTH, m.AUTH_SIGNATURE, 0, signer.Sign(token)))
        command, arg0, arg1, banner = self.recv()
        if command == m.A_AUTH:  # unknown key: offer it
            self.send(m.Message(m.A_AUTH, m.AUTH_RSAPUBLICKEY, 0, signer.GetPublicKey().encode() + b"\0"))
            command, arg0, arg1, banner = self.recv()
        assert command == m.A_CNXN and banner.startswith(b"device::")
        self.banner, self.device_max = banner, arg1

    def send(self, msg: m.Message) -> None:
        self.sock.sendall(msg.pack())

    def recv(self, timeout: float = 5.0):
        self.sock.settimeout(timeout)
        header = self._exact(m.HEADER_SIZE)
        command, arg0, arg1, length, check, magic = m.HEADER.unpack(header)
        data = self._exact(length)
        assert magic == command ^ 0xFFFFFFFF and check == m.checksum(data)
        return command, arg0, arg1, data

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out


def test_one_write_in_flight_until_the_host_says_okay(phone, keys):
    host = RawHost(phone, keys["trusted"], max_payload=4096)
    assert b"features=" in host.banner and b"shell_v2" not in host.banner
    assert b"ro.product.model=Pixel 6" in host.banner
    host.send(m.Message(m.A_OPEN, 77, 0, b"shell:head -c 50000 /dev/zero | tr '\\0' x\0"))
    command, device_id, host_id, _ = host.recv()
    assert (command, host_id) == (m.A_OKAY, 77)
    received = b""
    while len(received) < 50000:
        command, arg0, arg1, data = host.recv()
        assert (command, arg0, arg1) == (m.A_WRTE, device_id, 77)
        assert 0 < len(data) <= 4096                       # the host's max payload is respected
        received += data
        if len(received) < 50000:                           # nothing more until we acknowledge
            with pytest.raises(socket.timeout):
                host.recv(timeout=0.15 if len(received) < 12000 else 0.01)
        host.send(m.Message(m.A_OKAY, 77, device_id))
    assert received == b"x" * 50000
    command, arg0, arg1, _ = host.recv()
    assert (command, arg0, arg1) == (m.A_CLSE, device_id, 77)
    # An unknown service is refused with CLSE(0, host id), as adbd does.
    host.send(m.Message(m.A_OPEN, 78, 0, b"shell,v2,raw:echo hi\0"))
    assert host.recv()[:3] == (m.A_CLSE, 0, 78)
    host.sock.close()


def test_garbage_on_the_wire_closes_only_that_connection(phone, keys):
    bad = socket.create_connection((phone.host, phone.port), timeout=5)
    bad.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert bad.recv(100) == b""
    bad.close()
    device = connect(phone, keys["trusted"])
    assert device.shell("echo still-here") == "still-here\n"
    device.close()


def test_several_connections_work_at_once(phone, keys):
    results: queue.Queue = queue.Queue()

    def worker(n: int) -> None:
        try:
            device = connect(phone, keys["trusted"])
            results.put(device.shell(f"sleep 0.3; echo worker{n}"))
            device.close()
        except Exception as exc:  # reported below
            results.put(repr(exc))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(results.get_nowait() for _ in threads) == ["worker0\n", "worker1\n", "worker2\n"]
    assert phone.connections_served == 3 and time.monotonic() - start < 15


# -- faults ---------------------------------------------------------------------------------------
def test_drop_after_bytes_cuts_a_push_once(tmp_path, keys, phone):
    local = tmp_path / "blob"
    local.write_bytes(os.urandom(2 * 1024 * 1024))
    device = connect(phone, keys["trusted"])
    phone.faults.drop_after_bytes = 500_000
    with pytest.raises(CONNECTION_ERRORS):
        device.push(str(local), "/data/local/tmp/blob", read_timeout_s=2)
    device.close()
    assert phone.faults.fired == ["drop_after_bytes=500000"]
    assert not (phone.data_dir / "blob").exists()          # the partial file is discarded
    device = connect(phone, keys["trusted"])                 # one-shot: the next connection works
    device.push(str(local), "/data/local/tmp/blob")
    assert (phone.data_dir / "blob").read_bytes() == local.read_bytes()
    device.close()


def test_drop_at_line_cuts_right_after_that_result_line(keys, phone):
    device = connect(phone, keys["trusted"])
    phone.faults.drop_at_line = 3
    lines = []
    with pytest.raises(CONNECTION_ERRORS):
        for chunk in device.streaming_shell('echo \'{"runner": {}}\'; for i in 1 2 3 4 5 6; do '
                                            'echo "{\\"id\\": \\"L$i\\"}"; sleep 0.05; done', read_timeout_s=2):
            lines.append(chunk)
    device.close()
    assert "".join(lines).splitlines() == ['{"runner": {}}', '{"id": "L1"}', '{"id": "L2"}', '{"id": "L3"}']
    assert phone.faults.fired == ["drop_at_line=3"]


def test_disk_full_fails_pushes_and_shell_writes_clearly(tmp_path, keys, phone):
    local = tmp_path / "blob"
    local.write_bytes(os.urandom(200_000))
    phone.faults.disk_full = True
    device = connect(phone, keys["trusted"])
    with pytest.raises(adb_exc.PushFailedError, match="No space left on device"):
        device.push(str(local), "/data/local/tmp/blob")
    assert "No space left on device" in device.shell("echo x > /data/local/tmp/f; mkdir /data/local/tmp/d")
    assert os.listdir(phone.data_dir) == []
    assert device.shell("df /data/local/tmp").splitlines()[1].split()[3] == "0"
    phone.faults.disk_full = False
    device.push(str(local), "/data/local/tmp/blob")              # the same connection recovers
    assert (phone.data_dir / "blob").stat().st_size == 200_000
    device.close()


def test_reboot_wipes_tmp_drops_connections_and_changes_boot_id(tmp_path, keys, phone):
    device = connect(phone, keys["trusted"])
    before = device.shell("cat /proc/sys/kernel/random/boot_id").strip()
    device.shell("echo kept > /data/local/tmp/f")
    phone.reboot()
    with pytest.raises(CONNECTION_ERRORS):
        device.shell("echo after", read_timeout_s=2)
    device.close()
    device = connect(phone, keys["trusted"])
    assert device.shell("cat /proc/sys/kernel/random/boot_id").strip() not in ("", before)
    assert device.shell("ls /data/local/tmp") == ""
    device.close()


def test_stop_does_not_hang_on_a_running_command(tmp_path, keys):
    phone = EmulatedPhone(sandbox=tmp_path / "p", port=0).start()
    host = RawHost(phone, keys["trusted"], max_payload=4096)
    host.send(m.Message(m.A_OPEN, 5, 0, b"shell:sleep 37.5\0"))
    assert host.recv()[0] == m.A_OKAY
    deadline = time.monotonic() + 5
    while not phone._processes and time.monotonic() < deadline:
        time.sleep(0.05)
    start = time.monotonic()
    phone.stop()
    assert time.monotonic() - start < 5
    with pytest.raises((EOFError, ConnectionError)):          # the host sees the connection end
        host.recv()
    assert subprocess.run(["pgrep", "-f", "sleep 37.5"], capture_output=True).stdout == b""


# -- description and command line -----------------------------------------------------------------
def test_bad_phone_descriptions_name_the_field(tmp_path):
    bad = copy.deepcopy(DEFAULT_DESCRIPTION)
    bad["cores"][0] = {"max_khz": 100, "cur_khz": 200, "governor": "x"}
    with pytest.raises(DescriptionError, match=r"cores\[0\].cur_khz"):
        Phone.from_dict(bad)
    path = tmp_path / "p.json"
    path.write_text('{"battery": {"capacity": 101, "status": "Full"}}')
    with pytest.raises(DescriptionError, match="battery.capacity"):
        Phone.load(path)
    path.write_text('{"qemu_cpu": "max; rm -rf /"}')
    with pytest.raises(DescriptionError, match="qemu_cpu must be a qemu CPU model name"):
        Phone.load(path)
    assert Phone.default().to_dict()["qemu_cpu"] == "cortex-a76"
    with pytest.raises(ValueError, match="loopback"):
        EmulatedPhone(host="0.0.0.0")


def test_jcw_emulate_serves_until_ctrl_c_and_exits_cleanly(tmp_path, keys):
    proc = subprocess.Popen([sys.executable, "-m", "jcw", "emulate", "--port", "0", "--sandbox", str(tmp_path / "s")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        address = None
        for line in proc.stdout:
            if line.startswith("serving "):
                address = line.split()[1]
                break
        assert address, proc.stderr.read()
        host, port = address.rsplit(":", 1)
        device = AdbDeviceTcp(host, int(port), default_transport_timeout_s=10)
        device.connect(rsa_keys=[keys["trusted"]], auth_timeout_s=3)
        assert device.shell("uname -m") == "aarch64\n"
        device.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "connections served" in out and "Traceback" not in err


def run_emulate_in_process(argv: list[str], capsys) -> tuple[int, str]:
    import argparse

    from jcw.android_harness import cli
    parser = argparse.ArgumentParser(prog="jcw")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    status = args.handler(args)
    return status, capsys.readouterr().err


@pytest.mark.parametrize("argv, sentence", [
    (["--auth", "listed"], "jcw emulate: --auth listed needs --authorized-keys FILE."),
    (["--phone", "/no/such/phone.json"],
     "jcw emulate: cannot read phone description /no/such/phone.json: No such file or directory."),
    (["--host", "192.0.2.1", "--port", "0"], "jcw emulate: host '192.0.2.1' is not a loopback address"),
])
def test_jcw_emulate_bad_input_is_one_sentence(argv, sentence, capsys):
    status, err = run_emulate_in_process(["emulate", *argv], capsys)
    assert status == 2
    assert err.startswith(sentence) and "Traceback" not in err and "\n" not in err.strip()
