"""The stack every scenario runs on, started once per benchmark run and torn down at the end.

The embedded stack's components, configured as `provisioner.stack.EmbeddedStack` configures them: the Temporal dev
server (`temporal server start-dev --db-filename ...`, the search attributes registered), git over smart HTTP, the
sandbox cluster whose Flux simulator answers at once (reconcile_delay=0), and the migrated project database, here a
throw-away database on the machine's real PostgreSQL. Three deliberate differences, all outside what is measured:

- no in-process worker: the worker runs as its own `python worker.py` process (so its memory and threads can be
  measured), and the direct baseline in its own process too, so both share the same infrastructure process;
- the sandbox keeps no state file: its persister re-serialises the whole store (12 MB of JSON at ~1,500 projects)
  after every burst of writes, a demo feature whose CPU would be charged to whichever path runs later;
- Flux's reconcile interval is an hour: with the default minute, the simulator re-polls every repository ever
  created (a `git ls-remote` each), a load that grows through the run and starves later scenarios.
The dev server runs headless (no Web UI).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from temporalio.client import Client

from kubesim.cluster import FluxSimulatorConfig, SandboxCluster
from provisioner.binaries import bundled_binary
from provisioner.contracts import SEARCH_ATTRIBUTES
from provisioner.db.engine import migrate
from provisioner.gitserver import GitHttpServer
from provisioner.settings import PROJECT_ROOT, Secret, Settings
from provisioner.stack import free_port
from provisioner.temporal import DATA_CONVERTER
from tests.postgres import temporary_postgres_database

TEMPORAL_DB_LOCATIONS = ("disk", "tmpfs")
TMPFS = Path("/dev/shm")
WORKER_READY_LINE = "worker polling task queue"
WORKER_START_SECONDS = 60.0
TEMPORAL_START_SECONDS = 60.0
FLUX_INTERVAL = "1h"
FLUX_INTERVAL_SECONDS = 3600.0
DATABASE_PREFIX = "provisioner_bench_"
# A Python file run instead of worker.py, to measure a proposed worker change without touching the product.
WORKER_SCRIPT_ENV = "PROVISIONER_BENCH_WORKER_SCRIPT"


@dataclass(frozen=True)
class StackOptions:
    admin_database_url: str
    activity_threads: int
    temporal_db: str = "disk"  # "tmpfs": the dev server's SQLite file lives on /dev/shm
    templates_dir: Path | None = None  # None: a fresh copy of the shipped catalogue


class BenchStack:
    """The started stack plus what the worker and baseline processes need to reach it."""

    def __init__(self, options: StackOptions) -> None:
        if options.temporal_db not in TEMPORAL_DB_LOCATIONS:
            raise ValueError(f"temporal_db must be one of {TEMPORAL_DB_LOCATIONS}")
        self.options = options
        self.root = Path(tempfile.mkdtemp(prefix="provisioner-bench-"))
        self.templates_dir = options.templates_dir or copy_catalogue(self.root / "templates")
        self._cleanup = ExitStack()
        self._settings: Settings | None = None
        self._client: Client | None = None
        self._cluster: SandboxCluster | None = None
        self.temporal_pid: int | None = None
        self.temporal_store = ""  # e.g. "SQLite on tmpfs (/dev/shm/...)", once started

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            raise RuntimeError("the bench stack is not started")
        return self._settings

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("the bench stack is not started")
        return self._client

    @property
    def cluster(self) -> SandboxCluster:
        if self._cluster is None:
            raise RuntimeError("the bench stack is not started")
        return self._cluster

    async def __aenter__(self) -> BenchStack:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _start(self) -> None:
        database_url = self._cleanup.enter_context(
            temporary_postgres_database(self.options.admin_database_url, prefix=DATABASE_PREFIX)
        )
        data_dir = self.root / "data"
        data_dir.mkdir(parents=True)
        settings = Settings(
            data_dir=data_dir,
            database_url=Secret(database_url),
            templates_dir=self.templates_dir,
            task_queue=f"bench-{uuid.uuid4().hex[:8]}",
            git_token=Secret(uuid.uuid4().hex),
            activity_threads=self.options.activity_threads,
            flux_interval=FLUX_INTERVAL,
        )
        temporal_address = f"127.0.0.1:{free_port()}"
        self._start_temporal(temporal_address, self._temporal_db_path(data_dir), settings.temporal_namespace)
        git = GitHttpServer(settings.git_repos_dir, token=settings.git_token)
        git.start()
        self._cleanup.callback(git.stop)
        cluster = SandboxCluster(flux=FluxSimulatorConfig(reconcile_delay=0.0, interval_cap=FLUX_INTERVAL_SECONDS))
        cluster.start()
        self._cleanup.callback(cluster.stop)
        self._cluster = cluster
        self._settings = replace(
            settings,
            temporal_address=temporal_address,
            git_base_url=git.base_url,
            kubeconfig=str(cluster.write_kubeconfig(data_dir / "kubeconfig")),
        )
        await asyncio.to_thread(migrate, database_url)
        self._client = await self._connect(temporal_address, settings.temporal_namespace)

    def _temporal_db_path(self, data_dir: Path) -> Path:
        """Where the dev server's SQLite file goes; sets `temporal_store` to say so (printed with the results)."""
        if self.options.temporal_db == "disk":
            directory = data_dir
        else:
            # /dev/shm is a tmpfs on Linux; without it, a temp dir (itself often a tmpfs).
            parent = TMPFS if TMPFS.is_dir() and os.access(TMPFS, os.W_OK) else Path(tempfile.gettempdir())
            directory = Path(tempfile.mkdtemp(prefix="provisioner-bench-temporal-", dir=parent))
            self._cleanup.callback(shutil.rmtree, directory, True)
        self.temporal_store = describe_sqlite_store(directory)
        return directory / "temporal.db"

    def _start_temporal(self, address: str, db_file: Path, namespace: str) -> None:
        host, _, port = address.rpartition(":")
        command = [
            bundled_binary("temporal"),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            host,
            "--port",
            port,
            "--db-filename",
            str(db_file),
            "--namespace",
            namespace,
            "--log-level",
            "warn",
        ]
        for key in SEARCH_ATTRIBUTES:
            command += ["--search-attribute", f"{key.name}=Keyword"]
        with self.log_path("temporal").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.temporal_pid = process.pid
        self._cleanup.callback(_terminate, process)

    async def _connect(self, address: str, namespace: str) -> Client:
        deadline = time.monotonic() + TEMPORAL_START_SECONDS
        while True:
            try:
                return await Client.connect(address, namespace=namespace, data_converter=DATA_CONVERTER)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        try:
            await asyncio.to_thread(self._cleanup.close)  # last in, first out: the database is dropped last
        finally:
            self._settings = self._client = self._cluster = None
            shutil.rmtree(self.root, ignore_errors=True)

    def process_env(self, activity_threads: int | None = None) -> dict[str, str]:
        """The environment `worker.py` (and the baseline process) read their Settings from."""
        settings = self.settings
        assert settings.kubeconfig is not None
        return {
            **os.environ,
            "TEMPORAL_ADDRESS": settings.temporal_address,
            "TEMPORAL_NAMESPACE": settings.temporal_namespace,
            "PROVISIONER_TASK_QUEUE": settings.task_queue,
            "PROVISIONER_DATA_DIR": str(settings.data_dir),
            "PROVISIONER_DATABASE_URL": settings.database_url.reveal(),
            "PROVISIONER_TEMPLATES_DIR": str(settings.templates_dir),
            "PROVISIONER_GIT_BASE_URL": settings.git_base_url,
            "PROVISIONER_GIT_TOKEN": settings.git_token.reveal(),
            "PROVISIONER_FLUX_INTERVAL": settings.flux_interval,
            "KUBECONFIG": settings.kubeconfig,
            "PROVISIONER_ACTIVITY_THREADS": str(activity_threads or settings.activity_threads),
            "PYTHONPATH": str(PROJECT_ROOT),
        }

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"


def _terminate(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def describe_sqlite_store(directory: Path) -> str:
    """'SQLite on <filesystem type> (<directory>)', the type from the mount table (the longest mount point)."""
    resolved = directory.resolve()
    best, fs_type = "", "unknown filesystem"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        mounts = []
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        if resolved.is_relative_to(mount_point) and len(mount_point) > len(best):
            best, fs_type = mount_point, fields[2]
    where = "tmpfs" if fs_type == "tmpfs" else f"disk ({fs_type})"
    return f"SQLite on {where}: {directory}"


def copy_catalogue(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PROJECT_ROOT / "templates" / "web-service", target / "web-service")
    return target


@dataclass(frozen=True)
class ProcessMemory:
    rss_mb: float
    peak_rss_mb: float  # VmHWM: the high-water mark since the process started
    threads: int


def process_memory(pid: int) -> ProcessMemory:
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()

    def megabytes(key: str) -> float:
        return int(fields[key].split()[0]) / 1024  # reported in kB

    return ProcessMemory(megabytes("VmRSS"), megabytes("VmHWM"), int(fields["Threads"]))


class WorkerProcess:
    """`python worker.py` as a separate process, configured through the environment like a deployment."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._env = env
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> WorkerProcess:
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, os.environ.get(WORKER_SCRIPT_ENV) or str(PROJECT_ROOT / "worker.py")],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + WORKER_START_SECONDS
        while WORKER_READY_LINE not in self.log_path.read_text(errors="replace"):
            if self._process.poll() is not None:
                raise RuntimeError(f"the worker exited at start; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the worker did not start polling in {WORKER_START_SECONDS:.0f} s")
            time.sleep(0.05)
        return self

    def memory(self) -> ProcessMemory:
        return process_memory(self.pid)

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
