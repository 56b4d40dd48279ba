"""Device-side ADB authentication: Android public keys, token signatures, the accept policy.

A host proves its key by signing a 20-byte token: RSA PKCS#1 v1.5 over the raw token
used as a SHA-1 digest (adbd's RSA_verify(NID_sha1, ...)), checked here by `cryptography`.
Unknown keys are offered as an Android-format public key, which the phone's owner accepts
or refuses.
"""
from __future__ import annotations

import base64
import binascii
import os
import struct
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from .messages import TOKEN_SIZE

AUTH_MODES = ("accept", "refuse", "listed")


class KeyFormatError(ValueError):
    """A public key that is not in Android's RSAPublicKey format."""


@dataclass(frozen=True)
class AndroidPublicKey:
    """An RSA public key as adb stores it: modulus, exponent and the user@host comment."""
    modulus: int
    exponent: int
    comment: str = ""

    @property
    def bits(self) -> int:
        return self.modulus.bit_length()

    @classmethod
    def parse(cls, text: str | bytes) -> AndroidPublicKey:
        """Parse '<base64 of struct RSAPublicKey> [user@host]' and check its consistency.

        struct RSAPublicKey { u32 len; u32 n0inv; u32 n[len]; u32 rr[len]; u32 e; }, little
        endian, with n0inv = -1/n mod 2**32 and rr = (2**(32*len))**2 mod n.
        """
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        text = text.strip().rstrip("\0").strip()
        if not text:
            raise KeyFormatError("empty public key")
        blob_b64, _, comment = text.partition(" ")
        try:
            blob = base64.b64decode(blob_b64, validate=True)
        except (binascii.Error, ValueError):
            raise KeyFormatError("public key is not valid base64") from None
        if len(blob) < 12:
            raise KeyFormatError("public key is too short")
        (words,) = struct.unpack_from("<I", blob, 0)
        if not 16 <= words <= 256 or len(blob) != 4 * (3 + 2 * words):
            raise KeyFormatError(f"public key has {len(blob)} bytes, inconsistent with {words} modulus words")
        n0inv = struct.unpack_from("<I", blob, 4)[0]
        modulus = int.from_bytes(blob[8:8 + 4 * words], "little")
        rr = int.from_bytes(blob[8 + 4 * words:8 + 8 * words], "little")
        (exponent,) = struct.unpack_from("<I", blob, 8 + 8 * words)
        if modulus % 2 == 0 or modulus.bit_length() < 32 * words - 8:
            raise KeyFormatError("public key modulus is malformed")
        if (n0inv * modulus + 1) % (1 << 32) != 0:
            raise KeyFormatError("public key n0inv does not match its modulus")
        if rr != pow(2, 64 * words, modulus):
            raise KeyFormatError("public key rr does not match its modulus")
        if exponent not in (3, 65537):
            raise KeyFormatError(f"public key exponent {exponent} is not one adb uses")
        return cls(modulus, exponent, comment.strip())

    def to_text(self) -> str:
        """Back to adb's text form: base64 of the RSAPublicKey struct, then the comment."""
        words = (self.modulus.bit_length() + 31) // 32
        n0inv = (-pow(self.modulus, -1, 1 << 32)) % (1 << 32)
        blob = (struct.pack("<II", words, n0inv) + self.modulus.to_bytes(4 * words, "little")
                + pow(2, 64 * words, self.modulus).to_bytes(4 * words, "little") + struct.pack("<I", self.exponent))
        text = base64.b64encode(blob).decode("ascii")
        return f"{text} {self.comment}" if self.comment else text

    @cached_property
    def _public_key(self) -> rsa.RSAPublicKey:
        return rsa.RSAPublicNumbers(self.exponent, self.modulus).public_key()

    def verify(self, token: bytes, signature: bytes) -> bool:
        """True when signature is a PKCS#1 v1.5 signature of token taken as a SHA-1 digest (adbd signs the
        token itself, unhashed: hence Prehashed)."""
        if len(token) != TOKEN_SIZE or len(signature) != (self.bits + 7) // 8:
            return False
        try:
            self._public_key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
        except InvalidSignature:
            return False
        return True


def load_authorized_keys(path: str | os.PathLike) -> list[AndroidPublicKey]:
    """Read an adb_keys file: one public key per line; blank lines and '#' comments ignored."""
    keys = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KeyFormatError(f"{path} is not an adb_keys file (not UTF-8 text)") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            keys.append(AndroidPublicKey.parse(line))
        except KeyFormatError as exc:
            raise KeyFormatError(f"{path}, line {number}: {exc}") from None
    return keys


class AuthPolicy:
    """Which hosts the phone trusts, and what its owner answers to an 'Allow USB debugging?' prompt.

    mode 'accept': known keys sign in; an unknown key offered by a host is accepted (and kept)
    mode 'listed': only keys from the authorized list sign in; offered keys are refused
    mode 'refuse': nothing is accepted, as if the owner tapped 'Deny' every time
    """

    def __init__(self, mode: str = "accept", authorized: list[AndroidPublicKey] | None = None,
                 remembered: Path | None = None):
        """remembered: the phone's own adb_keys file; keys accepted at a prompt are appended to it
        and, in 'accept' mode, trusted again after a restart (as /data/misc/adb/adb_keys is)."""
        if mode not in AUTH_MODES:
            raise ValueError(f"auth mode must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
        self.mode = mode
        self._keys = list(authorized or [])
        self._remembered = remembered
        if remembered is not None and mode == "accept" and remembered.exists():
            for key in load_authorized_keys(remembered):
                if key not in self._keys:
                    self._keys.append(key)
        self._lock = threading.Lock()

    @property
    def keys(self) -> list[AndroidPublicKey]:
        with self._lock:
            return list(self._keys)

    @staticmethod
    def new_token() -> bytes:
        return os.urandom(TOKEN_SIZE)

    def check_signature(self, token: bytes, signature: bytes) -> AndroidPublicKey | None:
        if self.mode == "refuse":
            return None
        for key in self.keys:
            if key.verify(token, signature):
                return key
        return None

    def offer_key(self, payload: bytes) -> AndroidPublicKey | None:
        """The host offers its public key; return it when the owner 'taps Allow'."""
        if self.mode != "accept":
            return None
        try:
            key = AndroidPublicKey.parse(payload)
        except KeyFormatError:
            return None
        with self._lock:
            if key not in self._keys:
                self._keys.append(key)
                if self._remembered is not None:
                    self._remembered.parent.mkdir(parents=True, exist_ok=True)
                    with open(self._remembered, "a", encoding="utf-8") as store:
                        store.write(key.to_text() + "\n")
        return key
