"""A thin, strict layer over adb-shell: one ADB connection (TCP or USB) with the user's key,
a time limit on every call, exit codes for legacy `shell:` commands, line streaming, pushes,
and every failure turned into a one-sentence DeviceError or the internal ConnectionLost.

It knows nothing about the runner; adb_device builds on it.
"""
from __future__ import annotations

import io
import secrets
import select
import socket
import stat as stat_mod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from adb_shell import exceptions as adb_exc
from adb_shell.adb_device import AdbDevice as _AdbShellDevice
from adb_shell.transport.base_transport import BaseTransport
from adb_shell.transport.tcp_transport import TcpTransport

from jcw.android_harness.adb_errors import (
    ConnectionLost,
    DeviceDirNotWritable,
    DeviceDiskFull,
    is_connection_loss,
    message_says_disk_full,
    message_says_not_writable,
    translate_connect_error,
)
from jcw.android_harness.device import DeviceError


@dataclass
class Timeouts:
    """Seconds allowed for each kind of call; every ADB call uses one of them."""
    connect_s: float = 10.0      # TCP connect / USB claim and the CNXN handshake
    auth_s: float = 30.0         # the user tapping "Allow" on the phone
    command_s: float = 60.0      # a short shell command, start to end
    push_s: float = 300.0        # one file push, start to end
    idle_s: float = 900.0        # a streaming command that prints nothing for this long is stuck

    def validate(self) -> Timeouts:
        for name, value in vars(self).items():
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"timeout {name} must be a positive number of seconds, got {value!r}")
        return self


class TcpLink(TcpTransport):
    """adb-shell's TCP transport, made strict: a closed socket is reported at once (the
    stock one spins until its read timeout), partial sends are completed, Nagle is off."""

    def connect(self, transport_timeout_s):
        self._connection = socket.create_connection((self._host, self._port),
                                                    timeout=transport_timeout_s)
        self._connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connection.setblocking(False)

    def bulk_read(self, numbytes, transport_timeout_s):
        if self._connection is None:
            raise ConnectionLost("connection closed")
        readable, _, _ = select.select([self._connection], [], [], transport_timeout_s)
        if not readable:
            raise adb_exc.TcpTimeoutException(
                f"no data from {self._host}:{self._port} for {transport_timeout_s} s")
        data = self._connection.recv(numbytes)
        if not data:
            raise ConnectionLost("the device closed the connection")
        return data

    def bulk_write(self, data, transport_timeout_s):
        if self._connection is None:
            raise ConnectionLost("connection closed")
        view = memoryview(data)
        while view:
            _, writable, _ = select.select([], [self._connection], [], transport_timeout_s)
            if not writable:
                raise adb_exc.TcpTimeoutException(
                    f"could not send to {self._host}:{self._port} for {transport_timeout_s} s")
            sent = self._connection.send(view)
            view = view[sent:]
        return len(data)


def tcp_transport_factory(host: str, port: int) -> Callable[[], BaseTransport]:
    return lambda: TcpLink(host, port)


def usb_transport_factory(serial: str, timeout_s: float) -> Callable[[], BaseTransport]:
    def make() -> BaseTransport:
        from adb_shell.transport.usb_transport import UsbTransport  # needs libusb at runtime
        return UsbTransport.find_adb(serial=serial, default_transport_timeout_s=timeout_s)
    return make


class ShellStream:
    """Lines printed by one streaming shell command; `exit_code` is set once it has ended."""

    def __init__(self, chunks: Iterator[bytes], marker: bytes):
        self._chunks = chunks
        self._marker = marker
        self.exit_code: int | None = None

    def __iter__(self) -> Iterator[str]:
        pending = b""
        for chunk in self._chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                if self._is_marker(raw):
                    continue
                yield raw.rstrip(b"\r").decode("utf-8", "replace")
        if pending and not self._is_marker(pending):
            yield pending.rstrip(b"\r").decode("utf-8", "replace")

    def _is_marker(self, raw: bytes) -> bool:
        raw = raw.rstrip(b"\r")
        if not raw.startswith(self._marker):
            return False
        try:
            self.exit_code = int(raw[len(self._marker):])
        except ValueError:
            return False
        return True


class AdbTransport:
    """One ADB connection: connect with keys, run shell commands, stream, push; strict timeouts."""

    def __init__(self, address: str, make_transport: Callable[[], BaseTransport], signers,
                 timeouts: Timeouts | None = None, banner: str = "jcw"):
        self.address = address
        self._make_transport = make_transport
        self._signers = signers
        self.timeouts = (timeouts or Timeouts()).validate()
        self._banner = banner
        self._adb: _AdbShellDevice | None = None

    # -- connection ------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the link and authenticate; raises DeviceNotFound, DeviceUnauthorized, UsbInterfaceBusy, ..."""
        self.close()
        key_offered = False

        def on_key_offered(_io_manager) -> None:
            nonlocal key_offered
            key_offered = True

        try:
            adb = _AdbShellDevice(self._make_transport(), banner=self._banner,
                                  default_transport_timeout_s=self.timeouts.connect_s)
            adb.connect(rsa_keys=self._signers, transport_timeout_s=self.timeouts.connect_s,
                        auth_timeout_s=self.timeouts.auth_s, read_timeout_s=self.timeouts.connect_s,
                        auth_callback=on_key_offered)
        except Exception as exc:  # translated into the one sentence the user needs
            raise translate_connect_error(exc, self.address, key_offered) from exc
        self._adb = adb

    @property
    def connected(self) -> bool:
        return self._adb is not None and self._adb.available

    def close(self) -> None:
        if self._adb is not None:
            try:
                self._adb.close()
            except Exception:  # closing a broken link must never mask the original problem
                pass
            self._adb = None

    def _device(self) -> _AdbShellDevice:
        if self._adb is None:
            raise ConnectionLost("not connected")
        return self._adb

    # -- shell -----------------------------------------------------------------------------
    @staticmethod
    def _with_exit_marker(command: str) -> tuple[str, bytes]:
        # Legacy `shell:` has no exit status, so the shell prints it after a random marker
        # that the command's own output cannot forge.
        marker = f"__jcw_exit_{secrets.token_hex(6)}__ "
        return f"{command}\n__jcw_st=$?; echo; echo \"{marker}$__jcw_st\"", marker.encode()

    def shell(self, command: str, timeout_s: float | None = None) -> tuple[int, str]:
        """Run a short command; return (exit status, output without the trailing newline)."""
        limit = timeout_s or self.timeouts.command_s
        wrapped, marker = self._with_exit_marker(command)
        try:
            raw = self._device().shell(wrapped, transport_timeout_s=limit, read_timeout_s=limit,
                                       timeout_s=limit, decode=False)
        except Exception as exc:
            raise self._runtime_error(exc, "a shell command", limit) from exc
        head, found, tail = raw.rpartition(b"\n" + marker)
        if not found:
            raise ConnectionLost("the shell command ended without its exit status")
        try:
            status = int(tail.split(b"\n", 1)[0].strip())
        except ValueError as exc:
            raise ConnectionLost("the shell command printed a malformed exit status") from exc
        text = head.decode("utf-8", "replace")
        return status, text[:-1] if text.endswith("\n") else text

    def stream(self, command: str, idle_timeout_s: float | None = None) -> ShellStream:
        """Start a command and return its lines as they arrive (exit status at the end)."""
        limit = idle_timeout_s or self.timeouts.idle_s
        wrapped, marker = self._with_exit_marker(command)
        device = self._device()

        def chunks() -> Iterator[bytes]:
            try:
                yield from device.streaming_shell(wrapped, transport_timeout_s=limit,
                                                  read_timeout_s=limit, decode=False)
            except Exception as exc:
                raise self._runtime_error(exc, "the runner", limit) from exc

        return ShellStream(chunks(), marker)

    # -- files -----------------------------------------------------------------------------
    def push_bytes(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        self._push(io.BytesIO(data), remote_path, mode)

    def push_file(self, local_path: str, remote_path: str, mode: int = 0o644) -> None:
        with open(local_path, "rb") as handle:
            self._push(io.BytesIO(handle.read()), remote_path, mode)

    def _push(self, stream: io.BytesIO, remote_path: str, mode: int) -> None:
        limit = self.timeouts.push_s
        try:
            self._device().push(stream, remote_path, st_mode=stat_mod.S_IFREG | mode,
                                transport_timeout_s=limit, read_timeout_s=limit)
        except adb_exc.PushFailedError as exc:
            reason = exc.args[0] if exc.args else b""
            reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
            if message_says_disk_full(reason):
                raise DeviceDiskFull(self.address, remote_path) from exc
            if message_says_not_writable(reason):
                raise DeviceDirNotWritable(self.address, remote_path.rsplit("/", 1)[0]) from exc
            raise DeviceError(f"The device at {self.address} refused the file {remote_path} "
                              f"({reason.strip() or 'no reason given'}).") from exc
        except Exception as exc:
            raise self._runtime_error(exc, f"pushing {remote_path}", limit) from exc

    # -- errors ----------------------------------------------------------------------------
    def _runtime_error(self, exc: BaseException, what: str, limit: float) -> Exception:
        error = self._classify(exc, what, limit)
        if isinstance(error, ConnectionLost):
            self.close()  # the link's state is unknown now; the next user must reconnect
        return error

    def _classify(self, exc: BaseException, what: str, limit: float) -> Exception:
        if isinstance(exc, (DeviceError, ConnectionLost)):
            return exc
        if isinstance(exc, (adb_exc.TcpTimeoutException, adb_exc.AdbTimeoutError)):
            # A silent link and a stuck command look alike; the caller decides by reconnecting.
            return ConnectionLost(f"no answer during {what} for {limit:g} s")
        if is_connection_loss(exc):
            return ConnectionLost(f"{type(exc).__name__}: {exc}")
        return DeviceError(f"The device at {self.address} failed during {what} "
                           f"({type(exc).__name__}: {str(exc)[:160]}).")


