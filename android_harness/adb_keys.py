"""The user's ADB key pair: the same `~/.android/adbkey` that Google's `adb` uses, so a phone
that trusts the user's adb trusts jcw too; created (0600) with adb-shell's keygen when missing.

Also loads extra private keys named by ADB_VENDOR_KEYS, as adb does.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from adb_shell.auth.keygen import keygen
from adb_shell.auth.sign_cryptography import CryptographySigner

from jcw.android_harness.device import DeviceUsageError


def android_user_dir() -> Path:
    """Where adb keeps its keys: $ANDROID_USER_HOME, else $ANDROID_SDK_HOME/.android, else ~/.android."""
    if os.environ.get("ANDROID_USER_HOME"):
        return Path(os.environ["ANDROID_USER_HOME"])
    if os.environ.get("ANDROID_SDK_HOME"):
        return Path(os.environ["ANDROID_SDK_HOME"]) / ".android"
    return Path.home() / ".android"


def default_key_path() -> Path:
    return android_user_dir() / "adbkey"


def ensure_key(path: Path | None = None) -> Path:
    """Return the private key path, generating the pair when it does not exist yet.

    The pair is written inside a private temporary directory and moved into place, so the
    private key is never readable by others, not even for a moment, and a crash leaves
    either no key or a whole one.
    """
    path = Path(path) if path is not None else default_key_path()
    public = path.with_name(path.name + ".pub")
    if path.exists():
        if not public.exists():
            raise DeviceUsageError(f"The ADB key {path} has no public half {public}; restore it or "
                                   f"move both away so jcw can create a new pair.")
        return path
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".jcw-keygen-", dir=path.parent))
        try:
            keygen(str(staging / "adbkey"))
            os.chmod(staging / "adbkey", 0o600)
            os.chmod(staging / "adbkey.pub", 0o644)
            os.replace(staging / "adbkey.pub", public)
            os.replace(staging / "adbkey", path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise DeviceUsageError(f"Could not create the ADB key {path}: {exc.strerror or exc}.") from exc
    return path


def vendor_key_paths() -> list[Path]:
    """Private keys listed in ADB_VENDOR_KEYS (files, or directories of *.adb_key / adbkey files)."""
    found: list[Path] = []
    for entry in filter(None, os.environ.get("ADB_VENDOR_KEYS", "").split(os.pathsep)):
        item = Path(entry).expanduser()
        if item.is_dir():
            found.extend(sorted(p for p in item.iterdir()
                                if p.suffix == ".adb_key" or p.name == "adbkey"))
        elif item.is_file():
            found.append(item)
    return found


def load_signers(key_path: Path | None = None) -> list[CryptographySigner]:
    """Signers for the user's key (created if missing) followed by any vendor keys.

    adb-shell offers the first signer's public key when no signature is accepted, so the
    user's own key comes first: that is the one the phone's prompt will ask to trust.
    """
    signers = [_signer(ensure_key(key_path))]
    for extra in vendor_key_paths():
        if extra.with_name(extra.name + ".pub").exists():
            signers.append(_signer(extra))
    return signers


def _signer(path: Path) -> CryptographySigner:
    try:
        return CryptographySigner(str(path))
    except (OSError, ValueError, TypeError) as exc:
        raise DeviceUsageError(f"The ADB key {path} could not be read as a PEM RSA private key "
                               f"with its .pub beside it ({exc}).") from exc
