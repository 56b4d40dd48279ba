"""`open_device(address)`: turn a user-typed device address into a connected Device.

"local" is this machine; "tcp:host[:port]" (or adb's bare "host:port") a phone over TCP;
"usb:SERIAL" or a bare serial a phone over USB. Anything else is one clear DeviceError.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

from android_harness.device import Device, DeviceError

DEFAULT_ADB_PORT = 5555
_SERIAL = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
_HOST = re.compile(r"^[A-Za-z0-9.\-]{1,253}$")
_TRANSPORT_OPTIONS = ("key_path", "timeouts")


@dataclass(frozen=True)
class Address:
    kind: str                 # "local" | "tcp" | "usb"
    host: str = ""
    port: int = 0
    serial: str = ""

    def __str__(self) -> str:
        if self.kind == "tcp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"tcp:{host}:{self.port}"
        return f"usb:{self.serial}" if self.kind == "usb" else "local"


def _bad(address: str, why: str = "") -> DeviceError:
    return DeviceError(f"{address!r} is not a device address{why}; use local, usb:<serial>, "
                       f"tcp:<host>:<port> or a serial shown by `jcw devices`.")


def parse_address(address: str) -> Address:
    """Parse and normalise a device address, or raise a one-sentence DeviceError."""
    if not isinstance(address, str) or not address.strip():
        raise _bad(str(address))
    text = address.strip()
    if text == "local":
        return Address("local")
    if text.startswith("usb:"):
        serial = text[4:]
        if not _SERIAL.match(serial):
            raise _bad(address, " (a USB serial is letters, digits, dots, dashes or underscores)")
        return Address("usb", serial=serial)
    if text.startswith("tcp:"):
        return _parse_host_port(text[4:], address)
    if ":" in text:                      # adb names network devices "host:port"
        return _parse_host_port(text, address)
    if _SERIAL.match(text):
        return Address("usb", serial=text)
    raise _bad(address)


def _parse_host_port(rest: str, original: str) -> Address:
    if rest.startswith("["):             # [ipv6]:port
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ("" if not tail else None)
        if port_text is None or not host:
            raise _bad(original)
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            host, port_text = rest, ""
        if not _HOST.match(host or ""):
            raise _bad(original, " (the host must be a name or an IPv4 address)")
    port = DEFAULT_ADB_PORT
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise _bad(original, f" (port {port_text!r} is not a number from 1 to 65535)")
        port = int(port_text)
    return Address("tcp", host=host, port=port)


def open_device(address: str, **opts: Any) -> Device:
    """Connect to the device at `address` and return it, ready to run batches.

    Options for phones: cpus, keep_files, remove_bundle, bundle_dir, remote_dir,
    max_reconnects, backoff_s (AdbDevice), key_path and timeouts (AdbTransport).
    Options a local device does not understand are ignored for it.
    """
    parsed = parse_address(address)
    if parsed.kind == "local":
        from android_harness.local import LocalDevice  # lazily: it may pull in host build helpers
        accepted = inspect.signature(LocalDevice).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        return LocalDevice(**{k: v for k, v in opts.items() if takes_any or k in accepted})

    from android_harness.adb_device import AdbDevice
    from android_harness.adb_keys import load_signers
    from android_harness.adb_transport import (AdbTransport, Timeouts, tcp_transport_factory,
                                               usb_transport_factory)
    allowed = set(inspect.signature(AdbDevice).parameters) - {"transport"} | set(_TRANSPORT_OPTIONS)
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ValueError(f"unknown phone option {unknown[0]!r}; known options: {', '.join(sorted(allowed))}")
    timeouts = opts.pop("timeouts", None) or Timeouts()
    if isinstance(timeouts, dict):
        timeouts = Timeouts(**timeouts)
    signers = load_signers(opts.pop("key_path", None))
    if parsed.kind == "tcp":
        factory = tcp_transport_factory(parsed.host, parsed.port)
    else:
        factory = usb_transport_factory(parsed.serial, timeouts.connect_s)
    transport = AdbTransport(str(parsed), factory, signers, timeouts)
    transport.connect()
    try:
        return AdbDevice(transport, **opts)
    except BaseException:
        transport.close()
        raise
