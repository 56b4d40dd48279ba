"""ADB wire messages: the 24-byte header, command words, checksums and framing.

Owns only bytes-in/bytes-out; no sockets and no protocol state (see streams.py).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

try:
    import numpy as _np
except ImportError:  # numpy is a project dependency; the pure-Python sum is the fallback
    _np = None

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_STLS = 0x534C5453
KNOWN_COMMANDS = {A_SYNC, A_CNXN, A_AUTH, A_OPEN, A_OKAY, A_CLSE, A_WRTE, A_STLS}

#: Protocol versions: the first skips nothing; from the second on, data checksums are optional.
A_VERSION_MIN = 0x01000000
A_VERSION_SKIP_CHECKSUM = 0x01000001
DEVICE_VERSION = A_VERSION_SKIP_CHECKSUM

#: Largest payload this device accepts (the same value modern adbd advertises).
DEVICE_MAX_PAYLOAD = 1024 * 1024
#: The smallest payload any ADB peer must accept (pre-Android-N adbd).
LEGACY_MAX_PAYLOAD = 4096

AUTH_TOKEN = 1
AUTH_SIGNATURE = 2
AUTH_RSAPUBLICKEY = 3
TOKEN_SIZE = 20

HEADER = struct.Struct("<6I")
HEADER_SIZE = HEADER.size


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid ADB message."""


def checksum(data: bytes) -> int:
    """ADB's 'crc': the plain sum of payload bytes, modulo 2**32."""
    if len(data) < 4096 or _np is None:
        return sum(data) & 0xFFFFFFFF
    # Why numpy: sum() over a 1 MiB payload costs ~10 ms, a tenth of a loopback push's time budget.
    return int(_np.frombuffer(data, dtype=_np.uint8).sum(dtype=_np.uint64)) & 0xFFFFFFFF


def command_name(command: int) -> str:
    return struct.pack("<I", command).decode("latin-1")


@dataclass(frozen=True)
class Message:
    command: int
    arg0: int
    arg1: int
    data: bytes = b""

    def pack(self) -> bytes:
        header = HEADER.pack(self.command, self.arg0, self.arg1, len(self.data),
                             checksum(self.data), self.command ^ 0xFFFFFFFF)
        return header + self.data

    def __repr__(self) -> str:  # short form for logs
        return f"Message({command_name(self.command)}, {self.arg0:#x}, {self.arg1:#x}, {len(self.data)}B)"


@dataclass(frozen=True)
class Header:
    command: int
    arg0: int
    arg1: int
    data_length: int
    data_check: int


def unpack_header(raw: bytes, max_payload: int) -> Header:
    """Validate and decode a 24-byte header; raise ProtocolError on garbage."""
    command, arg0, arg1, length, check, magic = HEADER.unpack(raw)
    if magic != command ^ 0xFFFFFFFF:
        raise ProtocolError(f"bad magic {magic:#x} for command {command:#x}")
    if command not in KNOWN_COMMANDS:
        raise ProtocolError(f"unknown command {command:#x}")
    if length > max_payload:
        raise ProtocolError(f"payload of {length} bytes exceeds the maximum {max_payload}")
    return Header(command, arg0, arg1, length, check)


def verify_payload(header: Header, data: bytes, version: int) -> None:
    """Check the data checksum when the negotiated protocol version still requires it."""
    if version < A_VERSION_SKIP_CHECKSUM and checksum(data) != header.data_check:
        raise ProtocolError(f"checksum mismatch on {command_name(header.command)}")
