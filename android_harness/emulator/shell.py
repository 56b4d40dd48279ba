"""The legacy `shell:` service: run a command for real, confined to the phone's sandbox.

The command runs in the host's /bin/sh with cwd at the sandbox root (the phone's '/').
Phone paths in the command line (/data, /sdcard, /sys, /proc, /system) are rewritten to
sandbox paths, and sandbox paths in the output are mapped back. PATH starts with shims
(getprop, taskset, uname, id, nproc, df) and an LD_PRELOAD shim (exec_shim.c) runs aarch64
ELF executables under qemu-aarch64-static. Output is raw (stdout and stderr merged), with
no exit code: the stream closes when the command ends, as with adbd's legacy shell.

Confinement is by path rewriting, not by a jail: this is a test double that runs the
host's commands with the emulator's privileges, so it binds to loopback by default.
"""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .streams import Stream, StreamClosed

if TYPE_CHECKING:
    from .server import EmulatedPhone

PHONE_ROOTS = ("data", "sdcard", "sys", "proc", "system")
# A phone absolute path starts a word: not preceded by a path or name character.
_PHONE_PATH = re.compile(r"(?<![\w.~$/-])/(?:" + "|".join(PHONE_ROOTS) + r")(?=[/\s;&|'\"`)<>]|$)")
SHELL_SAFE_ROOT = re.compile(r"^[A-Za-z0-9_./-]+$")

SHIMS = {
    "getprop": r'''#!/bin/sh
# getprop [NAME [DEFAULT]]: values come from the phone description (system/build.prop).
props="$JCW_EMU_ROOT/system/build.prop"
if [ $# -eq 0 ]; then
  while IFS= read -r line; do printf '[%s]: [%s]\n' "${line%%=*}" "${line#*=}"; done < "$props"
  exit 0
fi
while IFS= read -r line; do
  case $line in "$1="*) printf '%s\n' "${line#*=}"; exit 0;; esac
done < "$props"
printf '%s\n' "${2-}"
''',
    "taskset": r'''#!/bin/sh
# taskset [-a] MASK CMD...: validate the mask against the phone's cores, then run CMD.
# The host has fewer cores than the phone, so the affinity itself is not applied.
[ "$1" = "-a" ] && shift
mask="${1#0x}"
case $mask in ''|*[!0-9a-fA-F]*) echo "taskset: bad mask '$1'" >&2; exit 1;; esac
shift
[ $# -gt 0 ] || { echo "usage: taskset [-a] MASK CMD [ARG...]" >&2; exit 1; }
cores=$(cat "$JCW_EMU_ROOT/.emu/ncores")
if [ $((0x$mask)) -eq 0 ] || [ $((0x$mask >> cores)) -ne 0 ]; then
  echo "taskset: sched_setaffinity: Invalid argument" >&2; exit 1
fi
exec "$@"
''',
    "uname": r'''#!/bin/sh
m=$(cat "$JCW_EMU_ROOT/.emu/machine"); r=$(cat "$JCW_EMU_ROOT/.emu/release")
case "$1" in
  -m) echo "$m";; -r) echo "$r";; -s|'') echo Linux;; -n) echo localhost;;
  -a) echo "Linux localhost $r #1 SMP PREEMPT $m Toybox";;
  *) echo "uname: unknown option $1" >&2; exit 1;;
esac
''',
    "id": '#!/bin/sh\necho "uid=2000(shell) gid=2000(shell) groups=2000(shell),1007(log),1011(adb),1015(sdcard_rw),'
          '3003(inet) context=u:r:shell:s0"\n',
    "df": r'''#!/bin/sh
# df [PATH...]: the phone's /data partition, sized by the description; nothing free while the disk is full.
total=$(( $(cat "$JCW_EMU_ROOT/.emu/data_total_bytes") / 1024 ))
free=$(( $(cat "$JCW_EMU_ROOT/.emu/data_free_bytes") / 1024 ))
[ -n "$JCW_EMU_FULL_DIR" ] && free=0
used=$((total - free))
echo "Filesystem       1K-blocks      Used Available Use% Mounted on"
printf '%-16s %9d %9d %9d %3d%% %s\n' /dev/block/dm-46 "$total" "$used" "$free" $(( (used * 100 + total - 1) / total )) /data
''',
    "nproc": '#!/bin/sh\ncat "$JCW_EMU_ROOT/.emu/ncores"\n',
}


def install_shims(root: Path, phone_cores: int, machine: str, release: str,
                  data_total_bytes: int, data_free_bytes: int) -> Path:
    """Write the shim directory under the sandbox; return it (it goes first on PATH)."""
    emu = root / ".emu"
    bin_dir = emu / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, text in SHIMS.items():
        path = bin_dir / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)
    (emu / "ncores").write_text(f"{phone_cores}\n")
    (emu / "machine").write_text(machine + "\n")
    (emu / "release").write_text(release + "\n")
    (emu / "data_total_bytes").write_text(f"{data_total_bytes}\n")
    (emu / "data_free_bytes").write_text(f"{data_free_bytes}\n")
    return bin_dir


def rewrite_command(command: str, root: str) -> str:
    """Prefix every phone absolute path in a command line with the sandbox root."""
    return _PHONE_PATH.sub(lambda match: root + match.group(0), command)


def run_shell(phone: EmulatedPhone, stream: Stream, command: str) -> None:
    """Serve `shell:<command>` (and `exec:<command>`) on an open stream."""
    stream.ready()
    root = str(phone.root)
    env = phone.shell_env()
    if not command.strip():
        stream.write(b"interactive shells are not supported by the emulated phone; give a command\n")
        return
    proc = subprocess.Popen(["/bin/sh", "-c", rewrite_command(command, root)], cwd=root, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    phone._track_process(proc)
    feeder = threading.Thread(target=_feed_stdin, args=(stream, proc), daemon=True)
    feeder.start()
    roots = sorted({root.encode(), str(phone._real_root).encode()}, key=len, reverse=True)
    counter = phone.faults.line_counter()

    def send(data: bytes) -> None:
        if data:
            for root_bytes in roots:
                data = data.replace(root_bytes + b"/", b"/").replace(root_bytes, b"/")
            stream.write(data)

    try:
        fd = proc.stdout.fileno()
        pending = b""
        while not stream.closed:
            ready, _, _ = select.select([fd], [], [], 0.05 if pending else 0.5)
            if not ready:
                send(pending)  # a partial line that sat still: let the host see it
                pending = b""
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            if b"\n" not in pending:
                if len(pending) >= 65536:
                    send(pending)
                    pending = b""
                continue
            head, _, pending = pending.rpartition(b"\n")
            lines = (head + b"\n").splitlines(keepends=True)
            cut = counter.cut(lines) if counter else None
            if cut is not None:
                send(b"".join(lines[:cut]))
                stream.conn.drop("drop_at_line fault")
                return
            send(b"".join(lines))
        send(pending)
    except StreamClosed:
        pass
    finally:
        _kill(proc)
        phone._untrack_process(proc)


def _feed_stdin(stream: Stream, proc: subprocess.Popen) -> None:
    try:
        while True:
            data = stream.read()
            if not data:
                break
            proc.stdin.write(data)
            proc.stdin.flush()
    except (OSError, ValueError, StreamClosed):
        pass
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass


def terminate(proc: subprocess.Popen) -> None:
    """End the command's whole process group (adbd's shell gets SIGHUP when the stream goes)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _kill(proc: subprocess.Popen) -> None:
    """terminate, reap, and close the pipes; only the service thread that owns proc calls this."""
    terminate(proc)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for pipe in (proc.stdout, proc.stdin):
        try:
            pipe.close()
        except OSError:
            pass
