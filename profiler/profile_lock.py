"""One `jcw profile` per profile directory: an fcntl lock file next to the database that names its holder
(PID, host, start time), is re-entrant within a process, and is dropped by the kernel however the holder ends.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jcw.profiler.cliargs import os_error_reason
from jcw.profiler.store import ProfileLocked, StoreNotWritable

LOCK_NAME = "profile.lock"
_HELD: dict[str, list[Any]] = {}  # resolved directory -> [fd, depth]: the lock is re-entrant in a process


def lock_holder(directory: str | Path) -> dict[str, Any] | None:
    """What the lock file of a profile directory says about its holder (pid, host, started), if anything."""
    try:
        text = (Path(directory) / LOCK_NAME).read_text(encoding="utf-8")
        holder = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _holder_words(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    started = holder.get("started")
    when = (f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"
            if isinstance(started, (int, float)) else "")
    return f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


@contextlib.contextmanager
def profile_lock(directory: str | Path) -> Iterator[Path]:
    """Hold the profile lock of `directory` (created if needed) while the block runs.

    The lock is an fcntl.flock on `<directory>/profile.lock`, which also records the holder's PID and
    host: the kernel drops it when the holder exits, however it ends, so a crashed run never leaves a
    stale lock. A second holder is refused at once with ProfileLocked naming the first one's PID and
    host. Re-entrant within a process. Directories this call created are removed again on the way out
    when nothing else was written into them.
    """
    directory = Path(directory)
    key = os.path.realpath(directory)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield directory
        finally:
            _HELD[key][1] -= 1
        return
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreNotWritable(f"cannot create profile directory {directory}: {os_error_reason(exc)}") from None
    path = directory / LOCK_NAME
    try:
        fd = _acquire(path, directory)
    except BaseException:
        _remove_empty(created)
        raise
    _HELD[key] = [fd, 1]
    try:
        yield directory
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it; a waiter re-checks the inode it locked
        os.close(fd)
        _remove_empty(created)


def _acquire(path: Path, directory: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreNotWritable(f"cannot write in profile directory {directory}: {os_error_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ProfileLocked(
                f"profile {directory} is being measured by another `jcw profile` "
                f"({_holder_words(lock_holder(directory))}); "
                f"wait for it to finish or stop it, or choose another --out") from None
        except OSError as exc:
            os.close(fd)
            raise StoreNotWritable(f"cannot lock profile directory {directory}: {os_error_reason(exc)}") from None
        try:
            mine, there = os.fstat(fd), os.stat(path)
            same = (mine.st_ino, mine.st_dev) == (there.st_ino, there.st_dev)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file as we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.time()}).encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise StoreNotWritable(f"cannot write in profile directory {directory}: {os_error_reason(exc)}") from None
    return fd


def _remove_empty(created: list[Path]) -> None:
    for directory in created:  # deepest first
        try:
            directory.rmdir()
        except OSError:
            return
