"""Workers as real processes for the crash tests: the production entry point (`python -m worker`) or the crashing
worker (tests/chaos/crashing_worker.py), configured through the environment exactly as a deployment would be."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from provisioner.contracts import StepName
from provisioner.settings import PROJECT_ROOT, Settings
from tests.chaos.crashing_worker import CRASH_MARKER_ENV, CRASH_STEP_ENV

POLLING_LINE = "worker polling task queue"
START_TIMEOUT_SECONDS = 90.0  # importing the worker takes a few seconds; far more on a loaded machine
CRASH_POINT_TIMEOUT_SECONDS = 120.0


def worker_environment(settings: Settings, temporal_address: str) -> dict[str, str]:
    """The variables that make `Settings.from_env()` in the child equal `settings` (for what the stack sets)."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PROVISIONER_", "TEMPORAL_", "OTEL_")) and name != "KUBECONFIG"
    }
    return {
        **inherited,
        "TEMPORAL_ADDRESS": temporal_address,
        "TEMPORAL_NAMESPACE": settings.temporal_namespace,
        "PROVISIONER_TASK_QUEUE": settings.task_queue,
        "PROVISIONER_DATA_DIR": str(settings.data_dir),
        "PROVISIONER_DATABASE_URL": settings.effective_database_url,
        "PROVISIONER_TEMPLATES_DIR": str(settings.templates_dir),
        "PROVISIONER_GIT_BASE_URL": settings.git_base_url,
        "PROVISIONER_GIT_TOKEN": settings.git_token.reveal(),
        "KUBECONFIG": settings.kubeconfig or "",
        "PROVISIONER_ACTIVITY_THREADS": str(settings.activity_threads),
    }


class WorkerProcess:
    """One worker process, its output in `log`. `crash_step` makes it the crashing worker (a StepName or ANY_STEP);
    `env` adds variables (e.g. provisioner/testhold.py's, to hold an activity inside its work)."""

    def __init__(
        self,
        settings: Settings,
        temporal_address: str,
        log: Path,
        *,
        crash_step: StepName | str | None = None,
        crash_marker: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.log = log
        self.crash_marker = crash_marker
        self._env = worker_environment(settings, temporal_address) | dict(env or {})
        self._module = "worker"
        if crash_step is not None:
            assert crash_marker is not None, "the crashing worker reports its crash point in a marker file"
            self._module = "tests.chaos.crashing_worker"
            self._env[CRASH_STEP_ENV] = str(crash_step)
            self._env[CRASH_MARKER_ENV] = str(crash_marker)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, "not started"
        return self._process

    def _spawn(self) -> None:
        with self.log.open("ab") as output:
            self._process = subprocess.Popen(
                [sys.executable, "-m", self._module], cwd=PROJECT_ROOT, env=self._env, stdout=output, stderr=output
            )

    async def start(self) -> WorkerProcess:
        """Start the process and return once it polls its task queue."""
        self._spawn()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while POLLING_LINE not in self.output():
            assert self.process.poll() is None, f"the worker exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"the worker did not start polling:\n{self.output()}"
            await asyncio.sleep(0.1)
        return self

    async def crash_points(self, at_least: int = 1) -> list[str]:
        """The marker lines the crashing worker wrote (one per hung activity), once there are `at_least`."""
        assert self.crash_marker is not None
        deadline = time.monotonic() + CRASH_POINT_TIMEOUT_SECONDS
        while True:
            lines = self.crash_marker.read_text().splitlines() if self.crash_marker.exists() else []
            if len(lines) >= at_least:
                return lines
            assert self.process.poll() is None, f"the crashing worker exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"no crash point reached:\n{self.output()}"
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        """kill -9: no shutdown, no completion reported, heartbeats just stop."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """The graceful SIGTERM path; SIGKILL if it does not exit in time."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
