"""The emulated phone's description (props, cores, frequencies, thermals, battery) and its sandbox.

A description is plain JSON (never pickle): the default one looks like a Pixel 6
(Tensor, 2+2+4 cores). `build_sandbox` writes the /sys, /proc and /system files a
shell on the phone would read, under a host directory.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runner import EMULATED_CPU

DEFAULT_DESCRIPTION: dict[str, Any] = {
    "serial": "JCWEMU0001",
    "props": {
        "ro.product.name": "oriole",
        "ro.product.model": "Pixel 6",
        "ro.product.device": "oriole",
        "ro.product.brand": "google",
        "ro.product.manufacturer": "Google",
        "ro.product.cpu.abi": "arm64-v8a",
        "ro.product.cpu.abilist": "arm64-v8a,armeabi-v7a,armeabi",
        "ro.soc.manufacturer": "Google",
        "ro.soc.model": "Tensor",
        "ro.board.platform": "gs101",
        "ro.hardware": "oriole",
        "ro.build.version.release": "14",
        "ro.build.version.sdk": "34",
        "ro.build.fingerprint": "google/oriole/oriole:14/UQ1A.240205.004/11269751:user/release-keys",
        "ro.build.type": "user",
        "ro.serialno": "JCWEMU0001",
        "ro.debuggable": "0",
        "ro.adb.secure": "1",
        "sys.boot_completed": "1",
    },
    # One entry per core; cores of a cluster share max frequency (kHz).
    "cores": (
        [{"max_khz": 1803000, "cur_khz": 1197000, "governor": "sched_pixel"}] * 4
        + [{"max_khz": 2253000, "cur_khz": 1491000, "governor": "sched_pixel"}] * 2
        + [{"max_khz": 2802000, "cur_khz": 2802000, "governor": "sched_pixel"}] * 2
    ),
    "thermal_zones": [
        {"type": "BIG", "temp_mc": 41000},
        {"type": "MID", "temp_mc": 39500},
        {"type": "LITTLE", "temp_mc": 38000},
        {"type": "battery", "temp_mc": 31200},
    ],
    "battery": {"capacity": 87, "status": "Charging"},
    "kernel": {"machine": "aarch64", "release": "5.10.157-android13-4-00001-g5c0c5e7c2e8f-ab10812345"},
    "data_total_bytes": 118 * 1024 ** 3,
    "data_free_bytes": 64 * 1024 ** 3,
    # The qemu CPU model its arm64 programs run on (QEMU_CPU); Tensor's big cores are Armv8.2 without SME.
    "qemu_cpu": EMULATED_CPU,
}

_PROP_NAME = re.compile(r"^[A-Za-z0-9_.\-:@]+$")
_GOVERNOR = re.compile(r"^[A-Za-z0-9_\-]+$")
_QEMU_CPU = re.compile(r"^[a-z0-9][a-z0-9._\-]{0,39}$")
BATTERY_STATES = ("Charging", "Discharging", "Full", "Not charging", "Unknown")


class DescriptionError(ValueError):
    """A phone description field is missing or has a bad value."""


@dataclass
class Phone:
    """A validated phone description."""
    serial: str
    props: dict[str, str]
    cores: list[dict[str, Any]]
    thermal_zones: list[dict[str, Any]]
    battery: dict[str, Any]
    kernel: dict[str, str]
    data_free_bytes: int
    data_total_bytes: int
    qemu_cpu: str = EMULATED_CPU
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.props.get("ro.product.model", "")

    def banner(self, features: list[str]) -> bytes:
        """The device banner sent in CNXN, as adbd builds it."""
        parts = [f"{key}={self.props.get(key, '')}"
                 for key in ("ro.product.name", "ro.product.model", "ro.product.device")]
        parts.append("features=" + ",".join(features))
        return ("device::" + ";".join(parts) + ";").encode("utf-8")

    @classmethod
    def default(cls) -> Phone:
        return cls.from_dict(copy.deepcopy(DEFAULT_DESCRIPTION))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Phone:
        """Load a user JSON description; fields it omits come from the default phone."""
        try:
            user = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise DescriptionError(f"cannot read phone description {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise DescriptionError(f"phone description {path} is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise DescriptionError(f"phone description {path} is not valid JSON: {exc.msg} at line "
                                   f"{exc.lineno}") from None
        if not isinstance(user, dict):
            raise DescriptionError(f"phone description {path} must be a JSON object")
        merged = copy.deepcopy(DEFAULT_DESCRIPTION)
        for key, value in user.items():
            if key == "props" and isinstance(value, dict):
                merged["props"].update(value)
            else:
                merged[key] = value
        return cls.from_dict(merged)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Phone:
        known = set(DEFAULT_DESCRIPTION)
        serial = d.get("serial")
        if not isinstance(serial, str) or not re.fullmatch(r"[A-Za-z0-9._\-]{1,64}", serial):
            raise DescriptionError(f"serial must be 1-64 letters, digits or ._-, not {serial!r}")
        props = d.get("props")
        if not isinstance(props, dict):
            raise DescriptionError("props must be an object of property names to strings")
        for name, value in props.items():
            if not _PROP_NAME.match(str(name)):
                raise DescriptionError(f"props: {name!r} is not a valid property name")
            if not isinstance(value, (str, int, float)) or "\n" in str(value) or "\0" in str(value):
                raise DescriptionError(f"props: value of {name} must be a one-line string, not {value!r}")
        props = {str(k): str(v) for k, v in props.items()}
        cores = d.get("cores")
        if not isinstance(cores, list) or not 1 <= len(cores) <= 32:
            raise DescriptionError("cores must be a list of 1 to 32 core objects")
        for i, core in enumerate(cores):
            if not isinstance(core, dict):
                raise DescriptionError(f"cores[{i}] must be an object")
            for key in ("max_khz", "cur_khz"):
                if not isinstance(core.get(key), int) or core[key] <= 0:
                    raise DescriptionError(f"cores[{i}].{key} must be a positive integer, not {core.get(key)!r}")
            if core["cur_khz"] > core["max_khz"]:
                raise DescriptionError(f"cores[{i}].cur_khz {core['cur_khz']} exceeds max_khz {core['max_khz']}")
            if not isinstance(core.get("governor"), str) or not _GOVERNOR.match(core["governor"]):
                raise DescriptionError(f"cores[{i}].governor must be a word, not {core.get('governor')!r}")
        zones = d.get("thermal_zones")
        if not isinstance(zones, list):
            raise DescriptionError("thermal_zones must be a list")
        for i, zone in enumerate(zones):
            if not isinstance(zone, dict) or not isinstance(zone.get("type"), str) or not _GOVERNOR.match(zone["type"]):
                raise DescriptionError(f"thermal_zones[{i}].type must be a word")
            if not isinstance(zone.get("temp_mc"), int):
                raise DescriptionError(f"thermal_zones[{i}].temp_mc must be an integer (millidegrees Celsius)")
        battery = d.get("battery")
        if not isinstance(battery, dict) or not isinstance(battery.get("capacity"), int) \
                or not 0 <= battery["capacity"] <= 100:
            raise DescriptionError("battery.capacity must be an integer from 0 to 100")
        if battery.get("status") not in BATTERY_STATES:
            raise DescriptionError(f"battery.status must be one of {', '.join(BATTERY_STATES)}")
        kernel = d.get("kernel")
        if not isinstance(kernel, dict) or not all(isinstance(kernel.get(k), str) for k in ("machine", "release")):
            raise DescriptionError("kernel must be an object with string fields machine and release")
        free, total = d.get("data_free_bytes"), d.get("data_total_bytes")
        if not isinstance(total, int) or total < 1024 * 1024:
            raise DescriptionError("data_total_bytes must be an integer of at least 1 MiB")
        if not isinstance(free, int) or not 0 <= free <= total:
            raise DescriptionError("data_free_bytes must be an integer from 0 to data_total_bytes")
        qemu_cpu = d.get("qemu_cpu")
        if not isinstance(qemu_cpu, str) or not _QEMU_CPU.match(qemu_cpu):
            raise DescriptionError(f"qemu_cpu must be a qemu CPU model name such as {EMULATED_CPU} (see "
                                   f"`qemu-aarch64-static -cpu help`), not {qemu_cpu!r}")
        return cls(serial, props, [dict(c) for c in cores], [dict(z) for z in zones], dict(battery),
                   dict(kernel), free, total, qemu_cpu, {k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "props": dict(self.props), "cores": self.cores,
                "thermal_zones": self.thermal_zones, "battery": self.battery,
                "kernel": self.kernel, "data_total_bytes": self.data_total_bytes,
                "data_free_bytes": self.data_free_bytes, "qemu_cpu": self.qemu_cpu}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _cpu_list(indices: list[int]) -> str:
    """Kernel cpulist syntax: 0-3,6."""
    ranges, start = [], None
    for i, cpu in enumerate(indices):
        if start is None:
            start = cpu
        if i + 1 == len(indices) or indices[i + 1] != cpu + 1:
            ranges.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ",".join(ranges)


def build_sandbox(root: Path, phone: Phone) -> None:
    """Write the phone's read-only world (/sys, /proc, /system) under root and make /data/local/tmp."""
    (root / "data" / "local" / "tmp").mkdir(parents=True, exist_ok=True)
    (root / "sdcard").mkdir(exist_ok=True)
    for stale in ("sys", "proc", "system"):
        shutil.rmtree(root / stale, ignore_errors=True)
    cpu_dir = root / "sys" / "devices" / "system" / "cpu"
    everything = _cpu_list(list(range(len(phone.cores))))
    for name in ("online", "possible", "present"):
        _write(cpu_dir / name, everything + "\n")
    cpuinfo = []
    for i, core in enumerate(phone.cores):
        freq = cpu_dir / f"cpu{i}" / "cpufreq"
        _write(freq / "cpuinfo_max_freq", f"{core['max_khz']}\n")
        _write(freq / "cpuinfo_min_freq", f"{min(300000, core['max_khz'])}\n")
        _write(freq / "scaling_max_freq", f"{core['max_khz']}\n")
        _write(freq / "scaling_cur_freq", f"{core['cur_khz']}\n")
        _write(freq / "scaling_governor", f"{core['governor']}\n")
        _write(cpu_dir / f"cpu{i}" / "online", "1\n")
        cpuinfo.append(f"processor\t: {i}\nBogoMIPS\t: 49.15\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 "
                       f"crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\n"
                       f"CPU architecture: 8\n")
    for i, zone in enumerate(phone.thermal_zones):
        zdir = root / "sys" / "class" / "thermal" / f"thermal_zone{i}"
        _write(zdir / "type", zone["type"] + "\n")
        _write(zdir / "temp", f"{zone['temp_mc']}\n")
    bat = root / "sys" / "class" / "power_supply" / "battery"
    _write(bat / "capacity", f"{phone.battery['capacity']}\n")
    _write(bat / "status", phone.battery["status"] + "\n")
    _write(root / "proc" / "cpuinfo", "\n".join(cpuinfo) + f"\nHardware\t: {phone.props.get('ro.soc.model', '')}\n")
    _write(root / "proc" / "version", f"Linux version {phone.kernel['release']} (android-build@google.com)\n")
    _write(root / "proc" / "sys" / "kernel" / "random" / "boot_id", f"{uuid.uuid4()}\n")
    _write(root / "system" / "build.prop", "".join(f"{k}={v}\n" for k, v in sorted(phone.props.items())))
