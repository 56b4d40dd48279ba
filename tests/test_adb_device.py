"""AdbDevice end to end against the emulated phone: the real arm64 bundle pushed over the real ADB
protocol (adb-shell), run under qemu, results streamed back; push skipping, facts, dropped links,
reboots, a dying runner, and each user-facing error provoked for real.
"""
from __future__ import annotations

import copy
import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from jcw.android_harness import adb_errors
from jcw.android_harness.adb_bundle import default_bundle_dir, read_manifest
from jcw.android_harness.adb_transport import Timeouts
from jcw.android_harness.connect import open_device
from jcw.android_harness.device import DeviceDisconnected, DeviceNotFound, RunnerCrashed

emulator = pytest.importorskip("jcw.android_harness.emulator", reason="the emulated phone is not built")
EmulatedPhone, Faults = emulator.EmulatedPhone, emulator.Faults
from jcw.android_harness.emulator.phone import DEFAULT_DESCRIPTION  # noqa: E402

pytestmark = pytest.mark.device

BUNDLE = default_bundle_dir()
if not (BUNDLE / "manifest.json").exists():
    pytest.fail(f"the arm64 bundle is missing at {BUNDLE}: run `make -C android_harness/native android`",
                pytrace=False)

FAST = ["--warmup", "1", "--min-reps", "2", "--min-time-ms", "2"]   # qemu is slow; keep lines short


def layer(ident, op="conv", impl="dense", cin=8, cout=8, k=3, h=8, density=1.0, **extra):
    line = {"id": ident, "op": op, "cin": cin, "cout": cout if op == "conv" else cin, "k": k,
            "stride": 1, "pad": k // 2, "h": h, "w": h, "density": density, "impl": impl, "threads": 1}
    line.update(extra)
    return line


PLAN = [layer("dense-3x3"), layer("sparse-1x1", impl="sparse", k=1, density=0.3),
        layer("dw-3x3", op="dwconv", cin=16), layer("sparse-3x3", impl="sparse", density=0.5),
        layer("sparse-on-dw", op="dwconv", impl="sparse", cin=8)]


@pytest.fixture(autouse=True)
def private_adb_key(tmp_path_factory, monkeypatch):
    # One key for the whole session dir so tests never touch the real ~/.android.
    monkeypatch.setenv("ANDROID_USER_HOME", str(tmp_path_factory.getbasetemp() / "android-home"))


@pytest.fixture
def phone(tmp_path):
    with EmulatedPhone(sandbox=tmp_path / "phone", port=0) as emulated:
        yield emulated


def connect(phone, **opts):
    opts.setdefault("timeouts", Timeouts(connect_s=5, auth_s=2, command_s=30, push_s=60, idle_s=60))
    return open_device(f"tcp:{phone.host}:{phone.port}", **opts)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_runs_the_real_bundle_and_streams_results_in_plan_order(phone):
    with connect(phone) as device:
        results = list(device.run_batch(PLAN, FAST))
        assert [r["id"] for r in results] == [line["id"] for line in PLAN]
        for result in results[:4]:
            assert "error" not in result, result
            assert 0 < result["us_min"] <= result["us_median"] and result["max_abs_err"] < 1e-3
        assert "error" in results[4]          # sparse on a dwconv is an error result, not a crash
        assert device.runner_info()["arch"] == "aarch64"
        assert sorted(device.pushed_files) == sorted(read_manifest(BUNDLE))
        installed = phone.data_dir / "jcw" / "bundle"
        for name, digest in read_manifest(BUNDLE).items():
            assert sha256(installed / name) == digest
        assert device.facts()["pinned_cpus"] == [6, 7]     # the 2.8 GHz pair of the default phone


def test_second_connection_skips_the_push_and_repairs_a_changed_file(phone):
    with connect(phone) as first:
        first.runner_info()
        assert len(first.pushed_files) == len(read_manifest(BUNDLE))
    with connect(phone) as second:
        assert second.runner_info()["version"]
        assert second.pushed_files == []
    (phone.data_dir / "jcw" / "bundle" / "libm.so.6").write_bytes(b"truncated")
    with connect(phone) as third:
        assert [r["id"] for r in third.run_batch(PLAN[:1], FAST)] == ["dense-3x3"]
        assert third.pushed_files == ["libm.so.6"]


def test_facts_come_from_the_phone_description(tmp_path):
    description = copy.deepcopy(DEFAULT_DESCRIPTION)
    description["props"].update({"ro.product.model": "JCW Test 9", "ro.soc.model": "SM8650",
                                 "ro.build.version.sdk": "35", "ro.build.version.release": "15"})
    description["cores"] = ([{"max_khz": 2000000, "cur_khz": 1000000, "governor": "schedutil"}] * 6
                            + [{"max_khz": 3100000, "cur_khz": 3100000, "governor": "performance"}] * 2)
    description["battery"] = {"capacity": 12, "status": "Discharging"}
    description["thermal_zones"] = [{"type": "cpu-big", "temp_mc": 55500}]
    with EmulatedPhone(sandbox=tmp_path / "p", port=0, phone=description) as emulated:
        with connect(emulated) as device:
            facts = device.facts()
    assert facts["model"] == "JCW Test 9" and facts["soc"]["model"] == "SM8650"
    assert facts["sdk"] == 35 and facts["android_release"] == "15" and facts["abi"] == "arm64-v8a"
    assert facts["clusters"] == [{"max_khz": 3100000, "cpus": [6, 7]},
                                 {"max_khz": 2000000, "cpus": [0, 1, 2, 3, 4, 5]}]
    assert [c["governor"] for c in facts["cpus"]][-1] == "performance"
    assert facts["thermal"] == [{"zone": "thermal_zone0", "type": "cpu-big", "temp_c": 55.5}]
    assert facts["battery"]["level"] == 12 and facts["battery"]["charging"] is False
    assert facts["pinned_cpus"] == [6, 7] and facts["pinning"] == "taskset"


def test_cpus_option_overrides_pinning_and_bad_masks_fall_back(phone):
    with connect(phone, cpus="0-3") as device:
        assert device.facts()["pinned_cpus"] == [0, 1, 2, 3]
        assert len(list(device.run_batch(PLAN[:1], FAST))) == 1
    with connect(phone, cpus=[12]) as device:       # the phone has 8 cores: taskset refuses
        assert device.facts()["pinning"].startswith("none")
        assert len(list(device.run_batch(PLAN[:1], FAST))) == 1


def test_connection_dropped_mid_batch_is_resumed_and_reports_every_line_once(phone):
    with connect(phone, backoff_s=0.05) as device:
        device.runner_info()
        phone.faults.drop_at_line = 2
        ids = [r["id"] for r in device.run_batch(PLAN, FAST)]
        assert phone.faults.fired == ["drop_at_line=2"]
        assert ids == [line["id"] for line in PLAN] and device.reconnects == 1


def test_connection_dropped_during_the_bundle_push_is_resumed(tmp_path):
    faults = Faults(drop_after_bytes=600_000)          # mid-way through the ~4 MB bundle
    with EmulatedPhone(sandbox=tmp_path / "p", port=0, faults=faults) as emulated:
        with connect(emulated, backoff_s=0.05) as device:
            ids = [r["id"] for r in device.run_batch(PLAN[:2], FAST)]
            assert faults.fired == ["drop_after_bytes=600000"] and device.reconnects == 1
            assert ids == ["dense-3x3", "sparse-1x1"]


def test_reboot_mid_batch_ends_the_run_after_keeping_what_arrived(phone):
    with connect(phone, backoff_s=0.05) as device:
        seen = []
        with pytest.raises(DeviceDisconnected, match="rebooted") as info:
            for result in device.run_batch(PLAN, FAST):
                seen.append(result["id"])
                if len(seen) == 1:
                    phone.reboot()
        assert seen[:1] == ["dense-3x3"] and len(seen) < len(PLAN)
        assert "\n" not in str(info.value)


def test_vanished_phone_ends_with_a_resumable_message(phone):
    with connect(phone, backoff_s=0.05, max_reconnects=3) as device:
        seen = []
        started = time.monotonic()
        with pytest.raises(DeviceDisconnected, match="Lost the connection") as info:
            for result in device.run_batch(PLAN, FAST):
                seen.append(result["id"])
                if len(seen) == 1:
                    phone.stop()
        # Lines already in flight when the phone vanished still count; the rest are not invented.
        assert seen[0] == "dense-3x3" and len(seen) < len(PLAN)
        assert "3 reconnection attempts failed: nothing answers" in str(info.value)
        assert_sentence(info.value)
        assert time.monotonic() - started < 20


def test_runner_killed_mid_batch_raises_runner_crashed_after_its_results(phone):
    slow = ["--warmup", "1", "--min-reps", "2", "--min-time-ms", "400"]
    with connect(phone) as device:
        device.runner_info()
        seen = []
        with pytest.raises(RunnerCrashed, match="killed by signal 9") as info:
            for result in device.run_batch(PLAN, slow):
                seen.append(result["id"])
                if len(seen) == 1:
                    pidfile = next((phone.data_dir / "jcw").glob("run-*/runner.pid"))
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)
        assert seen == ["dense-3x3"]
        assert f"of {len(PLAN)} plan lines" in str(info.value)
        # The device stays usable: the caller re-runs only the unreported lines.
        assert [r["id"] for r in device.run_batch(PLAN[1:3], FAST)] == ["sparse-1x1", "dw-3x3"]


def test_shell_metacharacters_in_arguments_stay_arguments(phone):
    with connect(phone) as device:
        device.runner_info()
        with pytest.raises(RunnerCrashed):
            list(device.run_batch(PLAN[:1], ["--min-time-ms", "1; touch /data/local/tmp/pwned"]))
        assert not (phone.data_dir / "pwned").exists()


def test_close_removes_session_files_unless_kept(phone):
    with connect(phone) as device:
        list(device.run_batch(PLAN[:1], FAST))
    jcw_dir = phone.data_dir / "jcw"
    assert not list(jcw_dir.glob("run-*")) and (jcw_dir / "bundle" / "convbench").exists()
    with connect(phone, keep_files=True) as device:
        list(device.run_batch(PLAN[:1], FAST))
    assert list(jcw_dir.glob("run-*/plan-1.jsonl"))
    with connect(phone, remove_bundle=True) as device:
        device.runner_info()
    assert not jcw_dir.exists()


# -- each error, provoked ----------------------------------------------------------------------
def assert_sentence(error):
    text = str(error)
    assert "\n" not in text and text.endswith(".") and len(text) < 320


def test_refused_key_is_unauthorized(tmp_path):
    with EmulatedPhone(sandbox=tmp_path / "p", port=0, auth="refuse") as emulated:
        with pytest.raises(adb_errors.DeviceUnauthorized, match="Allow USB debugging") as info:
            connect(emulated)
    assert_sentence(info.value)


def test_no_listener_is_no_device(tmp_path):
    with EmulatedPhone(sandbox=tmp_path / "p", port=0) as emulated:
        address = (emulated.host, emulated.port)
    with pytest.raises(DeviceNotFound, match="No device answers") as info:
        open_device(f"tcp:{address[0]}:{address[1]}")
    assert_sentence(info.value)


def test_full_disk_is_reported_at_setup_and_at_push(tmp_path):
    with EmulatedPhone(sandbox=tmp_path / "p", port=0, faults=Faults(disk_full=True)) as emulated:
        with pytest.raises(adb_errors.DeviceDiskFull) as info:
            connect(emulated)
        assert_sentence(info.value)
        emulated.faults.disk_full = False
        with connect(emulated) as device:
            emulated.faults.disk_full = True
            with pytest.raises(adb_errors.DeviceDiskFull, match="no space left"):
                list(device.run_batch(PLAN[:1], FAST))


def test_non_arm64_phone_is_refused(tmp_path):
    description = copy.deepcopy(DEFAULT_DESCRIPTION)
    description["props"].update({"ro.product.cpu.abi": "x86_64", "ro.product.cpu.abilist": "x86_64,x86"})
    description["kernel"]["machine"] = "x86_64"
    with EmulatedPhone(sandbox=tmp_path / "p", port=0, phone=description) as emulated:
        with pytest.raises(adb_errors.NotArm64, match="x86_64") as info:
            connect(emulated)
    assert_sentence(info.value)


def test_unwritable_directory_is_reported(phone):
    # The emulated phone, like adbd's shell user, may not write outside /data/local/tmp and /sdcard.
    with pytest.raises(adb_errors.DeviceDirNotWritable, match="/system") as info:
        connect(phone, remote_dir="/system/jcw")
    assert_sentence(info.value)
