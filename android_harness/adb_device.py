"""AdbDevice: the Device interface for an Android phone over ADB (USB or TCP).

Installs the arm64 runner bundle once (checksummed), pushes each batch as a plan file, runs it
pinned to the fastest cores with one streaming shell command, and survives dropped links by
reconnecting and re-running only the plan lines that were not reported yet. Installing the bundle lives in
adb_bundle.BundleInstaller, the .pte runner's side (programs pushed by checksum) in adb_programs.ProgramRunner.
"""
from __future__ import annotations

import json
import secrets
import shlex
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from jcw.android_harness import phone_facts
from jcw.android_harness.adb_bundle import LAUNCHER, BundleInstaller, default_bundle_dir
from jcw.android_harness.adb_errors import (
    ConnectionLost,
    DeviceDirNotWritable,
    DeviceDiskFull,
    DeviceUnauthorized,
    NotArm64,
    disconnected,
    message_says_disk_full,
    message_says_not_writable,
    short_reason,
)
from jcw.android_harness.adb_programs import ProgramRunner
from jcw.android_harness.adb_transport import AdbTransport
from jcw.android_harness.device import Device, DeviceDisconnected, DeviceError, RunnerCrashed

REMOTE_BASE = "/data/local/tmp/jcw"
_STATUS_SCRIPT = "cat /proc/sys/kernel/random/boot_id 2>/dev/null; echo; cat /proc/uptime 2>/dev/null"


class AdbDevice(BundleInstaller, ProgramRunner, Device):
    """A phone reached through one AdbTransport; see the module docstring.

    Options: `cpus` (core ids to pin to, e.g. "4-7"; default the fastest cluster; `affinity` is
    the same option under LocalDevice's name), `threads` (for plan lines that carry none),
    `keep_files` (leave this session's plan and log files on the phone), `remove_bundle` (also
    delete the installed runner on close), `remote_dir`, `bundle_dir`, `max_reconnects`, `backoff_s`.
    """

    def __init__(self, transport: AdbTransport, *, bundle_dir: str | Path | None = None,
                 cpus: Iterable[int] | str | None = None, affinity: Iterable[int] | None = None,
                 threads: int | None = None, keep_files: bool = False,
                 remove_bundle: bool = False, remote_dir: str = REMOTE_BASE,
                 max_reconnects: int = 5, backoff_s: float = 0.5, max_backoff_s: float = 8.0,
                 sleep: Callable[[float], None] = time.sleep):
        if cpus is not None and affinity is not None:
            raise ValueError("give cpus or affinity, not both: they name the same pinning")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        if not isinstance(max_reconnects, int) or max_reconnects < 0:
            raise ValueError(f"max_reconnects must be a non-negative integer, got {max_reconnects!r}")
        if backoff_s <= 0 or max_backoff_s < backoff_s:
            raise ValueError(f"backoff_s must be positive and at most max_backoff_s, got {backoff_s!r}")
        if not remote_dir.startswith("/") or remote_dir.rstrip("/") in ("", "/data", "/data/local/tmp"):
            raise ValueError(f"remote_dir must be a dedicated absolute directory, got {remote_dir!r}")
        self.address = transport.address
        self._transport = transport
        self._bundle_dir = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
        self._requested_cpus = _parse_cpus(cpus if affinity is None else affinity)
        self._default_threads = threads
        self._keep_files = keep_files
        self._remove_bundle = remove_bundle
        self._remote_dir = remote_dir.rstrip("/")
        self._bundle_remote = f"{self._remote_dir}/bundle"
        self._run_remote = f"{self._remote_dir}/run-{secrets.token_hex(4)}"
        self._max_reconnects = max_reconnects
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._runner_info: dict[str, Any] | None = None
        self._init_programs()
        self._installed = False
        self._batch_counter = 0
        self._closed = False
        self.pushed_files: list[str] = []   # bundle files this session had to send (tests, benchmarks)
        self.reconnects = 0

        if not transport.connected:
            transport.connect()
        self._facts = self._read_facts()
        ok, abi = phone_facts.is_arm64(self._facts)
        if not ok:
            raise NotArm64(self.address, abi)
        self._has_taskset = self._prepare_run_dir()

    # -- Device interface --------------------------------------------------------------------
    def facts(self, refresh: bool = True) -> dict[str, Any]:
        """The phone's facts; by default re-read, since frequencies and temperatures move."""
        facts = dict(self._facts)
        if refresh and not self._closed:
            try:
                self._ensure_link()
                _, output = self._transport.shell(phone_facts.FACTS_SCRIPT)
                facts = phone_facts.parse_facts(output)
            except (ConnectionLost, DeviceDisconnected):
                pass  # the facts read at connection time still describe the phone
        facts["address"] = self.address
        facts["pinned_cpus"] = self.pinned_cpus(1) if self._has_taskset else []
        facts["pinning"] = ("taskset" if self._has_taskset
                            else "none (taskset is missing or rejected the mask)")
        return facts

    def runner_info(self) -> dict[str, Any]:
        if self._runner_info is None:
            self._runner_info = self._launcher_header(LAUNCHER)
        return dict(self._runner_info)

    def _launcher_header(self, launcher: str) -> dict[str, Any]:
        """Install the bundle if needed and return the "runner" object of `launcher --info`."""
        self._ensure_link()
        try:
            self._ensure_installed()
        except ConnectionLost as lost:
            raise disconnected(self.address, f"{lost} while installing the runner") from lost
        try:
            status, output = self._transport.shell(
                f"sh {shlex.quote(self._bundle_remote + '/' + launcher)} --info </dev/null 2>&1")
        except ConnectionLost as lost:
            raise disconnected(self.address, str(lost)) from lost
        for line in output.splitlines():
            header = _json_object(line)
            if header and isinstance(header.get("runner"), dict):
                return header["runner"]
        raise RunnerCrashed(f"The runner on {self.address} printed no header (exit status "
                            f"{status}): {_last_line(output) or 'no output'}.")

    def run_batch(self, plan_lines: Iterable[dict[str, Any]],
                  runner_args: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
        plan = [dict(line) for line in plan_lines]
        if self._default_threads is not None:
            for line in plan:
                line.setdefault("threads", self._default_threads)
        _check_ids(plan)
        args = [str(a) for a in runner_args]
        if plan:
            yield from self._run_resilient(plan, args, LAUNCHER)

    def _run_resilient(self, plan: list[dict[str, Any]], args: list[str], launcher: str,
                       prepare: Callable[[], None] | None = None,
                       pin_threads: int | None = None) -> Iterator[dict[str, Any]]:
        """Run plan lines with `launcher`, reconnecting and re-running only unreported lines after a
        dropped link. `prepare` runs before every attempt (after the bundle is installed)."""
        self._ensure_link()
        pending = plan
        failures_without_progress = 0
        while pending:
            reported: set[str] = set()
            try:
                self._ensure_installed()
                if prepare is not None:
                    prepare()
                for result in self._run_once(pending, args, launcher, pin_threads):
                    reported.add(result["id"])
                    yield result
                return
            except ConnectionLost as lost:
                pending = [line for line in pending if line["id"] not in reported]
                if not pending:
                    return  # every line arrived; the next call reconnects
                failures_without_progress = 0 if reported else failures_without_progress + 1
                if failures_without_progress > self._max_reconnects:
                    raise disconnected(self.address, f"{lost}; the batch made no progress in "
                                       f"{failures_without_progress} attempts") from lost
                self._reconnect(lost)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            targets = [] if self._keep_files else [self._run_remote]
            if self._remove_bundle:
                targets = [self._remote_dir]
            if targets:
                if not self._transport.connected:
                    self._transport.connect()
                self._transport.shell(self._kill_leftover_command() + "; rm -rf "
                                      + " ".join(shlex.quote(t) for t in targets))
        except (DeviceError, ConnectionLost):
            pass  # the phone is gone; its leftovers live in a directory we reuse or clear next time
        finally:
            self._transport.close()

    # -- setup -------------------------------------------------------------------------------
    def _read_facts(self) -> dict[str, Any]:
        try:
            _, output = self._transport.shell(phone_facts.FACTS_SCRIPT)
        except ConnectionLost as lost:
            raise disconnected(self.address, str(lost)) from lost
        return phone_facts.parse_facts(output)

    def _prepare_run_dir(self) -> bool:
        """Create the working directories and prove they are writable; report taskset's presence."""
        probe = f"{self._run_remote}/.jcw-write-test"
        script = (f"mkdir -p {shlex.quote(self._bundle_remote)} {shlex.quote(self._run_remote)} 2>&1; "
                  f"if echo ok > {shlex.quote(probe)} 2>/dev/null && [ -s {shlex.quote(probe)} ]; "
                  f"then echo @@writable; else ( echo ok > {shlex.quote(probe)} ) 2>&1; fi; "
                  f"rm -f {shlex.quote(probe)}; "
                  # Pin only if this phone's taskset accepts the mask (cores may be offline).
                  f"taskset {phone_facts.cpu_mask(self.pinned_cpus(1))} true >/dev/null 2>&1 && echo @@taskset; true")
        try:
            _, output = self._transport.shell(script)
        except ConnectionLost as lost:
            raise disconnected(self.address, str(lost)) from lost
        if "@@writable" not in output.splitlines():
            if message_says_disk_full(output):
                raise DeviceDiskFull(self.address, self._remote_dir)
            raise DeviceDirNotWritable(self.address, self._remote_dir.rsplit("/", 1)[0])
        return "@@taskset" in output.splitlines()

    # -- running -----------------------------------------------------------------------------
    def pinned_cpus(self, threads: int) -> list[int]:
        if self._requested_cpus is not None:
            return self._requested_cpus
        return phone_facts.fastest_cpus(self._facts, at_least=max(1, threads))

    def _kill_leftover_command(self) -> str:
        # A runner from a dropped connection may still be computing; it would skew timings.
        # Shell builtins only (read, test, kill) while no runner is left: nothing to spawn.
        pidfile = shlex.quote(f"{self._run_remote}/runner.pid")
        return (f"if read __jcw_p < {pidfile} 2>/dev/null && [ -n \"$__jcw_p\" ] && "
                f"grep -qE 'convbench|ptebench' /proc/$__jcw_p/cmdline 2>/dev/null; "
                f"then kill $__jcw_p 2>/dev/null; fi")

    def _run_command(self, plan_path: str, err_path: str, threads: int, args: list[str],
                     launcher_name: str = LAUNCHER) -> str:
        """One shell line: stop a leftover runner, start the pinned runner (its pid recorded so a
        later session can stop it), wait for it, tidy up, and leave the runner's exit status in $?.
        The runner's working directory is this session's run directory."""
        launcher = ["sh", f"{self._bundle_remote}/{launcher_name}", *args]
        cpus = self.pinned_cpus(threads)
        if self._has_taskset and cpus:
            launcher = ["taskset", phone_facts.cpu_mask(cpus), *launcher]
        pidfile, plan, err = (shlex.quote(p) for p in (f"{self._run_remote}/runner.pid",
                                                       plan_path, err_path))
        # Background + wait gives the runner's own pid in $! without an extra `sh -c`.
        command = (f"{self._kill_leftover_command()}; cd {shlex.quote(self._run_remote)} 2>/dev/null; "
                   f"{' '.join(shlex.quote(a) for a in launcher)} < {plan} 2> {err} & "
                   f"echo $! > {pidfile}; wait $!; __jcw_rc=$?; ")
        if self._keep_files:
            tidy = f"rm -f {pidfile}"
        else:  # keep the runner's stderr only when it failed, for the crash message
            tidy = (f"if [ $__jcw_rc -eq 0 ]; then rm -f {plan} {err} {pidfile}; "
                    f"else rm -f {plan} {pidfile}; fi")
        return f"{command}{tidy}; (exit $__jcw_rc)"

    def _run_once(self, pending: list[dict[str, Any]], args: list[str], launcher: str = LAUNCHER,
                  pin_threads: int | None = None) -> Iterator[dict[str, Any]]:
        self._batch_counter += 1
        plan_path = f"{self._run_remote}/plan-{self._batch_counter}.jsonl"
        err_path = f"{self._run_remote}/runner-{self._batch_counter}.err"
        payload = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in pending)
        self._transport.push_bytes(payload.encode("utf-8"), plan_path)
        threads = pin_threads or max(_threads_of(line) for line in pending)
        stream = self._transport.stream(self._run_command(plan_path, err_path, threads, args, launcher))
        waiting = {line["id"] for line in pending}
        noise: list[str] = []
        finished = False
        try:
            for text in stream:
                result = _json_object(text)
                if result is None:
                    noise.append(text[:500])
                    continue
                if isinstance(result.get("runner"), dict):
                    self._runner_info = result["runner"]
                elif result.get("id") in waiting:
                    waiting.discard(result["id"])
                    yield result
                else:
                    noise.append(text[:500])
            finished = True
        finally:
            if not finished:
                # Abandoned mid-stream (caller stopped, Ctrl-C): the half-read ADB stream makes
                # this link unusable, so drop it; close() or the next batch reconnects.
                self._transport.close()
        if stream.exit_code is None:
            raise ConnectionLost("the runner's shell ended without an exit status")
        if waiting:
            raise RunnerCrashed(self._crash_message(stream.exit_code, len(waiting), len(pending),
                                                    err_path, noise))

    def _crash_message(self, status: int, missing: int, total: int, err_path: str,
                       noise: list[str]) -> str:
        try:
            _, err = self._transport.shell(f"tail -c 2000 {shlex.quote(err_path)} 2>/dev/null")
        except (DeviceError, ConnectionLost):
            err = ""
        cause = (f"killed by signal {status - 128}" if 128 < status < 160 else f"exit status {status}")
        detail = _last_line(err) or _last_line("\n".join(noise))
        if message_says_disk_full(err):
            detail = "the phone's storage is full"
        elif message_says_not_writable(err) and not detail:
            detail = "permission denied"
        return (f"The runner on {self.address} stopped ({cause}) before reporting {missing} of "
                f"{total} plan lines" + (f": {detail[:200]}." if detail else "."))

    # -- resilience --------------------------------------------------------------------------
    def _ensure_link(self) -> None:
        if not self._transport.connected:
            self._reconnect(ConnectionLost("the previous command lost the connection"))

    def _reconnect(self, cause: BaseException) -> None:
        delay = self._backoff_s
        last: BaseException = cause
        for _attempt in range(self._max_reconnects):
            self._transport.close()
            self._sleep(delay)
            try:
                self._transport.connect()
                status = self._status()
                break
            except DeviceUnauthorized:
                raise
            except (DeviceError, ConnectionLost) as exc:
                last = exc
                delay = min(delay * 2, self._max_backoff_s)
        else:
            raise disconnected(self.address, f"{cause}; {self._max_reconnects} reconnection "
                               f"attempts failed: {short_reason(last)}")
        self.reconnects += 1
        if self._rebooted(status):
            raise DeviceDisconnected(f"The device at {self.address} rebooted during the run, "
                                     f"which ended the runner and may have wiped its files.")

    def _status(self) -> dict[str, Any]:
        _, output = self._transport.shell(_STATUS_SCRIPT)
        lines = [line.strip() for line in output.splitlines()]
        status: dict[str, Any] = {}
        if lines and lines[0]:
            status["boot_id"] = lines[0]
        try:
            status["uptime_s"] = float(lines[-1].split()[0])
        except (IndexError, ValueError):
            pass
        return status

    def _rebooted(self, status: dict[str, Any]) -> bool:
        before, now = self._facts.get("boot_id"), status.get("boot_id")
        if before and now:
            return before != now
        return ("uptime_s" in status and "uptime_s" in self._facts
                and status["uptime_s"] + 1.0 < self._facts["uptime_s"])


def _parse_cpus(cpus: Iterable[int] | str | None) -> list[int] | None:
    if cpus is None:
        return None
    parsed = phone_facts.parse_cpu_list(cpus) if isinstance(cpus, str) else sorted(set(cpus))
    if not parsed or any(not isinstance(c, int) or c < 0 or c > 63 for c in parsed):
        raise ValueError(f"cpus must name CPU cores such as \"4-7\" or [6, 7], got {cpus!r}")
    return parsed


def _threads_of(line: dict[str, Any]) -> int:
    # A malformed value is the runner's to reject (as an error result); pinning just ignores it.
    value = line.get("threads", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 64 else 1


def _check_ids(plan: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for index, line in enumerate(plan):
        ident = line.get("id")
        if not isinstance(ident, str) or not ident:
            raise ValueError(f"plan line {index} needs a non-empty string id, got {ident!r}")
        if ident in seen:
            raise ValueError(f"plan line {index} repeats id {ident!r}; ids must be unique in a batch")
        seen.add(ident)


def _json_object(text: str) -> dict[str, Any] | None:
    text = text.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
