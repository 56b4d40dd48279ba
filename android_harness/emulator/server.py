"""EmulatedPhone: a TCP server speaking the device side of ADB over a sandbox directory.

Start it from Python (tests, dry runs) as a context manager, or with `jcw emulate`.
It owns the listening socket, the connections and the sandbox; the protocol lives in
streams.py, the services in shell.py and sync.py.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from . import shell, sync
from .auth import AndroidPublicKey, AuthPolicy, load_authorized_keys
from .faults import Faults
from .phone import Phone, build_sandbox
from .streams import Connection, Stream

log = logging.getLogger(__name__)

#: Optional ADB features this device implements. None of shell_v2, stat_v2, ls_v2, cmd, abb:
#: hosts fall back to the legacy shell and sync v1. fixed_push_mkdir: SEND creates parents.
FEATURES = ["fixed_push_mkdir"]
EXEC_SHIM_SOURCE = Path(__file__).with_name("exec_shim.c")


class EmulatorError(Exception):
    """The emulated phone cannot start; one sentence for the user."""


def _exec_shim_library() -> Path:
    """Compile exec_shim.c once per source version into a user cache and return the .so."""
    source = EXEC_SHIM_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    candidates = [Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jcw" / "emulator",
                  Path(tempfile.gettempdir()) / f"jcw-emulator-{os.getuid()}"]
    for cache in candidates:
        lib = cache / f"exec_shim-{digest}.so"
        if lib.exists():
            return lib
        try:
            cache.mkdir(parents=True, exist_ok=True)
            partial = cache / f".exec_shim-{digest}-{os.getpid()}-{threading.get_ident()}.so"
            result = subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(partial),
                                     str(EXEC_SHIM_SOURCE), "-ldl"], capture_output=True, text=True)
        except (OSError, FileNotFoundError) as exc:
            last = str(exc)
            continue
        if result.returncode == 0:
            os.replace(partial, lib)
            return lib
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "cc failed"
    raise EmulatorError(f"cannot build the emulator's exec shim with cc: {last}")


class EmulatedPhone:
    """An emulated Android phone reachable over ADB/TCP.

    >>> with EmulatedPhone(sandbox=tmp_path, port=0) as phone:
    ...     AdbDeviceTcp(phone.host, phone.port).connect(rsa_keys=[signer])

    sandbox: host directory used as the phone's '/' (a temporary one when None; it is
        removed at stop). Files pushed to /data/local/tmp/x land in <sandbox>/data/local/tmp/x.
    port: TCP port (0 = pick a free one; read `phone.port` after start).
    phone: a Phone, a dict or the path of a JSON description (default: a Pixel-6-like phone).
    auth: 'accept' (new keys accepted, like tapping Allow), 'listed' or 'refuse'.
    authorized_keys: adb_keys file path or list of AndroidPublicKey trusted from the start.
    faults: a Faults object; it stays live, so tests may arm faults while connected.
    allow_remote: required to bind anything but a loopback address, because shell
        commands run on this host (confined only by path rewriting).
    Attributes after start: host, port, address ('127.0.0.1:<port>'), serial, root (sandbox).
    """

    def __init__(self, sandbox: str | os.PathLike | None = None, port: int = 0, host: str = "127.0.0.1",
                 phone: Phone | dict | str | os.PathLike | None = None, auth: str = "accept",
                 authorized_keys: str | os.PathLike | list[AndroidPublicKey] | None = None,
                 faults: Faults | None = None, allow_remote: bool = False, qemu: str | None = None):
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer from 0 to 65535, not {port!r}")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback and not allow_remote:
            raise ValueError(f"host {host!r} is not a loopback address, and the emulated phone runs shell "
                             "commands on this machine: allow it explicitly with --allow-remote (allow_remote=True)")
        if isinstance(phone, Phone):
            self.phone = phone
        elif isinstance(phone, dict):
            self.phone = Phone.from_dict(phone)
        elif phone is None:
            self.phone = Phone.default()
        else:
            self.phone = Phone.load(phone)
        if isinstance(authorized_keys, (str, os.PathLike)):
            keys = load_authorized_keys(authorized_keys)
        else:
            keys = list(authorized_keys or [])
        self._auth_mode, self._initial_keys = auth, keys
        self.auth = AuthPolicy(auth, keys)  # replaced at start by one that remembers accepted keys
        self.faults = faults if faults is not None else Faults()
        self._bind_host, self._requested_port = host, port
        self._sandbox_arg = sandbox
        self._qemu = qemu or shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
        self._temp_dir: tempfile.TemporaryDirectory | None = None
        self._link_dir: str | None = None
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[Connection] = set()
        self._processes: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._sandbox_lock = threading.Lock()   # a reboot rebuilds /proc; readers wait for it
        self._stopping = threading.Event()
        self.connections_served = 0
        self.host, self.port = host, port
        self.root = Path()

    # -- lifecycle --
    def start(self) -> EmulatedPhone:
        if self._sandbox_arg is None:
            self._temp_dir = tempfile.TemporaryDirectory(prefix="jcw-phone-")
            real = Path(self._temp_dir.name)
        else:
            real = Path(self._sandbox_arg)
            real.mkdir(parents=True, exist_ok=True)
        self._real_root = real.resolve()
        self.root = self._real_root
        if not shell.SHELL_SAFE_ROOT.match(str(self.root)):
            # Command lines embed the root; give it a name that needs no quoting.
            self._link_dir = tempfile.mkdtemp(prefix="jcw-phone-link-")
            os.symlink(self._real_root, os.path.join(self._link_dir, "root"))
            self.root = Path(self._link_dir) / "root"
        build_sandbox(self._real_root, self.phone)
        self.auth = AuthPolicy(self._auth_mode, self._initial_keys,
                               remembered=self._real_root / "data" / "misc" / "adb" / "adb_keys")
        shell.install_shims(self._real_root, len(self.phone.cores), self.phone.kernel["machine"],
                            self.phone.kernel["release"], self.phone.data_total_bytes, self.phone.data_free_bytes)
        self._shim_lib = _exec_shim_library()
        family = socket.AF_INET6 if ":" in self._bind_host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self._bind_host, self._requested_port))
        except OSError as exc:
            listener.close()
            raise EmulatorError(f"cannot listen on {self._bind_host}:{self._requested_port}: {exc.strerror}") from None
        listener.listen(16)
        listener.settimeout(0.2)
        self._listener = listener
        self.host, self.port = listener.getsockname()[:2]
        self._stopping.clear()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="adb-accept", daemon=True)
        self._accept_thread.start()
        log.info("emulated phone %s listening on %s", self.serial, self.address)
        return self

    def stop(self) -> None:
        """Stop listening, drop every connection, end running commands; idempotent."""
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        self.drop_connections()
        with self._lock:
            processes = list(self._processes)
        for proc in processes:
            shell.terminate(proc)
        if self._link_dir:
            shutil.rmtree(self._link_dir, ignore_errors=True)
            self._link_dir = None
        if self._temp_dir is not None:
            self._temp_dir.cleanup()
            self._temp_dir = None

    def __enter__(self) -> EmulatedPhone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients and tests see --
    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"{host}:{self.port}"

    @property
    def serial(self) -> str:
        return self.phone.serial

    @property
    def data_dir(self) -> Path:
        """Host directory behind the phone's /data/local/tmp."""
        return self._real_root / "data" / "local" / "tmp"

    @property
    def boot_id(self) -> str:
        with self._sandbox_lock:
            return (self._real_root / "proc/sys/kernel/random/boot_id").read_text().strip()

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def banner(self) -> bytes:
        return self.phone.banner(FEATURES)

    def host_path(self, phone_path: str, for_write: bool = False) -> Path:
        """Map an absolute phone path into the sandbox, refusing escapes (PermissionError)."""
        if not phone_path.startswith("/") or "\0" in phone_path:
            raise PermissionError(f"not an absolute phone path: {phone_path!r}")
        normal = os.path.normpath(phone_path)
        normal = "/" + normal.lstrip("/")
        if for_write and not any(normal == w or normal.startswith(w + "/") for w in sync.WRITABLE):
            raise PermissionError(os.strerror(13))
        candidate = self._real_root / normal.lstrip("/")
        resolved = candidate.parent.resolve() / candidate.name if candidate.name else candidate.resolve()
        if resolved != self._real_root and self._real_root not in resolved.parents:
            raise PermissionError(os.strerror(13))
        return candidate

    def shell_env(self) -> dict[str, str]:
        root = str(self.root)
        env = {
            "PATH": f"{root}/.emu/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": f"{root}/data/local/tmp",
            "TMPDIR": f"{root}/data/local/tmp",
            "LANG": "C.UTF-8",
            "JCW_EMU_ROOT": root,
            "LD_PRELOAD": str(self._shim_lib),
        }
        if self._qemu:
            env["JCW_EMU_QEMU"] = self._qemu
            env["QEMU_CPU"] = self.phone.qemu_cpu
        # Both spellings of the root: command lines use self.root, getcwd() reports the real path.
        roots = [root] if root == str(self._real_root) else [root, str(self._real_root)]
        env["JCW_EMU_READONLY"] = ":".join(f"{r}/{d}" for r in roots for d in ("sys", "proc", "system", ".emu"))
        if self.faults.disk_full:
            env["JCW_EMU_FULL_DIR"] = ":".join(f"{r}/data" for r in roots)
        return env

    # -- events tests can cause --
    def drop_connections(self) -> int:
        """Cut every connection (a pulled cable); returns how many were cut."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.drop("dropped by request")
        for conn in connections:
            conn.thread.join(timeout=5)
        return len(connections)

    def reboot(self) -> None:
        """Drop every connection, end commands, wipe /data/local/tmp, and boot with a new boot id."""
        self.drop_connections()
        with self._lock:
            processes = list(self._processes)
        for proc in processes:
            shell.terminate(proc)
        with self._sandbox_lock:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            build_sandbox(self._real_root, self.phone)

    # -- internals --
    def _service(self, name: str) -> Callable[[Stream, str], None] | None:
        if name.startswith("shell:"):
            return lambda stream, n: shell.run_shell(self, stream, n[len("shell:"):])
        if name.startswith("exec:"):
            return lambda stream, n: shell.run_shell(self, stream, n[len("exec:"):])
        if name in ("reboot:", "reboot:bootloader", "reboot:recovery"):
            return self._reboot_service
        if name == "sync:":
            return lambda stream, n: sync.run_sync(self, stream, n)
        return None  # shell,v2 / stat_v2 / abb and the rest are not advertised, so refused

    def _reboot_service(self, stream: Stream, _name: str) -> None:
        """`adb reboot`: acknowledge, then go down; the phone is back at once with a new boot id."""
        stream.ready()
        threading.Thread(target=self.reboot, name="adb-reboot", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, f"{peer[0]}:{peer[1]}", self, self._service)
            with self._lock:
                if self._stopping.is_set():
                    sock.close()
                    break
                self._connections.add(conn)
                self.connections_served += 1
            conn.thread.start()

    def _connection_ended(self, conn: Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _track_process(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._processes.add(proc)

    def _untrack_process(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._processes.discard(proc)
