"""The .pte runner on an ADB phone: ExecuTorch programs, jcw network files (and input files) pushed once
by sha256 to <remote_dir>/programs/<sha>.pte|.jcwnet, plan lines rewritten to those files, ptebench.sh
run like convbench.sh.

ProgramRunner is a mixin of AdbDevice (it uses that class's link, install, push and run machinery);
program files outlive the session as a cache (`remove_bundle` clears them with the bundle).
"""
from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from jcw.android_harness import runner
from jcw.android_harness.device import DeviceError

PTE_LAUNCHER = runner.PTEBENCH_LAUNCHER
PROGRAMS_DIR = "programs"
#: Plan-line fields that name host files to send to the phone, and the suffix of their copy there.
FILE_FIELDS = {"pte": ".pte", "net": ".jcwnet", "input_file": ".f32"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ProgramRunner:
    """run_programs / program_runner_info for AdbDevice (see the module docstring)."""

    def _init_programs(self) -> None:
        self._programs_remote = f"{self._remote_dir}/{PROGRAMS_DIR}"
        self._program_runner_info: dict[str, Any] | None = None
        self._sha_cache: dict[tuple[str, int, int], str] = {}   # (path, size, mtime_ns) -> sha256
        self._programs_present: set[str] = set()                # file names checked on the phone
        self.pushed_programs: list[str] = []                    # program files this session sent

    def program_runner_info(self) -> dict[str, Any]:
        if self._program_runner_info is None:
            if PTE_LAUNCHER not in runner.bundle_manifest(self._bundle_dir)["files"]:
                raise DeviceError(f"The Android runner bundle {self._bundle_dir} has no .pte runner "
                                  f"({PTE_LAUNCHER}); run `make runner-android` again.")
            self._program_runner_info = self._launcher_header(PTE_LAUNCHER)
        return dict(self._program_runner_info)

    def run_programs(self, lines: Iterable[dict[str, Any]],
                     runner_args: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
        from jcw.android_harness.adb_device import _check_ids  # the one id rule for both runners
        plan = [dict(line) for line in lines]
        if self._default_threads is not None:
            for line in plan:
                line.setdefault("threads", self._default_threads)
        _check_ids(plan)
        args = [str(a) for a in runner_args]
        uploads: dict[str, Path] = {}
        renamed: dict[str, dict[str, str]] = {}   # id -> {device path: host path}
        device_plan = []
        for line in plan:
            try:
                renamed[line["id"]] = self._localise(line, uploads)
            except OSError as exc:
                yield {"id": line["id"], "error": f"cannot read {exc.filename}: {exc.strerror or exc}"}
                continue
            device_plan.append(line)
        if not device_plan:
            return
        default = self.program_runner_info().get("default_threads")
        default = default if isinstance(default, int) and default > 0 else 1
        pin = max((t if isinstance(t, int) and not isinstance(t, bool) and 0 < t <= 64 else default)
                  for t in (line.get("threads", 0) for line in device_plan))
        for result in self._run_resilient(device_plan, args, PTE_LAUNCHER,
                                          prepare=lambda: self._ensure_programs(uploads), pin_threads=pin):
            if isinstance(result.get("error"), str):
                for device_path, host_path in renamed.get(result["id"], {}).items():
                    result["error"] = result["error"].replace(device_path, host_path)
            yield result

    def _localise(self, line: dict[str, Any], uploads: dict[str, Path]) -> dict[str, str]:
        """Point the line's host files at their copies on the phone (relative to the run directory,
        the runner's working directory); returns {device path: host path}. OSError if unreadable."""
        renamed = {}
        for field, suffix in FILE_FIELDS.items():
            value = line.get(field)
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                continue  # absent or malformed: the runner reports it as an error line
            host = Path(value).expanduser()
            stat = host.stat()
            key = (str(host.resolve()), stat.st_size, stat.st_mtime_ns)
            if key not in self._sha_cache:
                self._sha_cache[key] = sha256_file(host)
            name = self._sha_cache[key] + suffix
            uploads[name] = host
            line[field] = f"../{PROGRAMS_DIR}/{name}"
            renamed[line[field]] = os.fspath(value)
        return renamed

    def _ensure_programs(self, uploads: dict[str, Path]) -> None:
        """Push the program files the phone lacks or holds corrupted (ConnectionLost passes up)."""
        missing = {name: path for name, path in uploads.items() if name not in self._programs_present}
        if not missing:
            return
        self._transport.shell(f"mkdir -p {shlex.quote(self._programs_remote)}")
        on_device = self._remote_sums(missing, self._programs_remote)
        stale = [name for name in missing if on_device.get(name) != name.split(".")[0]]
        for name in stale:
            self._transport.push_file(str(missing[name]), f"{self._programs_remote}/{name}", 0o644)
            self.pushed_programs.append(name)
        if stale:
            after = self._remote_sums(stale, self._programs_remote)
            broken = [n for n in stale if after.get(n) not in (None, n.split(".")[0])]
            if broken:
                raise DeviceError(f"The program files {', '.join(str(missing[n]) for n in broken)} arrived "
                                  f"corrupted on {self.address}; check free space on the phone and try again.")
        self._programs_present.update(missing)
