"""Where the runner binaries (convbench, the layer runner; ptebench, the .pte runner) live and how to start them.

Owns the host binary paths, the Android arm64 bundle directory and its manifest, the command
lines that run either, and parsing of the runners' output lines (the runner contract).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from jcw.android_harness.device import DeviceError

NATIVE_DIR = Path(__file__).resolve().parent / "native"
HOST_BINARY = NATIVE_DIR / "build" / "host" / "convbench"
PTEBENCH_HOST_BINARY = NATIVE_DIR / "build" / "host" / "ptebench"
ANDROID_BUNDLE_DIR = NATIVE_DIR / "build" / "android-arm64"
ANDROID_LAUNCHER = "convbench.sh"
PTEBENCH_LAUNCHER = "ptebench.sh"
ANDROID_LOADER = "ld-linux-aarch64.so.1"
MANIFEST_NAME = "manifest.json"
QEMU_AARCH64 = "qemu-aarch64-static"
#: The CPU qemu emulates for arm64 runs here: an Armv8.2 phone core with dot product and no SME, like the big
#: cores of most phones. qemu's default ("max") has SME, which makes ExecuTorch's XNNPACK pick the packed-LHS
#: SME GEMM for dense convolutions; qemu emulates it 2-20x slower than NEON depending on the host
#: (benchmarks/RESULTS.md), so timings and test run times would follow the host instead of the phone.
EMULATED_CPU = "cortex-a76"


class RunnerOutputError(DeviceError):
    """The runner wrote a line that is not a JSON object."""


def host_binary(path: str | os.PathLike[str] | None = None) -> Path:
    """The host convbench, checked to exist and be executable."""
    binary = Path(path) if path is not None else HOST_BINARY
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise DeviceError(f"The host runner {binary} is not built; run `make runner` first.")
    return binary


def host_ptebench(path: str | os.PathLike[str] | None = None) -> Path:
    """The host ptebench (.pte runner), checked to exist and be executable."""
    binary = Path(path) if path is not None else PTEBENCH_HOST_BINARY
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise DeviceError(f"The host .pte runner {binary} is not built; run `make runner` first.")
    return binary


def android_bundle_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The arm64 bundle directory, checked to hold a manifest and every file it lists."""
    bundle = Path(path) if path is not None else ANDROID_BUNDLE_DIR
    manifest = bundle / MANIFEST_NAME
    if not manifest.is_file():
        raise DeviceError(f"The Android runner bundle {bundle} is not built; run `make runner-android` first.")
    missing = [name for name in bundle_manifest(bundle)["files"] if not (bundle / name).is_file()]
    if missing:
        raise DeviceError(f"The Android runner bundle {bundle} lacks {', '.join(missing)}; "
                          "run `make runner-android` again.")
    return bundle


def bundle_manifest(bundle: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The bundle's manifest: {"version": str, "files": {name: sha256 hex}}."""
    bundle = Path(bundle) if bundle is not None else ANDROID_BUNDLE_DIR
    try:
        manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise DeviceError(f"The Android runner bundle manifest in {bundle} is unreadable ({exc}); "
                          "run `make runner-android` again.") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise DeviceError(f"The Android runner bundle manifest in {bundle} is malformed; "
                          "run `make runner-android` again.")
    return manifest


def emulated_bundle_command(bundle: str | os.PathLike[str] | None = None,
                            emulator: str = QEMU_AARCH64, binary: str = "convbench", cpu: str = EMULATED_CPU
                            ) -> list[str]:
    """argv that runs the arm64 bundle's `binary` (convbench or ptebench) here under qemu user-mode emulation,
    on qemu's CPU model `cpu`.

    Without binfmt_misc the launcher script cannot exec an arm64 loader, so the loader is
    started through qemu directly; the launcher honours CONVBENCH_EMULATOR for the same purpose.
    """
    if binary not in ("convbench", "ptebench"):
        raise ValueError(f"binary must be 'convbench' or 'ptebench', got {binary!r}")
    bundle_path = android_bundle_dir(bundle)
    if not (bundle_path / binary).is_file():
        raise DeviceError(f"The Android runner bundle {bundle_path} has no {binary}; run `make runner-android` again.")
    qemu = shutil.which(emulator)
    if qemu is None:
        raise DeviceError(f"{emulator} is not installed; install the qemu-user-static package.")
    return [qemu, "-cpu", cpu, str(bundle_path / ANDROID_LOADER), "--library-path", str(bundle_path),
            str(bundle_path / binary)]


def build(target: str = "host") -> None:
    """Builds a runner with make ("host" or "android"); raises DeviceError with make's last words."""
    if target not in ("host", "android"):
        raise ValueError(f"target must be 'host' or 'android', got {target!r}")
    done = subprocess.run(["make", "-C", str(NATIVE_DIR), target], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DeviceError(f"Building the {target} runner failed: {' / '.join(tail)}")


def parse_output_line(text: str) -> dict[str, Any]:
    """One runner output line as a dict (a header {"runner": ...} or a result line)."""
    try:
        value = json.loads(text)
    except ValueError:
        raise RunnerOutputError(f"The runner wrote a line that is not JSON: {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise RunnerOutputError(f"The runner wrote a line that is not a JSON object: {text[:200]!r}")
    return value


def is_header(line: dict[str, Any]) -> bool:
    return isinstance(line.get("runner"), dict)
