"""The two ways to provision a batch of projects, as seen from the benchmark: the workflow (through the product's
own ProvisionerClient) and the direct baseline (a `python -m bench.direct` process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from temporalio.client import WorkflowFailureError

from bench.environment import BenchStack
from bench.runs import WORKFLOW, ProvisionRun, spec_to_json
from provisioner.client import ProvisionerClient, ProvisioningHandle
from provisioner.contracts import Progress, ProjectSpec, StepName
from provisioner.settings import PROJECT_ROOT

RESULT_LINE_LIMIT = 64 * 1024 * 1024  # one batch result is one JSON line


def step_seconds(progress: Progress) -> dict[str, float]:
    """Each step's duration from the run's own Progress timestamps (workflow time: scheduling included)."""
    return {
        step.name.value: (step.finished_at - step.started_at).total_seconds()
        for step in progress.steps
        if step.started_at is not None and step.finished_at is not None
    }


async def provision_via_workflow(
    provisioner: ProvisionerClient, spec: ProjectSpec, start_gate: asyncio.Semaphore | None = None
) -> ProvisionRun:
    """Start the run (through `start_gate`, when given, to bound concurrent starts) and wait for its result."""
    started = time.perf_counter()
    try:
        async with start_gate or contextlib.nullcontext():
            handle = await provisioner.start(spec)
    except WorkflowFailureError as failure:
        return ProvisionRun(spec.slug, WORKFLOW, "failed", time.perf_counter() - started, error=str(failure.cause))
    return await workflow_result(handle, spec.slug, started)


async def workflow_result(handle: ProvisioningHandle, slug: str, started: float) -> ProvisionRun:
    """The run's outcome; `started` is the perf_counter() reading when it was requested."""
    try:
        result = await handle.result()
    except WorkflowFailureError as failure:
        return ProvisionRun(slug, WORKFLOW, "failed", time.perf_counter() - started, error=str(failure.cause))
    checks = next((s.attempt for s in result.progress.steps if s.name is StepName.AWAIT_READY), 0)
    return ProvisionRun(
        slug,
        WORKFLOW,
        result.status.value,
        time.perf_counter() - started,
        step_seconds(result.progress),
        checks,
    )


async def workflows_sequential(
    provisioner: ProvisionerClient, specs: list[ProjectSpec]
) -> tuple[list[ProvisionRun], float]:
    started = time.perf_counter()
    runs = [await provision_via_workflow(provisioner, spec) for spec in specs]
    return runs, time.perf_counter() - started


async def workflows_at_once(
    provisioner: ProvisionerClient, specs: list[ProjectSpec]
) -> tuple[list[ProvisionRun], float]:
    """Start every spec at once: wall time from the first start to the last result."""
    started = time.perf_counter()
    runs = await asyncio.gather(*(provision_via_workflow(provisioner, spec) for spec in specs))
    return list(runs), time.perf_counter() - started


@dataclass
class DirectBatch:
    runs: list[ProvisionRun]
    wall_seconds: float
    cpu_seconds: float  # the baseline process's CPU over the batch, its git subprocesses included


class DirectProcess:
    """The baseline as one long-lived `python -m bench.direct` process, fed one batch at a time."""

    def __init__(self, stack: BenchStack, threads: int, name: str = "direct") -> None:
        self._stack = stack
        self._threads = threads
        self._log_path = stack.log_path(name)
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def start(self) -> DirectProcess:
        with self._log_path.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.direct",
                env=self._stack.process_env(self._threads),
                cwd=str(PROJECT_ROOT),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=RESULT_LINE_LIMIT,
            )
        await self._read_line()  # {"ready": true}
        return self

    async def run(self, mode: str, specs: list[ProjectSpec]) -> DirectBatch:
        process = self._running
        assert process.stdin is not None
        job = {"mode": mode, "threads": self._threads, "specs": [spec_to_json(spec) for spec in specs]}
        process.stdin.write((json.dumps(job) + "\n").encode())
        await process.stdin.drain()
        result = await self._read_line()
        runs = [ProvisionRun.from_json(item) for item in result["runs"]]
        return DirectBatch(runs, float(result["wall_seconds"]), float(result["cpu_seconds"]))

    async def close(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def __aenter__(self) -> DirectProcess:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def _running(self) -> asyncio.subprocess.Process:
        if self._process is None:
            raise RuntimeError("the direct baseline process is not started")
        return self._process

    async def _read_line(self) -> dict[str, Any]:
        process = self._running
        assert process.stdout is not None
        line = await process.stdout.readline()
        if not line:
            code = await process.wait()
            log_text = self._log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the direct baseline process exited with {code}:\n{log_text}")
        result: dict[str, Any] = json.loads(line)
        return result
