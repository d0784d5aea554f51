"""The fault proxy itself: it relays, cuts (dropping live connections), refuses or blackholes, and restores. The
last test runs the worker's own database engine through it against the real PostgreSQL."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from provisioner.db import dispose_engine, engine_for
from tests.chaos.faultproxy import FaultProxy, ProxyMode


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stopping = threading.Event()

    def echo(connection: socket.socket) -> None:
        with connection:
            while data := connection.recv(4096):
                connection.sendall(data)

    def serve() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=echo, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[:2]
    stopping.set()
    thread.join(timeout=5)
    listener.close()


def _connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=2)


def _echoes(sock: socket.socket, payload: bytes = b"ping") -> bool:
    sock.sendall(payload)
    return sock.recv(4096) == payload


def test_relays_cuts_and_restores(echo_server: tuple[str, int]) -> None:
    with FaultProxy(echo_server) as proxy:
        live = _connect(proxy)
        assert _echoes(live)

        proxy.cut(ProxyMode.BLACKHOLE)
        # The live connection is dropped: the client reads end-of-stream (or a reset), never an answer.
        with contextlib.suppress(ConnectionResetError):
            assert live.recv(4096) == b""
        assert proxy.dropped == 1

        held = _connect(proxy)  # TCP accepts, but nothing ever comes back
        held.sendall(b"anyone?")
        with pytest.raises(TimeoutError):
            held.settimeout(0.5)
            held.recv(4096)

        proxy.restore()
        assert _echoes(_connect(proxy))
        assert (proxy.accepted, proxy.blackholed) == (3, 1)


def test_refuse_resets_new_connections(echo_server: tuple[str, int]) -> None:
    with FaultProxy(echo_server) as proxy:
        proxy.cut(ProxyMode.REFUSE)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):  # the reset may even beat connect()'s return
            refused = _connect(proxy)
            refused.sendall(b"x")
            time.sleep(0.1)
            refused.sendall(b"x")
            refused.recv(4096)
        assert proxy.refused == 1
        with pytest.raises(ValueError):
            proxy.cut(ProxyMode.PASS)


def test_the_database_engine_recovers_from_a_cut(database_url: str) -> None:
    """A blackholed connect ends at connect_timeout; after restore the pooled (dropped) connection is replaced."""
    upstream = make_url(database_url)
    with FaultProxy((upstream.host or "127.0.0.1", upstream.port or 5432)) as proxy:
        proxied = upstream.set(host="127.0.0.1", port=proxy.port, query={"connect_timeout": "2"})
        url = proxied.render_as_string(hide_password=False)
        engine = engine_for(url)
        try:
            with engine.connect() as connection:  # now pooled
                assert connection.execute(text("SELECT 1")).scalar_one() == 1
            proxy.cut(ProxyMode.BLACKHOLE)
            started = time.monotonic()
            with pytest.raises(OperationalError), engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            assert time.monotonic() - started < 10, "the connect timeout did not end the blackholed connect"
            proxy.restore()
            with engine.connect() as connection:
                assert connection.execute(text("SELECT 1")).scalar_one() == 1
        finally:
            dispose_engine(url)
