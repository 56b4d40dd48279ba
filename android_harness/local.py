"""LocalDevice: runs the host runners (convbench for layers, ptebench for .pte programs) as
subprocesses on this machine.

Plan lines go to the runner through a temporary file on its stdin (so a long plan can never
deadlock against unread output); result lines are yielded as the runner flushes them.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from jcw.android_harness import runner
from jcw.android_harness.device import Device, DeviceError, RunnerCrashed
from jcw.android_harness.facts import local_facts

INFO_TIMEOUT_S = 30


class LocalDevice(Device):
    """This machine, measured with the host runner.

    threads: default "threads" for plan lines that carry none (the runner's own default is 1).
    affinity: CPUs to pin the runner and its thread pool to (passed as --affinity).
    binary: a convbench other than the one `make runner` builds.
    ptebench: a ptebench (.pte runner) other than the one `make runner` builds.
    """

    address = "local"

    def __init__(self, threads: int | None = None, affinity: Iterable[int] | None = None,
                 binary: str | os.PathLike[str] | None = None,
                 ptebench: str | os.PathLike[str] | None = None) -> None:
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        cpus = sorted(set(affinity)) if affinity is not None else None
        if cpus is not None:
            online = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
            bad = [c for c in cpus if not isinstance(c, int) or c < 0 or c not in online]
            if not cpus or bad:
                raise ValueError(f"affinity must list CPUs this process may use ({sorted(online)}), got {affinity!r}")
        self.threads = threads
        self.affinity = cpus
        self._binary_path = binary
        self._ptebench_path = ptebench
        self._header: dict[str, Any] | None = None
        self._program_header: dict[str, Any] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def binary(self) -> Path:
        return runner.host_binary(self._binary_path)

    @property
    def running_pid(self) -> int | None:
        """PID of the runner of the batch in progress, None when idle."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def last_header(self) -> dict[str, Any] | None:
        """The header object the runner printed at the start of the last batch."""
        return self._header

    @property
    def ptebench(self) -> Path:
        return runner.host_ptebench(self._ptebench_path)

    @property
    def last_program_header(self) -> dict[str, Any] | None:
        """The header object ptebench printed at the start of the last run_programs."""
        return self._program_header

    def _base_args(self, binary: Path | None = None) -> list[str]:
        args = [str(binary if binary is not None else self.binary)]
        if self.affinity is not None:
            args += ["--affinity", format(sum(1 << cpu for cpu in self.affinity), "x")]
        return args

    def facts(self) -> dict[str, Any]:
        facts = local_facts()
        facts["runner_threads_default"] = self.threads or 1
        if self.affinity is not None:
            facts["runner_affinity"] = self.affinity
        return facts

    def runner_info(self) -> dict[str, Any]:
        header = self._info(self._base_args())
        if header.get("xnnpack_initialized") is False:
            raise DeviceError("XNNPACK cannot initialise on this CPU, so the runner cannot measure here.")
        self._header = header
        return header

    def program_runner_info(self) -> dict[str, Any]:
        self._program_header = self._info(self._base_args(self.ptebench))
        return self._program_header

    def _info(self, args: list[str]) -> dict[str, Any]:
        """The value of the "runner" key of `args --info`'s first line."""
        try:
            done = subprocess.run(args + ["--info"], capture_output=True, timeout=INFO_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"The runner did not answer --info within {INFO_TIMEOUT_S} s.") from None
        except OSError as exc:
            raise DeviceError(f"The runner {args[0]} could not be started: {exc.strerror}.") from None
        lines = done.stdout.decode("utf-8", "replace").splitlines()
        header = runner.parse_output_line(lines[0]) if lines else {}
        if runner.is_header(header) and header["runner"].get("xnnpack_initialized") is False:
            return header["runner"]
        if done.returncode != 0 or not runner.is_header(header):
            reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise DeviceError(f"The runner failed to report its header: "
                              f"{reason[-1] if reason else f'exit status {done.returncode}'}")
        return header["runner"]

    def _plan_text(self, plan_lines: Iterable[dict[str, Any]]) -> tuple[str, int]:
        lines = []
        for plan_line in plan_lines:
            if self.threads is not None and "threads" not in plan_line:
                plan_line = {**plan_line, "threads": self.threads}
            lines.append(json.dumps(plan_line, separators=(",", ":")))
        return "".join(line + "\n" for line in lines), len(lines)

    def run_batch(self, plan_lines: Iterable[dict[str, Any]],
                  runner_args: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
        text, expected = self._plan_text(plan_lines)
        args = self._base_args() + [str(arg) for arg in runner_args]
        for line in self._stream(args, text, expected):
            if runner.is_header(line):
                self._header = line["runner"]
            else:
                yield line

    def run_programs(self, lines: Iterable[dict[str, Any]],
                     runner_args: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
        plan = []
        for line in lines:
            line = dict(line)
            for key in ("pte", "net", "input_file"):
                if isinstance(line.get(key), os.PathLike):
                    line[key] = os.fspath(line[key])
            plan.append(line)
        text, expected = self._plan_text(plan)
        args = self._base_args(self.ptebench) + [str(arg) for arg in runner_args]
        for line in self._stream(args, text, expected):
            if runner.is_header(line):
                self._program_header = line["runner"]
            else:
                yield line

    def _stream(self, args: list[str], text: str, expected: int) -> Iterator[dict[str, Any]]:
        """Run `args` with `text` on stdin; yield every output line (header included) as it arrives."""
        # stderr goes to a file, not a pipe, so a chatty runner can never block on it.
        stderr_file = tempfile.TemporaryFile(prefix="jcw-runner-stderr-")
        with tempfile.TemporaryFile(prefix="jcw-plan-") as plan_file:
            plan_file.write(text.encode())
            plan_file.seek(0)
            try:
                process = subprocess.Popen(args, stdin=plan_file, stdout=subprocess.PIPE, stderr=stderr_file)
            except OSError as exc:
                stderr_file.close()
                raise DeviceError(f"The runner {args[0]} could not be started: {exc.strerror}.") from None
        self._process = process
        reported = 0
        try:
            assert process.stdout is not None
            for raw in process.stdout:
                line = runner.parse_output_line(raw.decode("utf-8", "replace"))
                if not runner.is_header(line):
                    reported += 1
                yield line
            returncode = process.wait()
            if returncode != 0 or reported < expected:
                stderr_file.seek(0)
                stderr = stderr_file.read().decode("utf-8", "replace").strip()
                how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
                detail = f" ({stderr.splitlines()[-1]})" if stderr else ""
                raise RunnerCrashed(f"The runner {how} after reporting {reported} of {expected} plan lines{detail}.")
        finally:
            # Reached on normal end, on an error, and on generator close / KeyboardInterrupt.
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
            stderr_file.close()
            self._process = None

    def close(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
