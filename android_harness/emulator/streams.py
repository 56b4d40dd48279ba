"""One ADB connection on the device side: handshake, auth, and OPEN/OKAY/WRTE/CLSE streams.

Flow control follows adbd: a stream has at most one WRTE in flight in each direction;
the device sends its next WRTE only after the host's OKAY, and acknowledges a host
WRTE with OKAY once the service has consumed it (which is the back-pressure).
"""
from __future__ import annotations

import itertools
import logging
import queue
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import messages as m

if TYPE_CHECKING:
    from .server import EmulatedPhone

log = logging.getLogger(__name__)


class StreamClosed(Exception):
    """The stream (or its whole connection) closed while a service was using it."""


class Stream:
    """A device-side socket of one service; methods are called from the service's thread."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int, service: str):
        self.conn, self.local_id, self.remote_id, self.service = conn, local_id, remote_id, service
        self._inbox: queue.Queue[bytes | None] = queue.Queue()
        self._may_send = threading.Event()
        self._may_send.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def ready(self) -> None:
        """Accept the OPEN: the host may now write."""
        self.conn.send(m.Message(m.A_OKAY, self.local_id, self.remote_id))

    def write(self, data: bytes) -> None:
        """Send data as WRTE packets no larger than the negotiated payload, one in flight at a time."""
        view = memoryview(data)
        while view:
            while not self._may_send.wait(0.5):
                if self.closed:
                    raise StreamClosed(self.service)
            if self.closed:
                raise StreamClosed(self.service)
            chunk, view = view[:self.conn.max_payload], view[self.conn.max_payload:]
            self._may_send.clear()
            self.conn.send(m.Message(m.A_WRTE, self.local_id, self.remote_id, bytes(chunk)))

    def read(self, timeout: float | None = None) -> bytes:
        """Next data the host wrote (acknowledged with OKAY now); b'' once the stream closed.

        Raises queue.Empty when timeout passes with nothing to read.
        """
        data = self._inbox.get(timeout=timeout)
        if data is None:
            self._inbox.put(None)  # stay closed for later readers
            return b""
        if not self.closed:
            self.conn.send(m.Message(m.A_OKAY, self.local_id, self.remote_id))
        return data

    def close(self) -> None:
        """The service is done: tell the host (once) and forget the stream."""
        if self._mark_closed():
            self.conn.forget(self)
            self.conn.send(m.Message(m.A_CLSE, self.local_id, self.remote_id), quiet=True)

    # -- called from the connection's reader thread --
    def _host_wrote(self, data: bytes) -> None:
        if not self.closed:
            self._inbox.put(data)

    def _host_acked(self) -> None:
        self._may_send.set()

    def _host_closed(self) -> None:
        if self._mark_closed():
            self.conn.forget(self)
            self.conn.send(m.Message(m.A_CLSE, self.local_id, self.remote_id), quiet=True)

    def _connection_lost(self) -> None:
        self._mark_closed()

    def _mark_closed(self) -> bool:
        with self._lock:
            if self._closed.is_set():
                return False
            self._closed.set()
        self._may_send.set()
        self._inbox.put(None)
        return True


class Connection:
    """The device end of one TCP connection from an ADB host."""

    def __init__(self, sock: socket.socket, peer: str, phone: EmulatedPhone,
                 services: Callable[[str], Callable[[Stream, str], None] | None]):
        self.sock, self.peer, self.phone, self._services = sock, peer, phone, services
        self.version = m.A_VERSION_MIN
        self.max_payload = m.LEGACY_MAX_PAYLOAD
        self.online = False
        self.host_banner = b""
        self._token: bytes | None = None
        self._offered_key = False
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._carried = 0
        self._dropped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"adb-conn-{peer}", daemon=True)

    # -- sending --
    def send(self, msg: m.Message, quiet: bool = False) -> None:
        packet = msg.pack()
        with self._send_lock:
            if self._dropped.is_set():
                if quiet:
                    return
                raise StreamClosed("connection dropped")
            budget = self.phone.faults.byte_budget(self._carried)
            try:
                if budget is not None and len(packet) > budget:
                    self.sock.sendall(packet[:budget])
                    self.phone.faults.fire_byte_drop()
                    self.drop("drop_after_bytes fault")
                    if quiet:
                        return
                    raise StreamClosed("connection dropped")
                self.sock.sendall(packet)
                self._carried += len(packet)
            except OSError:
                self.drop("send failed")
                if not quiet:
                    raise StreamClosed("connection lost") from None

    def drop(self, reason: str = "") -> None:
        """Cut the connection as a pulled cable would; every stream of it ends."""
        if self._dropped.is_set():
            return
        self._dropped.set()
        log.debug("dropping connection %s: %s", self.peer, reason)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        with self._state_lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream._connection_lost()

    def forget(self, stream: Stream) -> None:
        with self._state_lock:
            self._streams.pop(stream.local_id, None)

    @property
    def open_streams(self) -> int:
        with self._state_lock:
            return len(self._streams)

    # -- receiving --
    def _recv_exact(self, n: int) -> bytes:
        chunks, need = [], n
        while need:
            chunk = self.sock.recv(min(need, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            need -= len(chunk)
        return b"".join(chunks)

    def _run(self) -> None:
        try:
            while not self._dropped.is_set():
                header = m.unpack_header(self._recv_exact(m.HEADER_SIZE), m.DEVICE_MAX_PAYLOAD)
                data = self._recv_exact(header.data_length) if header.data_length else b""
                with self._send_lock:  # the count is shared with the sending threads
                    self._carried += m.HEADER_SIZE + len(data)
                    budget = self.phone.faults.byte_budget(self._carried)
                if budget == 0:
                    self.phone.faults.fire_byte_drop()
                    break
                version = max(self.version, header.arg0) if header.command == m.A_CNXN else self.version
                m.verify_payload(header, data, version)
                self._handle(header, data)
        except (EOFError, OSError):
            pass
        except m.ProtocolError as exc:
            log.warning("closing connection %s: %s", self.peer, exc)
        finally:
            self.drop("reader finished")
            try:
                self.sock.close()
            except OSError:
                pass
            self.phone._connection_ended(self)

    def _handle(self, h: m.Header, data: bytes) -> None:
        if h.command == m.A_CNXN:
            self.version = min(h.arg0, m.DEVICE_VERSION)
            self.max_payload = max(m.LEGACY_MAX_PAYLOAD, min(h.arg1, m.DEVICE_MAX_PAYLOAD))
            self.host_banner = data.rstrip(b"\0")
            self.online = False
            self._send_token()
        elif h.command == m.A_AUTH:
            self._handle_auth(h.arg0, data)
        elif not self.online:
            return  # adbd ignores everything but CNXN/AUTH until the host is authorized
        elif h.command == m.A_OPEN:
            self._open(h.arg0, data.rstrip(b"\0").decode("utf-8", "replace"))
        else:
            with self._state_lock:
                stream = self._streams.get(h.arg1)
            if stream is None or stream.remote_id != h.arg0:
                return
            if h.command == m.A_OKAY:
                stream._host_acked()
            elif h.command == m.A_WRTE:
                stream._host_wrote(data)
            elif h.command == m.A_CLSE:
                stream._host_closed()

    def _send_token(self) -> None:
        self._token = self.phone.auth.new_token()
        self.send(m.Message(m.A_AUTH, m.AUTH_TOKEN, 0, self._token))

    def _go_online(self) -> None:
        self.online = True
        self.send(m.Message(m.A_CNXN, m.DEVICE_VERSION, m.DEVICE_MAX_PAYLOAD, self.phone.banner()))

    def _handle_auth(self, kind: int, data: bytes) -> None:
        if self.online or self._token is None:
            return
        if kind == m.AUTH_SIGNATURE:
            if self.phone.auth.check_signature(self._token, data) is not None:
                self._go_online()
            else:
                self._send_token()  # adbd answers a wrong signature with a fresh token
        elif kind == m.AUTH_RSAPUBLICKEY and not self._offered_key:
            self._offered_key = True
            if self.phone.auth.offer_key(data) is not None:
                self._go_online()
            # refused: like an unanswered or denied prompt, the host hears nothing more

    def _open(self, remote_id: int, name: str) -> None:
        service = self._services(name)
        if service is None or remote_id == 0:
            self.send(m.Message(m.A_CLSE, 0, remote_id), quiet=True)
            return
        stream = Stream(self, next(self._ids), remote_id, name)
        with self._state_lock:
            self._streams[stream.local_id] = stream

        def run() -> None:
            try:
                service(stream, name)
            except StreamClosed:
                pass
            except Exception:  # a bug in a service must not take the phone down
                log.exception("service %r failed", name)
            finally:
                stream.close()

        threading.Thread(target=run, name=f"adb-svc-{stream.local_id}", daemon=True).start()
