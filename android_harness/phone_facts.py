"""Facts about an Android phone, gathered with one shell command and parsed robustly:
props (model, SoC, Android release/SDK, ABI), per-core frequencies and governors, online
cores and clusters, thermal zones, battery. Any file a phone lacks is simply left out.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# POSIX sh that runs on toybox/mksh (phones) and dash alike; one round trip for everything.
FACTS_SCRIPT = r"""
echo '@@getprop'; getprop 2>/dev/null
echo '@@uname'; uname -m 2>/dev/null
echo '@@boot_id'; cat /proc/sys/kernel/random/boot_id 2>/dev/null
echo '@@uptime'; cat /proc/uptime 2>/dev/null
echo '@@cpu_online'; cat /sys/devices/system/cpu/online 2>/dev/null
for c in /sys/devices/system/cpu/cpu[0-9]*; do
  [ -d "$c" ] || continue
  echo "@@cpu ${c##*/}"
  for f in online cpufreq/cpuinfo_max_freq cpufreq/cpuinfo_min_freq cpufreq/scaling_cur_freq cpufreq/scaling_max_freq cpufreq/scaling_governor topology/cluster_id topology/physical_package_id; do
    [ -r "$c/$f" ] && echo "${f##*/}=$(cat "$c/$f" 2>/dev/null)"
  done
done
for z in /sys/class/thermal/thermal_zone*; do
  [ -d "$z" ] || continue
  echo "@@thermal ${z##*/}"
  echo "type=$(cat "$z/type" 2>/dev/null)"
  echo "temp=$(cat "$z/temp" 2>/dev/null)"
done
for b in /sys/class/power_supply/*; do
  [ -d "$b" ] || continue
  echo "@@power ${b##*/}"
  for f in type capacity status present online temp; do
    [ -r "$b/$f" ] && echo "$f=$(cat "$b/$f" 2>/dev/null)"
  done
done
echo '@@meminfo'; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo 2>/dev/null
echo '@@cpuinfo'; grep -E '^(Hardware|CPU implementer|CPU part)' /proc/cpuinfo 2>/dev/null
true
"""

_PROP_LINE = re.compile(r"^\[(?P<key>[^\]]+)\]: \[(?P<value>.*)\]$")


def parse_getprop(text: str) -> dict[str, str]:
    """`[key]: [value]` lines into a dict; values spanning lines keep their newlines."""
    props: dict[str, str] = {}
    key, buffer = None, []
    for line in text.splitlines():
        if key is None:
            match = _PROP_LINE.match(line)
            if match:
                props[match["key"]] = match["value"]
            elif line.startswith("[") and "]: [" in line:
                key, _, first = line[1:].partition("]: [")
                buffer = [first]
        else:
            if line.endswith("]"):
                buffer.append(line[:-1])
                props[key] = "\n".join(buffer)
                key = None
            else:
                buffer.append(line)
    return props


def parse_cpu_list(text: str) -> list[int]:
    """Kernel CPU lists such as "0-3,6,8-9"; garbage yields an empty list."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            return []
        cpus.extend(range(first, last + 1))
    return sorted(set(cpus))


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _celsius(raw: str | None, tenths: bool = False) -> float | None:
    value = _int(raw)
    if value is None:
        return None
    if tenths:
        return value / 10.0
    # Most zones report millidegrees; a few drivers report whole degrees.
    return value / 1000.0 if abs(value) >= 1000 else float(value)


def split_sections(text: str) -> list[tuple[str, str, list[str]]]:
    """Output of FACTS_SCRIPT into (section, argument, lines) triples."""
    sections: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("@@"):
            name, _, argument = line[2:].partition(" ")
            sections.append((name, argument.strip(), []))
        elif sections:
            sections[-1][2].append(line)
    return sections


def _key_values(lines: list[str]) -> dict[str, str]:
    pairs = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            pairs[key.strip()] = value.strip()
    return pairs


def clusters_of(cpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Online cores grouped by maximum frequency, fastest cluster first."""
    by_freq: dict[int, list[int]] = {}
    for cpu in cpus:
        if cpu.get("online", True) and cpu.get("max_khz"):
            by_freq.setdefault(cpu["max_khz"], []).append(cpu["cpu"])
    return [{"max_khz": freq, "cpus": sorted(ids)}
            for freq, ids in sorted(by_freq.items(), reverse=True)]


def parse_facts(text: str) -> dict[str, Any]:
    """Turn FACTS_SCRIPT output into the facts dict stored with a profile."""
    props: dict[str, str] = {}
    facts: dict[str, Any] = {"kind": "android"}
    cpus: list[dict[str, Any]] = []
    thermal: list[dict[str, Any]] = []
    power: dict[str, dict[str, str]] = {}
    cpu_parts: list[str] = []
    for name, argument, lines in split_sections(text):
        body = "\n".join(lines).strip()
        if name == "getprop":
            props = parse_getprop("\n".join(lines))
        elif name == "uname" and body:
            facts["kernel_arch"] = body.splitlines()[0].strip()
        elif name == "boot_id" and body:
            facts["boot_id"] = body.splitlines()[0].strip()
        elif name == "uptime" and body:
            try:
                facts["uptime_s"] = float(body.split()[0])
            except ValueError:
                pass
        elif name == "cpu_online" and body:
            facts["online_cpus"] = parse_cpu_list(body)
        elif name == "cpu":
            number = _int(argument.removeprefix("cpu"))
            if number is None:
                continue
            values = _key_values(lines)
            cpu: dict[str, Any] = {"cpu": number}
            online = _int(values.get("online"))
            cpu["online"] = True if online is None else bool(online)
            for field, key in (("max_khz", "cpuinfo_max_freq"), ("min_khz", "cpuinfo_min_freq"),
                               ("cur_khz", "scaling_cur_freq"), ("scaling_max_khz", "scaling_max_freq"),
                               ("cluster_id", "cluster_id"), ("package_id", "physical_package_id")):
                if _int(values.get(key)) is not None:
                    cpu[field] = _int(values.get(key))
            if values.get("scaling_governor"):
                cpu["governor"] = values["scaling_governor"]
            cpus.append(cpu)
        elif name == "thermal":
            values = _key_values(lines)
            temp = _celsius(values.get("temp"))
            if temp is not None:
                thermal.append({"zone": argument, "type": values.get("type") or argument,
                                "temp_c": temp})
        elif name == "power":
            power[argument] = _key_values(lines)
        elif name == "meminfo":
            for key, value in (line.split(":", 1) for line in lines if ":" in line):
                kb = _int(value.strip().split()[0]) if value.strip() else None
                if kb is not None:
                    facts["mem_total_kb" if key == "MemTotal" else "mem_available_kb"] = kb
        elif name == "cpuinfo":
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() == "Hardware" and value.strip():
                    facts.setdefault("cpuinfo_hardware", value.strip())
                elif key.strip() == "CPU part":
                    cpu_parts.append(value.strip())

    cpus.sort(key=lambda c: c["cpu"])
    if "online_cpus" in facts:
        online = set(facts["online_cpus"])
        for cpu in cpus:
            cpu["online"] = cpu["cpu"] in online
    elif cpus:
        facts["online_cpus"] = [c["cpu"] for c in cpus if c["online"]]
    facts.update(_from_props(props))
    facts["cpus"] = cpus
    facts["cpu_count"] = len(cpus) or len(facts.get("online_cpus", []))
    facts["clusters"] = clusters_of(cpus)
    if cpu_parts:
        facts["cpu_parts"] = sorted(set(cpu_parts))
    facts["thermal"] = thermal
    battery = _battery(power)
    if battery:
        facts["battery"] = battery
    facts["props"] = {k: v for k, v in props.items() if k.startswith(("ro.product.", "ro.soc.",
                      "ro.board.", "ro.hardware", "ro.build.version.", "ro.build.fingerprint"))}
    return facts


def _from_props(props: dict[str, str]) -> dict[str, Any]:
    def first(*keys: str) -> str | None:
        for key in keys:
            if props.get(key):
                return props[key]
        return None

    out: dict[str, Any] = {
        "model": first("ro.product.model", "ro.product.system.model", "ro.product.vendor.model"),
        "manufacturer": first("ro.product.manufacturer", "ro.product.system.manufacturer",
                              "ro.product.vendor.manufacturer"),
        "brand": first("ro.product.brand"),
        "device": first("ro.product.device"),
        "soc": {k: v for k, v in (("model", first("ro.soc.model")),
                                   ("manufacturer", first("ro.soc.manufacturer")),
                                   ("board_platform", first("ro.board.platform")),
                                   ("hardware", first("ro.hardware"))) if v},
        "android_release": first("ro.build.version.release"),
        "sdk": _int(first("ro.build.version.sdk")),
        "abi": first("ro.product.cpu.abi"),
        "abilist": [a for a in (first("ro.product.cpu.abilist") or "").split(",") if a],
    }
    return {k: v for k, v in out.items() if v not in (None, {}, [])}


def _battery(power: dict[str, dict[str, str]]) -> dict[str, Any]:
    battery_values = next((v for name, v in power.items()
                           if v.get("type", "").lower() == "battery" or name == "battery"), None)
    if battery_values is None:
        return {}
    out: dict[str, Any] = {}
    if _int(battery_values.get("capacity")) is not None:
        out["level"] = _int(battery_values["capacity"])
    if battery_values.get("status"):
        out["status"] = battery_values["status"]
        out["charging"] = battery_values["status"].lower() in ("charging", "full")
    plugged = [name for name, v in power.items()
               if v.get("type", "").lower() in ("usb", "ac", "wireless", "mains", "usb_pd")
               and _int(v.get("online")) == 1]
    if plugged:
        out["plugged"] = plugged
    temp = _celsius(battery_values.get("temp"), tenths=True)
    if temp is not None:
        out["temp_c"] = temp
    return out


def is_arm64(facts: dict[str, Any]) -> tuple[bool, str]:
    """Whether the runner bundle can run here, and the ABI named in the verdict."""
    abi = facts.get("abi")
    if abi:
        return abi == "arm64-v8a", abi
    arch = facts.get("kernel_arch", "")
    return arch in ("aarch64", "arm64"), arch


def fastest_cpus(facts: dict[str, Any], at_least: int = 1) -> list[int]:
    """The fastest cluster's cores, widened with the next-fastest ones up to `at_least` cores."""
    chosen: list[int] = []
    for cluster in facts.get("clusters", []):
        if chosen and len(chosen) >= at_least:
            break
        chosen.extend(cluster["cpus"])
    if not chosen:
        chosen = list(facts.get("online_cpus", []))
    return sorted(chosen)


def cpu_mask(cpus: Iterable[int]) -> str:
    """taskset's hex mask for a set of core ids."""
    return format(sum(1 << c for c in cpus), "x")
