"""The embedded stack: everything provisioner needs, on this machine, with its data under one directory.

Temporal dev server (with its Web UI, persisted to a SQLite file), the Git smart-HTTP server, the Kubernetes sandbox
API server with its Flux simulator, the database migrations, and a worker. Used by `provisioner demo` and
`provisioner up`, and by the end-to-end tests; real deployments configure real services instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from types import TracebackType

from temporalio.client import Client

from kubesim.cluster import FluxSimulatorConfig, SandboxCluster
from provisioner.binaries import bundled_binary
from provisioner.contracts import SEARCH_ATTRIBUTES
from provisioner.db.engine import migrate
from provisioner.gitserver import GitHttpServer
from provisioner.settings import Settings
from provisioner.temporal import data_converter_for
from worker import run_worker


@dataclass(frozen=True)
class StackPorts:
    temporal: int = 7233
    ui: int = 8233
    git: int = 18080
    kube: int = 16443

    @classmethod
    def ephemeral(cls) -> StackPorts:
        return cls(temporal=free_port(), ui=free_port(), git=0, kube=0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _require_free(port: int, what: str) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"port {port} for the {what} is in use: is another `provisioner up` running?")


class EmbeddedStack:
    def __init__(
        self,
        settings: Settings,
        *,
        ports: StackPorts | None = None,
        flux: FluxSimulatorConfig | None = None,
        run_worker_in_process: bool = True,
    ) -> None:
        self.ports = ports or StackPorts()
        self.data_dir = settings.data_dir
        self._base_settings = settings
        self._flux = flux or FluxSimulatorConfig()
        self._run_worker = run_worker_in_process
        self._temporal: subprocess.Popen[bytes] | None = None
        self._git: GitHttpServer | None = None
        self.cluster: SandboxCluster | None = None
        self._worker_stop = asyncio.Event()
        self._worker_task: asyncio.Task[None] | None = None
        self.settings = settings
        self.client: Client | None = None

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.ui}"

    def workflow_url(self, workflow_id: str) -> str:
        return f"{self.ui_url}/namespaces/{self.settings.temporal_namespace}/workflows/{workflow_id}"

    async def __aenter__(self) -> EmbeddedStack:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for port, what in ((self.ports.temporal, "Temporal server"), (self.ports.ui, "Temporal UI")):
            _require_free(port, what)
        self._temporal = self._start_temporal()
        self._git = GitHttpServer(
            self.data_dir / "git", port=self.ports.git, token=self._base_settings.git_token or None
        )
        self._git.start()
        self.cluster = SandboxCluster(state_file=self.data_dir / "sandbox.json", port=self.ports.kube, flux=self._flux)
        self.cluster.start()
        kubeconfig = self.cluster.write_kubeconfig(self.data_dir / "kubeconfig")
        self.settings = replace(
            self._base_settings,
            temporal_address=f"127.0.0.1:{self.ports.temporal}",
            git_base_url=self._git.base_url,
            kubeconfig=str(kubeconfig),
        )
        await asyncio.to_thread(migrate, self.settings.effective_database_url)
        self.client = await self._connect_when_up()
        if self._run_worker:
            self._worker_task = asyncio.create_task(
                run_worker(self.settings, self.client, self._worker_stop), name="worker"
            )

    def _start_temporal(self) -> subprocess.Popen[bytes]:
        log = (self.data_dir / "temporal.log").open("ab")
        command = [
            bundled_binary("temporal"),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.ports.temporal),
            "--ui-port",
            str(self.ports.ui),
            "--db-filename",
            str(self.data_dir / "temporal.db"),
            "--namespace",
            self.settings.temporal_namespace,
            "--log-level",
            "warn",
        ]
        for key in SEARCH_ATTRIBUTES:
            command += ["--search-attribute", f"{key.name}=Keyword"]
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    async def _connect_when_up(self, startup_seconds: float = 60.0) -> Client:
        deadline = time.monotonic() + startup_seconds
        while True:
            if self._temporal is not None and self._temporal.poll() is not None:
                raise RuntimeError(f"the Temporal dev server exited; see {self.data_dir / 'temporal.log'}")
            try:
                return await Client.connect(
                    self.settings.temporal_address,
                    namespace=self.settings.temporal_namespace,
                    data_converter=data_converter_for(self.settings),
                )
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._worker_task is not None:
            self._worker_stop.set()
            with contextlib.suppress(Exception):
                await self._worker_task
            self._worker_task = None
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        if self._git is not None:
            self._git.stop()
            self._git = None
        if self._temporal is not None:
            self._temporal.terminate()
            try:
                await asyncio.to_thread(self._temporal.wait, 15)
            except subprocess.TimeoutExpired:
                self._temporal.kill()
            self._temporal = None

