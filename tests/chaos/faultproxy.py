"""A fault-injecting TCP proxy: put it between a client and a server, then cut the line and restore it.

Modes for new connections: PASS relays them to the upstream; REFUSE resets them at once (the client sees
"connection reset"); BLACKHOLE accepts them and never answers, so only the client's own connect/read timeouts end
the wait, as with a host that dropped off the network. `cut()` also drops every relayed connection, so a pooled
connection the client still holds is dead when it next uses it. Plain threads: one accept loop, two pumps per
relayed connection.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
from enum import StrEnum
from types import TracebackType

log = logging.getLogger(__name__)

ACCEPT_POLL_SECONDS = 0.05  # how quickly stop() takes effect
UPSTREAM_CONNECT_TIMEOUT_SECONDS = 5.0
PUMP_CHUNK_BYTES = 65536


class ProxyMode(StrEnum):
    PASS = "pass"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"


def _close(sock: socket.socket, *, reset: bool = False) -> None:
    """Close `sock`, waking any thread blocked on it; `reset` sends RST instead of FIN."""
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class FaultProxy:
    """Listens on 127.0.0.1:<ephemeral port> and relays to `upstream` while in PASS mode. Thread-safe."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self._upstream = upstream
        self._host = host
        self._lock = threading.Lock()
        self._mode = ProxyMode.PASS
        self._relayed: set[tuple[socket.socket, socket.socket]] = set()
        self._held: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.accepted = 0
        self.refused = 0
        self.blackholed = 0
        self.dropped = 0

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the proxy is not running")
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    @property
    def relayed_count(self) -> int:
        with self._lock:
            return len(self._relayed)

    def start(self) -> None:
        listener = socket.create_server((self._host, 0))
        listener.settimeout(ACCEPT_POLL_SECONDS)
        self._listener = listener
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        self._drop_all()

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def cut(self, new_connections: ProxyMode = ProxyMode.BLACKHOLE) -> None:
        """Drop every relayed connection; from now on treat new ones per `new_connections` (REFUSE or BLACKHOLE)."""
        if new_connections is ProxyMode.PASS:
            raise ValueError("a cut line does not pass connections; use restore()")
        with self._lock:
            self._mode = new_connections
        self._drop_all()

    def restore(self) -> None:
        """Relay new connections again; the blackholed ones are closed (their clients have given up or will)."""
        with self._lock:
            self._mode = ProxyMode.PASS
            held, self._held = self._held, set()
        for sock in held:
            _close(sock)

    def _drop_all(self) -> None:
        with self._lock:
            relayed, self._relayed = self._relayed, set()
            held, self._held = self._held, set()
            self.dropped += len(relayed)
        for client, upstream in relayed:
            _close(client)
            _close(upstream)
        for sock in held:
            _close(sock)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self.accepted += 1
                mode = self._mode
                if mode is ProxyMode.BLACKHOLE:
                    self.blackholed += 1
                    self._held.add(client)
                elif mode is ProxyMode.REFUSE:
                    self.refused += 1
            if mode is ProxyMode.REFUSE:
                _close(client, reset=True)
            elif mode is ProxyMode.PASS:
                self._relay(client)

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._upstream, timeout=UPSTREAM_CONNECT_TIMEOUT_SECONDS)
        except OSError as error:
            log.info("fault proxy: upstream %s unreachable: %s", self._upstream, error)
            _close(client, reset=True)
            return
        upstream.settimeout(None)
        pair = (client, upstream)
        with self._lock:
            cut_meanwhile = self._mode is not ProxyMode.PASS
            if not cut_meanwhile:
                self._relayed.add(pair)
        if cut_meanwhile:
            _close(client, reset=True)
            _close(upstream)
            return
        for source, target in ((client, upstream), (upstream, client)):
            pump = threading.Thread(target=self._pump, args=(pair, source, target), name="fault-proxy-pump")
            pump.daemon = True
            pump.start()

    def _pump(self, pair: tuple[socket.socket, socket.socket], source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                # select() first: a socket closed by cut() ends the wait instead of leaving recv() blocked.
                readable, _, _ = select.select([source], [], [], ACCEPT_POLL_SECONDS * 4)
                if not readable:
                    if source.fileno() < 0:
                        return
                    continue
                data = source.recv(PUMP_CHUNK_BYTES)
                if not data:
                    break
                target.sendall(data)
        except (OSError, ValueError):
            pass  # the other side, or cut(), closed the connection
        with self._lock:
            owned = pair in self._relayed
            self._relayed.discard(pair)
        if owned:
            _close(pair[0])
            _close(pair[1])
