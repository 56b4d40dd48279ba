"""The `sync:` service, version 1: STAT, LIST, SEND, RECV and QUIT on the phone's sandbox.

Requests arrive as a byte stream that the host may split or merge across WRTE packets
(adb packs SEND, DATA and DONE of a small file into one), so they are reassembled here.
Only /data/local/tmp and /sdcard are writable, as for adbd's shell user.
"""
from __future__ import annotations

import errno
import os
import stat
import struct
from typing import TYPE_CHECKING

from .streams import Stream

if TYPE_CHECKING:
    from .server import EmulatedPhone

SYNC_DATA_MAX = 64 * 1024
MAX_PATH = 1024
REQUEST = struct.Struct("<4sI")
WRITABLE = ("/data/local/tmp", "/sdcard")


class SyncFail(Exception):
    """A request that fails with a FAIL message to the host."""


class _Reader:
    """Exact-size reads over a stream's WRTE chunks."""

    def __init__(self, stream: Stream):
        self.stream, self.buffer = stream, bytearray()

    def read_exact(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            chunk = self.stream.read()
            if not chunk:
                return None
            self.buffer += chunk
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data


class _Writer:
    """Packs sync replies into WRTE payloads as large as the connection allows."""

    def __init__(self, stream: Stream):
        self.stream, self.buffer = stream, bytearray()

    def add(self, *parts: bytes) -> None:
        for part in parts:
            self.buffer += part
        if len(self.buffer) >= self.stream.conn.max_payload:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            data, self.buffer = bytes(self.buffer), bytearray()
            self.stream.write(data)


def run_sync(phone: EmulatedPhone, stream: Stream, _name: str) -> None:
    stream.ready()
    reader, writer = _Reader(stream), _Writer(stream)
    while True:
        head = reader.read_exact(REQUEST.size)
        if head is None:
            return
        ident, length = REQUEST.unpack(head)
        if ident == b"QUIT":
            return
        if ident not in (b"STAT", b"LIST", b"SEND", b"RECV") or length > MAX_PATH:
            writer.add(*_fail(f"unknown sync request {ident!r} of length {length}"))
            writer.flush()
            return
        arg = reader.read_exact(length)
        if arg is None:
            return
        path = arg.decode("utf-8", "surrogateescape")
        if ident == b"STAT":
            writer.add(b"STAT", _stat_v1(phone, path))
        elif ident == b"LIST":
            _list(phone, path, writer)
        elif ident == b"RECV":
            _recv(phone, path, writer)
        elif not _send(phone, path, reader, writer):
            writer.flush()
            return
        writer.flush()


def _fail(message: str) -> tuple[bytes, bytes]:
    data = message.encode("utf-8")
    return REQUEST.pack(b"FAIL", len(data)), data


def _stat_v1(phone: EmulatedPhone, path: str) -> bytes:
    try:
        st = os.lstat(phone.host_path(path))
        return struct.pack("<3I", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, int(st.st_mtime))
    except (OSError, PermissionError):
        return struct.pack("<3I", 0, 0, 0)


def _list(phone: EmulatedPhone, path: str, writer: _Writer) -> None:
    try:
        host = phone.host_path(path)
        names = [".", ".."] + sorted(os.listdir(host))
    except (OSError, PermissionError):
        names, host = [], None
    for name in names:
        try:
            st = os.lstat(os.path.join(host, name))
        except OSError:
            continue
        raw = name.encode("utf-8", "surrogateescape")
        writer.add(b"DENT", struct.pack("<4I", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF,
                                         int(st.st_mtime), len(raw)), raw)
    writer.add(b"DONE", struct.pack("<4I", 0, 0, 0, 0))


def _recv(phone: EmulatedPhone, path: str, writer: _Writer) -> None:
    try:
        fd = os.open(phone.host_path(path), os.O_RDONLY)
    except PermissionError as exc:
        writer.add(*_fail(f"open failed: {os.strerror(exc.errno or errno.EACCES)}"))
        return
    except OSError as exc:
        writer.add(*_fail(f"open failed: {os.strerror(exc.errno or errno.EIO)}"))
        return
    try:
        while True:
            try:
                chunk = os.read(fd, SYNC_DATA_MAX)
            except OSError as exc:
                writer.add(*_fail(f"read failed: {os.strerror(exc.errno or errno.EIO)}"))
                return
            if not chunk:
                break
            writer.add(REQUEST.pack(b"DATA", len(chunk)), chunk)
        writer.add(REQUEST.pack(b"DONE", 0))
    finally:
        os.close(fd)


def _send(phone: EmulatedPhone, spec: str, reader: _Reader, writer: _Writer) -> bool:
    """Receive one file. On failure keep draining DATA until DONE, then FAIL (as adbd reports it)."""
    path, _, mode_text = spec.rpartition(",")
    error: str | None = None
    fd = None
    target = None
    try:
        mode = int(mode_text) if path else 0
        if not path:
            raise SyncFail("bad SEND request: expected 'path,mode'")
        if stat.S_ISLNK(mode):
            raise SyncFail("symlinks are not supported by the emulated phone")
        target = phone.host_path(path, for_write=True)
        if phone.faults.disk_full:
            raise SyncFail(f"couldn't create file: {os.strerror(errno.ENOSPC)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, (mode & 0o777) or 0o644)
    except SyncFail as exc:
        error = str(exc)
    except ValueError:
        error = f"bad SEND mode {mode_text!r}"
    except PermissionError as exc:
        reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else os.strerror(errno.EACCES)
        error = f"couldn't create file: {reason}"
    except OSError as exc:
        error = f"couldn't create file: {os.strerror(exc.errno or errno.EIO)}"
    try:
        while True:
            head = reader.read_exact(REQUEST.size)
            if head is None:
                return False
            ident, length = REQUEST.unpack(head)
            if ident == b"DONE":
                if error is None and fd is not None:
                    os.close(fd)
                    fd = None
                    os.chmod(target, (mode & 0o777) or 0o644)
                    os.utime(target, (length, length))
                    writer.add(REQUEST.pack(b"OKAY", 0))
                else:
                    if target is not None and error is not None and fd is not None:
                        os.close(fd)
                        fd = None
                        target.unlink(missing_ok=True)
                    writer.add(*_fail(error or "write failed"))
                return True
            if ident != b"DATA" or length > SYNC_DATA_MAX:
                writer.add(*_fail(f"invalid data message: {ident!r} of {length} bytes (max {SYNC_DATA_MAX})"))
                return False
            data = reader.read_exact(length)
            if data is None:
                return False
            if error is None:
                if phone.faults.disk_full:
                    error = f"write failed: {os.strerror(errno.ENOSPC)}"
                    continue
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                except OSError as exc:
                    error = f"write failed: {os.strerror(exc.errno or errno.EIO)}"
    finally:
        if fd is not None:  # the transfer ended abnormally: drop the partial file, as adbd does
            os.close(fd)
            target.unlink(missing_ok=True)
