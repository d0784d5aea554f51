"""Looking at a running worker and at running workflows from the outside, without changing either.

- Activity threads busy: `py-spy dump` of the worker process; an activity thread (the worker's pool names them
  `activity_N`) is busy when its stack is inside `_WorkItem.run`, idle when it sits in the pool's queue.
- Pending activities: Temporal's own view, `DescribeWorkflowExecution` per run (what `temporal workflow describe`
  prints): an activity the server has handed to a worker (STARTED) occupies a slot until it completes.
- Progress: the product's `progress` query, timed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client
from temporalio.service import RPCError

from provisioner.client import ProvisionerClient
from provisioner.contracts import TERMINAL_STATUSES, Progress, StepName, StepState, project_workflow_id

ACTIVITY_THREAD_PREFIX = "activity"
BUSY_FRAME = "_WorkItem.run"
DESCRIBE_CONCURRENCY = 50


def py_spy_path() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


@dataclass(frozen=True)
class ThreadSample:
    activity_threads: int  # threads of the activity pool that exist
    busy: int  # of them, executing an activity right now
    busy_in: tuple[str, ...]  # the innermost activities/ frame of each busy thread


def sample_activity_threads(pid: int) -> ThreadSample | None:
    """One `py-spy dump` of the worker; None when py-spy is not installed."""
    py_spy = py_spy_path()
    if py_spy is None:
        return None
    command = [py_spy, "dump", "--pid", str(pid), "--json"]
    dump = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)
    if dump.returncode != 0:
        raise RuntimeError(f"py-spy dump failed: {dump.stderr.strip()[:500]}")
    pool = [t for t in json.loads(dump.stdout) if str(t.get("thread_name") or "").startswith(ACTIVITY_THREAD_PREFIX)]
    busy_in: list[str] = []
    for thread in pool:
        frames = thread.get("frames") or []
        if any(frame.get("name") == BUSY_FRAME for frame in frames):
            where = next((f["name"] for f in frames if "/activities/" in str(f.get("filename", ""))), "?")
            busy_in.append(where)
    return ThreadSample(activity_threads=len(pool), busy=len(busy_in), busy_in=tuple(busy_in))


@dataclass
class PendingActivities:
    runs_described: int = 0
    scheduled: int = 0  # waiting for a worker slot
    started: int = 0  # running on a worker (holding a thread)
    oldest_started_seconds: float = 0.0
    by_type: dict[str, int] = field(default_factory=dict)
    describe_seconds: float = 0.0


async def describe_pending_activities(client: Client, slugs: Iterable[str]) -> PendingActivities:
    """Every run's pending activities as the Temporal server sees them."""
    started_at = time.perf_counter()
    report = PendingActivities()
    gate = asyncio.Semaphore(DESCRIBE_CONCURRENCY)
    now = datetime.now(UTC)

    async def describe(slug: str) -> None:
        async with gate:
            description = await client.get_workflow_handle(project_workflow_id(slug)).describe()
        report.runs_described += 1
        for pending in description.raw_description.pending_activities:
            name = pending.activity_type.name
            report.by_type[name] = report.by_type.get(name, 0) + 1
            if pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
                report.started += 1
                age = (now - pending.last_started_time.ToDatetime(tzinfo=UTC)).total_seconds()
                report.oldest_started_seconds = max(report.oldest_started_seconds, age)
            else:
                report.scheduled += 1

    await asyncio.gather(*(describe(slug) for slug in slugs))
    report.describe_seconds = time.perf_counter() - started_at
    return report


async def timed_progress(provisioner: ProvisionerClient, slug: str) -> tuple[float, Progress | None]:
    """The `progress` query and its latency; None when it failed (e.g. timed out on an overloaded stack): the
    latency then is the time until it failed, and the caller counts it, instead of the whole bench ending."""
    started = time.perf_counter()
    try:
        progress: Progress | None = await provisioner.progress(slug)
    except RPCError:
        progress = None
    return time.perf_counter() - started, progress


def is_waiting_for_ready(progress: Progress | None) -> bool:
    if progress is None:  # not known this round: asked again on the next
        return False
    current = progress.current_step
    return current is not None and current.name is StepName.AWAIT_READY and current.state is StepState.RUNNING


async def waiting_slugs(provisioner: ProvisionerClient, slugs: Iterable[str], concurrency: int = 20) -> set[str]:
    """The runs among `slugs` whose progress says they are in the await_ready step."""
    gate = asyncio.Semaphore(concurrency)

    async def check(slug: str) -> str | None:
        async with gate:
            _, progress = await timed_progress(provisioner, slug)
        return slug if is_waiting_for_ready(progress) else None

    found = await asyncio.gather(*(check(slug) for slug in slugs))
    return {slug for slug in found if slug is not None}


async def ended_slugs(provisioner: ProvisionerClient, slugs: Iterable[str], concurrency: int = 20) -> set[str]:
    """The runs among `slugs` whose progress shows a terminal status."""
    gate = asyncio.Semaphore(concurrency)

    async def check(slug: str) -> str | None:
        async with gate:
            _, progress = await timed_progress(provisioner, slug)
        return slug if progress is not None and progress.status in TERMINAL_STATUSES else None

    found = await asyncio.gather(*(check(slug) for slug in slugs))
    return {slug for slug in found if slug is not None}
