"""Facts about the local machine: CPU model, cores, per-core frequencies and governors.

The parsers take a `read_text(path) -> str | None` function so the same code can read
/proc and /sys of any Linux, local or remote (a phone's facts are read through ADB).
"""
from __future__ import annotations

import os
import platform
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

ReadText = Callable[[str], str | None]

SYS_CPU = "/sys/devices/system/cpu"


def read_local_text(path: str) -> str | None:
    """File contents, or None when the file is missing or unreadable (common in /sys)."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def parse_cpu_list(text: str | None) -> list[int]:
    """Kernel CPU list syntax ("0-3,6") as sorted CPU numbers."""
    cpus: set[int] = set()
    for part in (text or "").strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            if lo.isdigit() and hi.isdigit():
                cpus.update(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            cpus.add(int(part))
    return sorted(cpus)


def parse_cpuinfo(text: str | None) -> dict[str, Any]:
    """/proc/cpuinfo: the first processor block's fields, plus whole-file fields (ARM "Hardware")."""
    first: dict[str, str] = {}
    processors = 0
    for block in re.split(r"\n\s*\n", (text or "").strip()):
        fields = {}
        for line in block.splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                fields[key.strip()] = value.strip()
        if "processor" in fields and fields["processor"].isdigit():
            processors += 1
            if not first:
                first = fields
        else:
            first = {**fields, **first}
    model = (first.get("model name") or first.get("Hardware") or first.get("Processor")
             or first.get("cpu model") or "")
    return {"model": model, "processors": processors, "fields": first}


def _int_or_none(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() else None


def core_facts(read_text: ReadText, cpus: list[int]) -> list[dict[str, Any]]:
    """Per-core max/current frequency (kHz) and governor where the kernel exposes them."""
    cores = []
    for cpu in cpus:
        base = f"{SYS_CPU}/cpu{cpu}/cpufreq"
        governor = read_text(f"{base}/scaling_governor")
        cores.append({
            "cpu": cpu,
            "max_khz": _int_or_none(read_text(f"{base}/cpuinfo_max_freq")),
            "cur_khz": _int_or_none(read_text(f"{base}/scaling_cur_freq")),
            "governor": governor.strip() if governor else None,
        })
    return cores


def cpu_facts(read_text: ReadText) -> dict[str, Any]:
    """CPU model, online cores and per-core frequency facts of a Linux system."""
    cpuinfo = parse_cpuinfo(read_text("/proc/cpuinfo"))
    online = parse_cpu_list(read_text(f"{SYS_CPU}/online"))
    if not online and cpuinfo["processors"]:
        online = list(range(cpuinfo["processors"]))
    interesting = ("vendor_id", "cpu family", "model", "stepping", "CPU implementer", "CPU part",
                   "CPU architecture", "CPU variant", "CPU revision", "Features", "flags", "bogomips", "BogoMIPS",
                   "cpu MHz")
    return {
        "cpu_model": cpuinfo["model"] or "unknown",
        "cores_online": len(online),
        "online_cpus": online,
        "cores": core_facts(read_text, online),
        "cpuinfo": {key: cpuinfo["fields"][key] for key in interesting if key in cpuinfo["fields"]},
    }


def local_facts(read_text: ReadText = read_local_text) -> dict[str, Any]:
    """Everything worth storing with a profile measured on this machine."""
    facts = {
        "kind": "local",
        "hostname": socket.gethostname(),
        "os": platform.system(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    facts.update(cpu_facts(read_text))
    meminfo = read_text("/proc/meminfo") or ""
    match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
    facts["memory_mb"] = int(match.group(1)) // 1024 if match else None
    if hasattr(os, "sched_getaffinity"):
        facts["affinity"] = sorted(os.sched_getaffinity(0))
    return facts
