"""Which devices can be profiled: this machine, phones on USB (found through libusb by their ADB
interface: class 0xff, subclass 0x42, protocol 0x01) and the TCP phones the user registered in
~/.config/jcw/devices.json (`add_tcp_device` / `remove_tcp_device`).
"""
from __future__ import annotations

import json
import os
import platform
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jcw.android_harness.connect import parse_address
from jcw.android_harness.device import DeviceUsageError

ADB_CLASS, ADB_SUBCLASS, ADB_PROTOCOL = 0xFF, 0x42, 0x01


# -- USB -------------------------------------------------------------------------------------
def adb_setting(usb_device) -> Any | None:
    """The interface setting of a libusb device that speaks ADB, or None."""
    for setting in usb_device.iterSettings():
        if (setting.getClass(), setting.getSubClass(), setting.getProtocol()) == (
                ADB_CLASS, ADB_SUBCLASS, ADB_PROTOCOL):
            return setting
    return None


def probe_usb_interface(usb_device, setting) -> str:
    """"ready", "busy" (another program, usually the adb server, claimed it) or "no permission"."""
    import usb1
    try:
        handle = usb_device.open()
    except usb1.USBErrorAccess:
        return "no permission"
    except usb1.USBError:
        return "unavailable"
    try:
        handle.claimInterface(setting.getNumber())
    except usb1.USBErrorBusy:
        return "busy"
    except usb1.USBErrorAccess:
        return "no permission"
    except usb1.USBError:
        return "unavailable"
    else:
        handle.releaseInterface(setting.getNumber())
        return "ready"
    finally:
        handle.close()


def describe_usb_devices(usb_devices: Iterable[Any], probe: bool = True) -> list[dict[str, Any]]:
    """One entry per device exposing an ADB interface (libusb device objects or look-alikes)."""
    found = []
    for usb_device in usb_devices:
        setting = adb_setting(usb_device)
        if setting is None:
            continue
        try:
            serial = usb_device.getSerialNumber() or ""
        except Exception:  # reading string descriptors needs permission on the node
            serial = ""
        state = probe_usb_interface(usb_device, setting) if probe else "unchecked"
        vendor, product = usb_device.getVendorID(), usb_device.getProductID()
        entry = {"address": f"usb:{serial}" if serial else "", "kind": "usb", "serial": serial,
                 "state": state, "busy": state == "busy",
                 "usb_id": f"{vendor:04x}:{product:04x}",
                 "description": f"USB ADB device {vendor:04x}:{product:04x}"}
        if state == "busy":
            entry["hint"] = "held by another program, usually the adb server: run `adb kill-server`"
        elif state == "no permission":
            entry["hint"] = "add a udev rule for the phone and replug it"
        if "hint" in entry:
            entry["description"] += f" ({entry['hint']})"
        found.append(entry)
    return found


def usb_adb_devices(probe: bool = True) -> list[dict[str, Any]]:
    """Phones attached over USB; an empty list when libusb or USB access is unavailable."""
    try:
        import usb1
        context = usb1.USBContext()
        context.open()
    except Exception:
        return []
    try:
        return describe_usb_devices(context.getDeviceIterator(skip_on_error=True), probe)
    finally:
        context.close()


# -- TCP registry ----------------------------------------------------------------------------
def registry_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "jcw" / "devices.json"


def known_tcp_devices() -> list[str]:
    path = registry_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError) as exc:
        raise DeviceUsageError(f"The device list {path} cannot be read ({exc}); fix or delete it.") from None
    entries = data.get("tcp") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise DeviceUsageError(f"The device list {path} should hold {{\"tcp\": [\"tcp:host:port\", ...]}}; "
                               f"fix or delete it.")
    return entries


def _save(entries: list[str]) -> None:
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=".devices-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"tcp": entries}, handle, indent=2)
        handle.write("\n")
    os.replace(staging, path)


def _tcp_address(address: str) -> str:
    text = address if address.startswith("tcp:") or ":" in address else f"tcp:{address}"
    parsed = parse_address(text)
    if parsed.kind != "tcp":
        raise DeviceUsageError(f"{address!r} is not a TCP device address; use tcp:<host>:<port>.")
    return str(parsed)


def add_tcp_device(address: str) -> str:
    """Remember a TCP phone; returns its normalised address ("tcp:host:port")."""
    normalised = _tcp_address(address)
    entries = known_tcp_devices()
    if normalised not in entries:
        _save(entries + [normalised])
    return normalised


def remove_tcp_device(address: str) -> bool:
    """Forget a TCP phone; returns whether it was registered."""
    normalised = _tcp_address(address)
    entries = known_tcp_devices()
    if normalised not in entries:
        return False
    _save([e for e in entries if e != normalised])
    return True


def tcp_reachable(address: str, timeout_s: float = 0.5) -> bool:
    parsed = parse_address(address)
    try:
        with socket.create_connection((parsed.host, parsed.port), timeout=timeout_s):
            return True
    except OSError:
        return False


# -- everything ------------------------------------------------------------------------------
def list_devices(probe: bool = True) -> list[dict[str, Any]]:
    """The local machine, USB phones and registered TCP phones, each with address and state."""
    devices: list[dict[str, Any]] = [{
        "address": "local", "kind": "local", "state": "ready",
        "description": f"this machine ({platform.machine()}, {os.cpu_count()} CPUs)"}]
    devices.extend(usb_adb_devices(probe))
    for address in known_tcp_devices():
        state = ("reachable" if tcp_reachable(address) else "unreachable") if probe else "unchecked"
        devices.append({"address": address, "kind": "tcp", "state": state,
                        "description": "TCP ADB device (added by the user)"})
    return devices
