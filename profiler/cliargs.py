"""argparse value types and output-path checks shared by the stages' commands (profiler and later
stages import them).

Each names what it expected, so argparse prints one clear sentence for a bad value. The path checks
run before any long work, so a run that could not be written is never started; `os_error_reason`
phrases any OSError as a few words for one sentence.
"""
from __future__ import annotations

import argparse
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

#: What the runners accept for "threads" (convbench's MAX_THREADS, ptebench's limit).
MAX_THREADS = 256
#: Longest single name and whole path most Linux file systems take (used when pathconf cannot say).
NAME_MAX_DEFAULT = 255
PATH_MAX_DEFAULT = 4096
#: Longest path component quoted whole in a sentence; longer ones are shortened with an ellipsis.
QUOTED_NAME_MAX = 40


class OutputPathError(ValueError):
    """An output path that cannot be written; one sentence, raised before any long work."""


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type` accepting whole numbers >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {text!r}")
        return value
    parse.__name__ = f"whole number >= {minimum}"
    return parse


def int_between(minimum: int, maximum: int, why: str = "") -> Callable[[str], int]:
    """An argparse `type` accepting whole numbers in [minimum, maximum]; `why` says where the upper
    limit comes from (e.g. "the runner's limit")."""
    at_least = int_at_least(minimum)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(
                f"expected a number from {minimum} to {maximum}{f' ({why})' if why else ''}, got {text!r}")
        return value
    parse.__name__ = f"whole number from {minimum} to {maximum}"
    return parse


#: --threads of every command that runs a runner: the runners' own limit, checked at parse time.
threads_arg = int_between(1, MAX_THREADS, "what the runners accept")


# ---- phrasing OSErrors ----------------------------------------------------------------------------
def short_path(path: str | os.PathLike[str] | None) -> str:
    """The path for a sentence: a very long name inside it is cut to its ends and its length."""
    if path is None:
        return "the file"
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    parts = []
    for part in text.split(os.sep):
        if len(part) > QUOTED_NAME_MAX:
            part = f"{part[:12]}…{part[-8:]} ({len(part)} characters)"
        parts.append(part)
    return os.sep.join(parts)


def _name_max(existing: Path) -> int:
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX_DEFAULT


def os_error_reason(exc: OSError) -> str:
    """A few words for why an OSError happened, to nest in one sentence."""
    code = exc.errno
    if code == errno.ENAMETOOLONG:
        return "a name in the path is longer than the file system allows"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.EROFS:
        return "the file system is read-only"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    if code == errno.ENOENT:
        return "no such file or directory"
    if code == errno.ENOTDIR:
        return "a part of the path is a file, not a directory"
    if code == errno.EISDIR:
        return "it is a directory"
    if code == errno.EIO:
        return "the disk reported an input/output error"
    if code == errno.ELOOP:
        return "too many symbolic links"
    return (exc.strerror or str(exc) or type(exc).__name__).rstrip(".")


def os_error_sentence(exc: OSError, doing: str = "use") -> str:
    """One sentence (no trailing period) for an OSError that reached the top: what failed, where, why."""
    where = exc.filename if exc.filename is not None else None
    text = f"cannot {doing} {short_path(where)}" if where is not None else "a file operation failed"
    return f"{text}: {os_error_reason(exc)}"


# ---- output paths, checked before long work -------------------------------------------------------
def _check_names(path: Path, what: str) -> Path:
    """The absolute path, or OutputPathError when a name in it or the whole is too long."""
    absolute = Path(os.path.abspath(path))
    existing = next((p for p in (absolute, *absolute.parents) if _exists(p)), Path("/"))
    limit = _name_max(existing)
    for part in absolute.parts:
        if len(os.fsencode(part)) > limit:
            raise OutputPathError(f"{what} {short_path(path)}: the name {short_path(part)} is longer than the "
                                  f"{limit} bytes this file system allows for one name; choose a shorter one")
    if len(os.fsencode(str(absolute))) >= PATH_MAX_DEFAULT:
        raise OutputPathError(f"{what} {short_path(path)}: the path is longer than the {PATH_MAX_DEFAULT} bytes "
                              f"the system allows; choose a shorter one")
    return absolute


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _probe(directory: Path, what: str, path: str | os.PathLike[str]) -> None:
    """Create and remove a file in `directory`: the only test of writability that also holds for root
    (who ignores modes) on immutable directories and read-only file systems."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".jcw-write-test-", dir=directory)
    except OSError as exc:
        raise OutputPathError(f"{what} {short_path(path)}: cannot create files in {short_path(directory)} "
                              f"({os_error_reason(exc)})") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass


def check_output_dir(path: str | os.PathLike[str], what: str = "--out") -> None:
    """OutputPathError (one sentence) unless `path` is, or can be created as, a writable directory."""
    absolute = _check_names(Path(path), what)
    probe_in = None
    for candidate in (absolute, *absolute.parents):
        try:
            is_dir = os.path.isdir(candidate) if _exists(candidate) else None
        except OSError as exc:
            raise OutputPathError(f"{what} {short_path(path)}: {os_error_reason(exc)}") from None
        if is_dir is None:
            continue
        if not is_dir:
            if candidate == absolute:
                raise OutputPathError(f"{what} {short_path(path)} exists and is not a directory")
            raise OutputPathError(f"{what} {short_path(path)}: {short_path(candidate)} is a file, not a directory")
        probe_in = candidate
        break
    if probe_in is None:
        raise OutputPathError(f"{what} {short_path(path)}: no part of the path exists")
    _probe(probe_in, what, path)


def check_output_file(path: str | os.PathLike[str], what: str = "--out") -> None:
    """OutputPathError (one sentence) unless `path` is a file that can be written in an existing,
    writable directory (an existing file must be writable too)."""
    given = Path(path)
    absolute = _check_names(given, what)
    if os.path.isdir(absolute):
        raise OutputPathError(f"cannot write {what} {short_path(path)}: it is a directory")
    parent = absolute.parent
    try:
        os.stat(parent)
    except OSError as exc:
        reason = ("its directory does not exist" if exc.errno == errno.ENOENT
                  else os_error_reason(exc))
        raise OutputPathError(f"cannot write {what} {short_path(path)}: {reason}") from None
    if not os.path.isdir(parent):
        raise OutputPathError(f"cannot write {what} {short_path(path)}: {short_path(parent)} is not a directory")
    if _exists(absolute):
        try:
            os.close(os.open(absolute, os.O_WRONLY))
        except OSError as exc:
            raise OutputPathError(f"cannot write {what} {short_path(path)}: {os_error_reason(exc)}") from None
    _probe(parent, what, path)
