"""`open_device(address)`: turn a user-typed device address into a connected Device.

"local" is this machine; "tcp:host[:port]" (or adb's bare "host:port") a phone over TCP;
"usb:SERIAL" or a bare serial a phone over USB. Anything else is one clear DeviceUsageError.

While a phone waits for its owner to accept this computer's key, the wait is said at once, with a
countdown ("waiting for you to allow USB debugging on the phone (30 s)…"), instead of a silent pause.
"""
from __future__ import annotations

import inspect
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from jcw.android_harness.device import Device, DeviceUsageError

DEFAULT_ADB_PORT = 5555
_SERIAL = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
_HOST = re.compile(r"^[A-Za-z0-9.\-]{1,253}$")
_TRANSPORT_OPTIONS = ("key_path", "timeouts", "auth_notice")
#: Seconds the phone's owner has to tap "Allow" (the transport's auth timeout), when set in the environment.
AUTH_SECONDS_ENV = "JCW_ADB_AUTH_S"
#: Without a terminal (a log, CI), the countdown is a line every this many seconds instead of every second.
LOG_COUNTDOWN_STEP_S = 10
#: A phone that lets us in within this long (its owner had already said yes) needs no notice at all.
AUTH_NOTICE_GRACE_S = 0.5


def auth_wait_text(remaining: int) -> str:
    return f"waiting for you to allow USB debugging on the phone ({remaining} s)…"


class StderrCountdown:
    """The default auth notice: on a terminal one line rewritten every second and erased at the end; in a
    log a line at once and then every LOG_COUNTDOWN_STEP_S seconds."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = False
        self.first: int | None = None

    def __call__(self, remaining: int) -> None:
        if self.first is None:
            self.first = remaining
        try:
            if self.tty:
                self.stream.write("\r\033[K" + auth_wait_text(remaining))
            elif remaining == self.first or remaining % LOG_COUNTDOWN_STEP_S == 0 and remaining:
                self.stream.write(auth_wait_text(remaining) + "\n")
            else:
                return
            self.stream.flush()
            self.shown = True
        except (OSError, ValueError):
            pass  # a closed stderr must not break the connection

    def done(self) -> None:
        if self.tty and self.shown:
            try:
                self.stream.write("\r\033[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        self.shown, self.first = False, None


class _AuthCountdown:
    """Runs `notify(remaining seconds)` once a second, from the moment the key is offered to the phone
    until the connection is up, the wait is over, or stop() is called."""

    def __init__(self, seconds: float, notify: Callable[[int], None], connected: Callable[[], bool],
                 grace: float = AUTH_NOTICE_GRACE_S) -> None:
        self.seconds, self.notify, self.connected, self.grace = seconds, notify, connected, grace
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.stop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="jcw-auth-countdown",
                                        daemon=True)
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        deadline = time.monotonic() + self.seconds
        if stop.wait(self.grace) or self.connected():
            return
        while not stop.is_set():
            remaining = max(0, math.ceil(deadline - time.monotonic()))
            try:
                self.notify(remaining)
            except Exception:  # a notice must never break the connection
                return
            if remaining == 0:
                return
            # wake on the next whole second of the countdown, or as soon as the phone lets us in
            step = (deadline - time.monotonic()) - (remaining - 1)
            if stop.wait(max(0.05, min(step, 1.0))) or self.connected():
                return

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=2.0)
        done = getattr(self.notify, "done", None)
        if thread is not None and done is not None:
            done()


class _OfferWatchingSigner:
    """A key signer that starts the countdown when adb-shell offers its public key: that is the moment
    the phone shows "Allow USB debugging?" and the connection waits for its owner."""

    def __init__(self, inner: Any, on_offer: Callable[[], None]) -> None:
        self._inner, self._on_offer = inner, on_offer

    def Sign(self, data: bytes) -> bytes:  # noqa: N802  (adb-shell's signer interface)
        return self._inner.Sign(data)

    def GetPublicKey(self) -> Any:  # noqa: N802
        key = self._inner.GetPublicKey()
        self._on_offer()
        return key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _auth_seconds_from_env() -> float | None:
    text = os.environ.get(AUTH_SECONDS_ENV)
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 3600):
        raise DeviceUsageError(f"{AUTH_SECONDS_ENV}={text!r} must be a number of seconds from 0 to 3600.")
    return value


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


def _bad(address: str, why: str = "") -> DeviceUsageError:
    shown = repr(address) if len(str(address)) <= 80 else repr(f"{str(address)[:40]}…{str(address)[-20:]}")
    return DeviceUsageError(f"{shown} is not a device address{why}; use local, usb:<serial>, "
                            f"tcp:<host>:<port> or a serial shown by `jcw devices`.")


def parse_address(address: str) -> Address:
    """Parse and normalise a device address, or raise a one-sentence DeviceUsageError."""
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
    max_reconnects, backoff_s (AdbDevice), key_path and timeouts (AdbTransport; the auth wait is
    $JCW_ADB_AUTH_S seconds when set), auth_notice (True: a countdown on stderr while the phone waits
    for its owner to allow USB debugging; False: silent; or a callable taking the seconds left).
    Options a local device does not understand are ignored for it.
    """
    parsed = parse_address(address)
    if parsed.kind == "local":
        from jcw.android_harness.local import LocalDevice  # lazily: it may pull in host build helpers
        accepted = inspect.signature(LocalDevice).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        return LocalDevice(**{k: v for k, v in opts.items() if takes_any or k in accepted})

    from jcw.android_harness.adb_device import AdbDevice
    from jcw.android_harness.adb_keys import load_signers
    from jcw.android_harness.adb_transport import AdbTransport, Timeouts, tcp_transport_factory, usb_transport_factory
    allowed = set(inspect.signature(AdbDevice).parameters) - {"transport"} | set(_TRANSPORT_OPTIONS)
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ValueError(f"unknown phone option {unknown[0]!r}; known options: {', '.join(sorted(allowed))}")
    timeouts = opts.pop("timeouts", None)
    if timeouts is None:
        auth_s = _auth_seconds_from_env()
        timeouts = Timeouts() if auth_s is None else Timeouts(auth_s=auth_s)
    if isinstance(timeouts, dict):
        timeouts = Timeouts(**timeouts)
    notice = opts.pop("auth_notice", True)
    notify = StderrCountdown() if notice is True else notice if callable(notice) else None
    signers = load_signers(opts.pop("key_path", None))
    if parsed.kind == "tcp":
        factory = tcp_transport_factory(parsed.host, parsed.port)
    else:
        factory = usb_transport_factory(parsed.serial, timeouts.connect_s)
    transport = AdbTransport(str(parsed), factory, signers, timeouts)
    if notify is not None and signers:
        _watch_authorisation(transport, timeouts.auth_s, notify)
    transport.connect()
    try:
        return AdbDevice(transport, **opts)
    except BaseException:
        transport.close()
        raise


def _watch_authorisation(transport: Any, seconds: float, notify: Callable[[int], None]) -> None:
    """Make every connect of `transport` (the first and each reconnection) say the wait for the phone's
    owner at once, with a countdown, and end the countdown when connect returns."""
    countdown = _AuthCountdown(seconds, notify, lambda: transport.connected)
    signers = list(transport._signers)  # noqa: SLF001  (the harness's own transport)
    signers[0] = _OfferWatchingSigner(signers[0], countdown.start)
    transport._signers = signers  # noqa: SLF001
    plain_connect = transport.connect

    def connect() -> None:
        try:
            plain_connect()
        finally:
            countdown.stop()
    transport.connect = connect
