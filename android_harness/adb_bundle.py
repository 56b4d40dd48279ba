"""The arm64 runner bundle on an ADB phone: its manifest of checksummed files, and BundleInstaller, the
mixin of AdbDevice that pushes only the files whose sha256 on the phone differs and checks they arrived.
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from pathlib import Path

from jcw.android_harness import runner
from jcw.android_harness.device import DeviceError

LAUNCHER = runner.ANDROID_LAUNCHER


def default_bundle_dir() -> Path:
    """The arm64 bundle built by `make -C android_harness/native android` (checked when installing)."""
    return runner.ANDROID_BUNDLE_DIR


def read_manifest(bundle_dir: Path) -> dict[str, str]:
    """{file name: sha256} of the bundle (runner.bundle_manifest), every name a plain file in it."""
    files = runner.bundle_manifest(bundle_dir)["files"]
    for name, digest in files.items():
        if ("/" in name or name in (".", "..") or not (Path(bundle_dir) / name).is_file()
                or not isinstance(digest, str) or len(digest) != 64):
            raise DeviceError(f"The bundle manifest in {bundle_dir} lists {name!r}, which is not a "
                              f"checksummed file of the bundle; run `make runner-android` again.")
    if LAUNCHER not in files:
        raise DeviceError(f"The bundle manifest in {bundle_dir} does not list the launcher "
                          f"{LAUNCHER}; run `make runner-android` again.")
    return {name: digest.lower() for name, digest in files.items()}


def parse_sha256sum(text: str) -> dict[str, str]:
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].lstrip("*").removeprefix("./")] = parts[0].lower()
    return sums


class BundleInstaller:
    """_ensure_installed / _remote_sums for AdbDevice (it uses that class's transport, bundle directories
    and `pushed_files`)."""

    def _remote_sums(self, names: Iterable[str], directory: str | None = None) -> dict[str, str]:
        quoted = " ".join(shlex.quote(n) for n in names)
        _, output = self._transport.shell(
            f"cd {shlex.quote(directory or self._bundle_remote)} && sha256sum {quoted} 2>/dev/null; true")
        return parse_sha256sum(output)

    def _ensure_installed(self) -> None:
        """Push the bundle files whose on-device sha256 differs from the manifest (ConnectionLost passes up)."""
        if self._installed:
            return
        manifest = read_manifest(self._bundle_dir)
        on_device = self._remote_sums(manifest)
        stale = [name for name, sha in manifest.items() if on_device.get(name) != sha]
        for name in stale:
            local = self._bundle_dir / name
            mode = 0o755 if os.access(local, os.X_OK) or name == LAUNCHER else 0o644
            self._transport.push_file(str(local), f"{self._bundle_remote}/{name}", mode)
            self.pushed_files.append(name)
        if stale:
            after = self._remote_sums(stale)
            broken = [n for n in stale if after.get(n) not in (None, manifest[n])]
            if broken:
                raise DeviceError(f"The runner files {', '.join(broken)} arrived corrupted on "
                                  f"{self.address}; check free space on the phone and try again.")
        self._installed = True
