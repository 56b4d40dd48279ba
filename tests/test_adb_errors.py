"""ADB client pieces that need no phone: error translation (incl. libusb's busy interface),
USB ADB-interface matching on fake descriptors, keys, the TCP registry, address parsing,
fact parsing, the strict TCP link and exit-status framing; plus real sockets that are not phones.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import pytest
import usb1
from adb_shell import exceptions as adb_exc
from adb_shell.transport.base_transport import BaseTransport

from jcw.android_harness import adb_errors, adb_keys, discovery, phone_facts
from jcw.android_harness.adb_bundle import parse_sha256sum, read_manifest
from jcw.android_harness.adb_transport import AdbTransport, ShellStream, TcpLink, Timeouts
from jcw.android_harness.connect import open_device, parse_address
from jcw.android_harness.device import DeviceError, DeviceNotFound
from jcw.android_harness.phone_facts import cpu_mask


def assert_one_sentence(error: Exception) -> None:
    text = str(error)
    assert isinstance(error, DeviceError)
    assert "\n" not in text and text.endswith(".") and 20 < len(text) < 320
    assert "Traceback" not in text


# -- error translation -------------------------------------------------------------------------
def test_busy_usb_interface_says_how_to_release_it():
    # What adb-shell's UsbTransport.connect lets through when `adb` holds the interface.
    error = adb_errors.translate_connect_error(usb1.USBErrorBusy(), "usb:R58M1", key_offered=False)
    assert isinstance(error, adb_errors.UsbInterfaceBusy)
    assert "adb kill-server" in str(error)
    assert_one_sentence(error)
    # ... and when adb-shell wraps it in its own read error.
    wrapped = adb_exc.UsbReadFailedError("Could not receive data", usb1.USBErrorBusy())
    assert isinstance(adb_errors.translate_connect_error(wrapped, "usb:R58M1", False),
                      adb_errors.UsbInterfaceBusy)


class ClaimFailsTransport(BaseTransport):
    """Behaves as adb-shell's UsbTransport.connect does when libusb cannot claim the interface."""

    def __init__(self, error):
        self.error = error

    def connect(self, transport_timeout_s):
        raise self.error

    def close(self): pass
    def bulk_read(self, numbytes, transport_timeout_s): raise AssertionError("not connected")
    def bulk_write(self, data, transport_timeout_s): raise AssertionError("not connected")


@pytest.mark.parametrize("error, expected", [(usb1.USBErrorBusy(), adb_errors.UsbInterfaceBusy),
                                             (usb1.USBErrorAccess(), adb_errors.UsbAccessDenied)])
def test_usb_claim_failures_through_adb_shell_connect(tmp_path, error, expected):
    signers = adb_keys.load_signers(tmp_path / "adbkey")
    transport = AdbTransport("usb:R58M1", lambda: ClaimFailsTransport(error), signers)
    with pytest.raises(expected) as info:
        transport.connect()
    assert_one_sentence(info.value)
    assert not transport.connected


@pytest.mark.parametrize("exc, expected", [
    (usb1.USBErrorAccess(), adb_errors.UsbAccessDenied),
    (usb1.USBErrorNoDevice(), DeviceNotFound),
    (adb_exc.UsbDeviceNotFoundError("No device available"), DeviceNotFound),
    (adb_exc.DeviceAuthError("Device authentication required, no keys available."),
     adb_errors.DeviceUnauthorized),
    (ConnectionRefusedError(111, "Connection refused"), DeviceNotFound),
    (adb_exc.TcpTimeoutException("timed out"), DeviceNotFound),
    (adb_errors.ConnectionLost("closed"), DeviceNotFound),
])
def test_connect_errors_map_to_sentences(exc, expected):
    error = adb_errors.translate_connect_error(exc, "tcp:10.0.0.2:5555", key_offered=False)
    assert type(error) is expected
    assert_one_sentence(error)


def test_failure_after_offering_the_key_means_unauthorized():
    error = adb_errors.translate_connect_error(adb_errors.ConnectionLost("closed"),
                                               "tcp:10.0.0.2:5555", key_offered=True)
    assert isinstance(error, adb_errors.DeviceUnauthorized)
    assert "Allow USB debugging" in str(error)


@pytest.mark.parametrize("error", [
    adb_errors.NotArm64("tcp:h:1", "x86_64"), adb_errors.DeviceDirNotWritable("usb:S", "/data/local/tmp"),
    adb_errors.DeviceDiskFull("usb:S", "/data/local/tmp/jcw"), adb_errors.disconnected("usb:S", "cable"),
])
def test_other_errors_are_one_sentence(error):
    assert_one_sentence(error)


def test_disk_full_and_permission_messages_are_recognised():
    assert adb_errors.message_says_disk_full("write failed: No space left on device")
    assert adb_errors.message_says_not_writable("mkdir: '/data/local/tmp/x': Permission denied")
    assert not adb_errors.message_says_disk_full("Permission denied")


# -- USB interface matching (fake descriptors: no phone can be attached here) ------------------
class FakeSetting:
    def __init__(self, cls, sub, proto, number=0):
        self._triple, self._number = (cls, sub, proto), number

    def getClass(self): return self._triple[0]
    def getSubClass(self): return self._triple[1]
    def getProtocol(self): return self._triple[2]
    def getNumber(self): return self._number


class FakeHandle:
    def __init__(self, claim_error):
        self.claim_error, self.released, self.closed = claim_error, False, False

    def claimInterface(self, number):
        if self.claim_error:
            raise self.claim_error

    def releaseInterface(self, number): self.released = True
    def close(self): self.closed = True


class FakeUsbDevice:
    def __init__(self, settings, serial="SER1", claim_error=None, vid=0x18D1, pid=0x4EE7):
        self.settings, self.serial, self.handle = settings, serial, FakeHandle(claim_error)
        self.vid, self.pid = vid, pid

    def iterSettings(self): return iter(self.settings)
    def getSerialNumber(self): return self.serial
    def getVendorID(self): return self.vid
    def getProductID(self): return self.pid
    def open(self): return self.handle


def test_only_the_adb_interface_triple_matches():
    mtp = FakeSetting(0x06, 0x01, 0x01)
    fastboot = FakeSetting(0xFF, 0x42, 0x03)
    adb = FakeSetting(0xFF, 0x42, 0x01, number=1)
    vendor = FakeSetting(0xFF, 0xFF, 0x00)
    assert discovery.adb_setting(FakeUsbDevice([mtp, adb])) is adb
    assert discovery.adb_setting(FakeUsbDevice([mtp, fastboot, vendor])) is None
    phones = discovery.describe_usb_devices([
        FakeUsbDevice([mtp, adb], serial="PHONE1"),
        FakeUsbDevice([fastboot], serial="BOOTLOADER"),
        FakeUsbDevice([FakeSetting(0x03, 0, 0)], serial="KEYBOARD"),
    ])
    assert [p["address"] for p in phones] == ["usb:PHONE1"]
    assert phones[0]["state"] == "ready" and phones[0]["usb_id"] == "18d1:4ee7"


def test_busy_interface_is_reported_with_the_fix():
    adb = FakeSetting(0xFF, 0x42, 0x01)
    busy = FakeUsbDevice([adb], serial="HELD", claim_error=usb1.USBErrorBusy())
    denied = FakeUsbDevice([adb], serial="NOPERM", claim_error=usb1.USBErrorAccess())
    free = FakeUsbDevice([adb], serial="FREE")
    states = {p["serial"]: p for p in discovery.describe_usb_devices([busy, denied, free])}
    assert states["HELD"]["busy"] and "adb kill-server" in states["HELD"]["hint"]
    assert states["NOPERM"]["state"] == "no permission" and not states["NOPERM"]["busy"]
    assert states["FREE"]["state"] == "ready"
    assert free.handle.released and free.handle.closed and busy.handle.closed


# -- keys -------------------------------------------------------------------------------------
def test_key_pair_created_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("ANDROID_USER_HOME", str(tmp_path / "android"))
    path = adb_keys.ensure_key()
    assert path == tmp_path / "android" / "adbkey"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    first = path.read_bytes()
    signers = adb_keys.load_signers()
    assert adb_keys.ensure_key() == path and path.read_bytes() == first
    signature = signers[0].Sign(b"\x01" * 20)
    assert len(signature) == 256          # a 2048-bit RSA signature, as adbd expects
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".jcw-keygen")] == []


def test_key_without_public_half_is_a_sentence(tmp_path):
    (tmp_path / "adbkey").write_text("x")
    with pytest.raises(DeviceError, match="no public half"):
        adb_keys.ensure_key(tmp_path / "adbkey")


def test_vendor_keys_are_loaded_after_the_users(tmp_path, monkeypatch):
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    adb_keys.ensure_key(vendor / "team.adb_key")
    monkeypatch.setenv("ADB_VENDOR_KEYS", str(vendor))
    signers = adb_keys.load_signers(tmp_path / "own" / "adbkey")
    assert len(signers) == 2
    assert signers[0].GetPublicKey() == (tmp_path / "own" / "adbkey.pub").read_bytes()


# -- addresses and the TCP registry -----------------------------------------------------------
@pytest.mark.parametrize("text, normal", [
    ("local", "local"), ("tcp:127.0.0.1:5555", "tcp:127.0.0.1:5555"), ("tcp:phone.lan", "tcp:phone.lan:5555"),
    ("192.168.1.7:5037", "tcp:192.168.1.7:5037"), ("tcp:[::1]:6000", "tcp:[::1]:6000"),
    ("usb:R58M123", "usb:R58M123"), ("R58M123", "usb:R58M123"),
])
def test_addresses_are_normalised(text, normal):
    assert str(parse_address(text)) == normal


@pytest.mark.parametrize("text", ["", "tcp:host:99999", "tcp:host:abc", "usb:a b", "phone; rm -rf /",
                                  "tcp:$(reboot):1"])
def test_bad_addresses_are_one_sentence(text):
    with pytest.raises(DeviceError) as info:
        parse_address(text)
    assert_one_sentence(info.value)


def test_tcp_registry_add_remove(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert discovery.known_tcp_devices() == []
    assert discovery.add_tcp_device("192.168.1.7") == "tcp:192.168.1.7:5555"
    discovery.add_tcp_device("tcp:192.168.1.7:5555")            # duplicates collapse
    discovery.add_tcp_device("127.0.0.1:1")
    saved = json.loads((tmp_path / "jcw" / "devices.json").read_text())
    assert saved == {"tcp": ["tcp:192.168.1.7:5555", "tcp:127.0.0.1:1"]}
    assert discovery.remove_tcp_device("192.168.1.7:5555") is True
    assert discovery.remove_tcp_device("192.168.1.7:5555") is False
    listed = discovery.list_devices(probe=True)
    assert listed[0]["address"] == "local"
    assert {"address": "tcp:127.0.0.1:1", "kind": "tcp", "state": "unreachable"}.items() <= listed[-1].items()
    with pytest.raises(DeviceError):
        discovery.add_tcp_device("usb:SERIAL")
    (tmp_path / "jcw" / "devices.json").write_text("{not json")
    with pytest.raises(DeviceError, match="cannot be read"):
        discovery.known_tcp_devices()


# -- real sockets that are not phones ---------------------------------------------------------
@pytest.fixture
def isolated_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("ANDROID_USER_HOME", str(tmp_path / "android"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_is_no_device(isolated_keys):
    port = _free_port()
    with pytest.raises(DeviceNotFound) as info:
        open_device(f"tcp:127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert_one_sentence(info.value)


@pytest.mark.parametrize("behaviour", ["close", "silent"])
def test_a_peer_that_is_not_adb_is_no_device(isolated_keys, behaviour):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    held = []

    def serve():
        conn, _ = server.accept()
        if behaviour == "close":
            conn.close()
        else:
            held.append(conn)  # accept and never answer

    threading.Thread(target=serve, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(DeviceNotFound) as info:
        open_device(f"tcp:127.0.0.1:{server.getsockname()[1]}",
                    timeouts=Timeouts(connect_s=0.5, auth_s=0.5))
    assert time.monotonic() - started < 5
    assert_one_sentence(info.value)
    server.close()
    for conn in held:
        conn.close()


def test_tcp_link_reports_a_closed_peer_at_once_and_sends_everything():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    link = TcpLink("127.0.0.1", server.getsockname()[1])
    link.connect(2.0)
    peer, _ = server.accept()
    payload = os.urandom(8 * 1024 * 1024)   # far more than one non-blocking send() takes
    received = bytearray()

    def drain():
        while len(received) < len(payload):
            chunk = peer.recv(1 << 20)
            if not chunk:
                break
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    assert link.bulk_write(payload, 5.0) == len(payload)
    reader.join(10)
    assert bytes(received) == payload
    peer.close()
    started = time.monotonic()
    with pytest.raises(adb_errors.ConnectionLost):
        link.bulk_read(24, 30.0)
    assert time.monotonic() - started < 1.0   # not the 30 s timeout
    link.close()
    server.close()


# -- exit-status framing, manifests, masks ---------------------------------------------------
def test_shell_stream_splits_lines_and_finds_the_exit_status_across_chunks():
    marker = b"__jcw_exit_0123456789ab__ "
    data = b'{"id": "a"}\r\n{"id": "b"}\npartial line\n' + marker + b"137\n"
    chunks = [data[i:i + 5] for i in range(0, len(data), 5)]
    stream = ShellStream(iter(chunks), marker)
    assert list(stream) == ['{"id": "a"}', '{"id": "b"}', "partial line"]
    assert stream.exit_code == 137
    forged = ShellStream(iter([b"__jcw_exit_other__ 0\n"]), marker)
    assert list(forged) == ["__jcw_exit_other__ 0"] and forged.exit_code is None


def test_manifest_is_checked_and_checksums_parsed(tmp_path):
    (tmp_path / "convbench.sh").write_text("#!/system/bin/sh\n")
    sha = "a" * 64
    (tmp_path / "manifest.json").write_text(json.dumps({"version": "1", "files": {"convbench.sh": sha}}))
    assert read_manifest(tmp_path) == {"convbench.sh": sha}
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"../../etc/passwd": sha, "convbench.sh": sha}}))
    with pytest.raises(DeviceError, match="not a checksummed file of the bundle"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"convbench": sha}}))
    with pytest.raises(DeviceError):
        read_manifest(tmp_path)
    assert parse_sha256sum(f"{sha}  convbench.sh\n{'b' * 64} *./libc.so.6\nsha256sum: x: No such file\n") == {
        "convbench.sh": sha, "libc.so.6": "b" * 64}
    assert cpu_mask([6, 7]) == "c0" and cpu_mask([0, 1, 2, 3]) == "f"


# -- fact parsing -----------------------------------------------------------------------------
SAMPLE_FACTS = """@@getprop
[ro.product.model]: [SM-S918B]
[ro.product.manufacturer]: [samsung]
[ro.soc.model]: [SM8550]
[ro.board.platform]: [kalama]
[ro.hardware]: [qcom]
[ro.build.version.release]: [14]
[ro.build.version.sdk]: [34]
[ro.product.cpu.abi]: [arm64-v8a]
[ro.product.cpu.abilist]: [arm64-v8a,armeabi-v7a,armeabi]
[persist.sys.multi]: [line one
line two]
@@uname
aarch64
@@boot_id
6f1c2a4e-1111-2222-3333-444455556666
@@uptime
12345.67 40000.00
@@cpu_online
0-6
@@cpu cpu0
cpuinfo_max_freq=2016000
scaling_cur_freq=1190400
scaling_governor=walt
@@cpu cpu3
cpuinfo_max_freq=2803200
scaling_governor=walt
@@cpu cpu4
cpuinfo_max_freq=2803200
@@cpu cpu7
online=0
@@thermal thermal_zone0
type=cpu-1-0
temp=41300
@@thermal thermal_zone9
type=skin
temp=
@@thermal thermal_zone10
type=pa
temp=38
@@power battery
capacity=64
status=Charging
temp=312
@@power usb
type=USB
online=1
@@meminfo
MemTotal:       7734512 kB
@@cpuinfo
Hardware	: Qualcomm Technologies, Inc SM8550
CPU part	: 0xd46
CPU part	: 0xd4e
"""


def test_phone_facts_parse_robustly():
    facts = phone_facts.parse_facts(SAMPLE_FACTS)
    assert facts["model"] == "SM-S918B" and facts["manufacturer"] == "samsung"
    assert facts["soc"] == {"model": "SM8550", "board_platform": "kalama", "hardware": "qcom"}
    assert facts["android_release"] == "14" and facts["sdk"] == 34
    assert phone_facts.is_arm64(facts) == (True, "arm64-v8a")
    assert facts["online_cpus"] == [0, 1, 2, 3, 4, 5, 6]
    assert [c["cpu"] for c in facts["cpus"] if not c["online"]] == [7]
    assert facts["clusters"] == [{"max_khz": 2803200, "cpus": [3, 4]}, {"max_khz": 2016000, "cpus": [0]}]
    assert phone_facts.fastest_cpus(facts) == [3, 4]
    assert phone_facts.fastest_cpus(facts, at_least=3) == [0, 3, 4]
    assert [(t["type"], t["temp_c"]) for t in facts["thermal"]] == [("cpu-1-0", 41.3), ("pa", 38.0)]
    assert facts["battery"] == {"level": 64, "status": "Charging", "charging": True,
                                "plugged": ["usb"], "temp_c": 31.2}
    assert facts["uptime_s"] == 12345.67 and facts["mem_total_kb"] == 7734512
    assert facts["cpu_parts"] == ["0xd46", "0xd4e"]


def test_facts_of_a_bare_or_foreign_device():
    assert phone_facts.parse_facts("") ["cpus"] == []
    foreign = phone_facts.parse_facts("@@getprop\n[ro.product.cpu.abi]: [x86_64]\n@@uname\nx86_64\n")
    assert phone_facts.is_arm64(foreign) == (False, "x86_64")
    no_props = phone_facts.parse_facts("@@getprop\n@@uname\naarch64\n")
    assert phone_facts.is_arm64(no_props) == (True, "aarch64")
