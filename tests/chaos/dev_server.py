"""A Temporal dev server of the test's own, persisting to a SQLite file, that can be killed and started again on the
same data and port (the `local_env` fixture's server is shared by the whole session, so it must never be killed)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from temporalio.client import Client
from temporalio.service import RPCError

from provisioner.binaries import bundled_binary
from provisioner.temporal import DATA_CONVERTER, register_search_attributes

START_TIMEOUT_SECONDS = 90.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PersistentDevServer:
    """`temporal server start-dev --db-filename <db_file> --port <port> --headless`, its output in `log`."""

    def __init__(self, db_file: Path, log: Path) -> None:
        self.db_file = db_file
        self.log = log
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start (again) on the same file and port; return once it answers gRPC."""
        process = self._spawn()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            assert process.poll() is None, f"the dev server exited:\n{self.log.read_text(errors='replace')}"
            try:
                await self.connect()  # connecting asks the server for its system info
                return
            except (RuntimeError, RPCError):
                assert time.monotonic() < deadline, f"no answer:\n{self.log.read_text(errors='replace')}"
                await asyncio.sleep(0.2)

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self._process is None or self._process.poll() is not None, "already running"
        command = [bundled_binary("temporal"), "server", "start-dev", "--headless", "--ip", "127.0.0.1"]
        command += ["--db-filename", str(self.db_file), "--port", str(self.port)]
        with self.log.open("ab") as output:
            self._process = subprocess.Popen(command, stdout=output, stderr=output)
        return self._process

    async def connect(self) -> Client:
        return await Client.connect(self.address, data_converter=DATA_CONVERTER)

    async def client_with_search_attributes(self) -> Client:
        client = await self.connect()
        await register_search_attributes(client, "default")
        return client

    def kill(self) -> None:
        """kill -9: whatever it had not written to its file is gone."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=30)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> PersistentDevServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
