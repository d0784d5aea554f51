"""Crash recovery with real worker processes, `kill -9` and a restarted Temporal server.

For every step of ProjectInitWorkflow, a worker process hangs right after the step's activity did its work (before
the completion reaches the server) and is killed with SIGKILL; a fresh worker process takes over. Two workers share a
task queue and one is killed mid-run. The Temporal dev server itself is killed and restarted on its SQLite file. In
every case each project ends Ready with exactly one repository, one commit, one row and one Namespace, GitRepository
and Kustomization (tests/chaos/verify.py), and the lost attempts were detected by their heartbeat timeout rather than
their start_to_close timeout (provisioner/heartbeat.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import TimeoutType
from temporalio.testing import WorkflowEnvironment

from provisioner.client import ProvisioningHandle
from provisioner.contracts import PROVISIONING_STEPS, ProjectStatus, StepName, StepState
from tests.chaos.crashing_worker import ANY_STEP
from tests.chaos.dev_server import PersistentDevServer
from tests.chaos.verify import Figures, outcomes_of, start_runs, take_inventory, verify_exactly_once
from tests.chaos.worker_process import WorkerProcess
from tests.stack import Stack, running_stack, unique_slug

pytestmark = pytest.mark.chaos

# Long enough that a held Ready wait outlives the faults; the runs end as soon as Flux is released.
READY_TIMEOUT = timedelta(minutes=5)
RUN_TIMEOUT_SECONDS = 240.0
HEARTBEAT = TimeoutType.Name(TimeoutType.TIMEOUT_TYPE_HEARTBEAT)
# What the retried step reports when it finds the killed attempt's side effect already in place.
SIDE_EFFECT_FOUND = {StepName.CREATE_REPOSITORY: "already present", StepName.PUSH_TEMPLATE: "already up to date"}


@pytest.fixture(scope="module")
async def crash_stack(
    local_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory, templates_dir: Path, database_url: str
) -> AsyncIterator[Stack]:
    """Git server, sandbox cluster and PostgreSQL on the session's dev server; the workers are the tests' processes."""
    async with running_stack(
        local_env.client, tmp_path_factory.mktemp("data"), templates_dir, database_url, in_process_worker=False
    ) as stack:
        yield stack


def temporal_address(stack: Stack) -> str:
    return stack.temporal.service_client.config.target_host


async def lost_attempts(handle: ProvisioningHandle) -> list[str]:
    """How the server noticed each lost activity attempt (its timeout type), from the run's history.

    A step's own attempt that timed out is an ActivityTaskTimedOut event; a readiness check retried by the server
    shows as the started event of a later attempt carrying the previous attempt's failure."""
    found: list[str] = []
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_timed_out_event_attributes"):
            failure = event.activity_task_timed_out_event_attributes.failure
        elif event.activity_task_started_event_attributes.attempt > 1:
            failure = event.activity_task_started_event_attributes.last_failure
        else:
            continue
        found.append(TimeoutType.Name(failure.timeout_failure_info.timeout_type))
    return found


async def all_lost_attempts(handles: Mapping[str, ProvisioningHandle]) -> list[str]:
    per_run = await asyncio.gather(*(lost_attempts(handle) for handle in handles.values()))
    return [timeout for run in per_run for timeout in run]


def report(fault: str, figures: Figures, recovered_in: float) -> None:
    """One line per fault for the summary table (visible with `pytest -s`)."""
    print(
        f"\nCHAOS {fault}: tried={figures.tried} completed={figures.completed} duplicates={figures.duplicates} "
        f"orphans={figures.orphans} recovered_in={recovered_in:.1f}s"
    )


@pytest.mark.parametrize("step", PROVISIONING_STEPS, ids=str)
async def test_a_worker_killed_right_after_a_step_leaves_exactly_one_of_everything(
    step: StepName, crash_stack: Stack, database_url: str, tmp_path: Path
) -> None:
    stack = crash_stack
    slug = unique_slug("crash-" + step.value.replace("_", "-"))
    before = take_inventory(stack, database_url)
    if step is StepName.AWAIT_READY:
        stack.cluster.flux.hold(slug)  # so the crash hits a check that found the project still reconciling
    address = temporal_address(stack)
    crashing = WorkerProcess(
        stack.settings, address, tmp_path / "crashing.log", crash_step=step, crash_marker=tmp_path / "hung"
    )
    with crashing:
        await crashing.start()
        handles = await start_runs(stack, [slug], ready_timeout=READY_TIMEOUT)
        await crashing.crash_points()
        crashing.kill()
    killed_at = time.monotonic()
    stack.cluster.flux.release(slug)
    with WorkerProcess(stack.settings, address, tmp_path / "recovery.log") as recovery:
        await recovery.start()
        outcomes = await outcomes_of(handles, RUN_TIMEOUT_SECONDS)
    recovered_in = time.monotonic() - killed_at

    figures = verify_exactly_once(stack, database_url, before, outcomes, ProjectStatus.READY)
    # The one lost attempt was noticed by its missing heartbeats, not by its (20 s to 2 min) start_to_close timeout.
    assert await lost_attempts(handles[slug]) == [HEARTBEAT]
    result = outcomes[slug].result
    assert result is not None and all(s.state is StepState.SUCCEEDED for s in result.progress.steps), result
    crashed = next(s for s in result.progress.steps if s.name is step)
    if step is not StepName.AWAIT_READY:  # a readiness check is retried by the server, inside one workflow attempt
        assert crashed.attempt == 2, crashed
    assert SIDE_EFFECT_FOUND.get(step, "") in crashed.message, crashed
    report(f"kill -9 after {step.value}", figures, recovered_in)


async def test_two_workers_share_the_queue_and_the_survivor_finishes_every_run(
    crash_stack: Stack, database_url: str, tmp_path: Path
) -> None:
    stack = crash_stack
    slugs = [unique_slug("pair") for _ in range(6)]
    before = take_inventory(stack, database_url)
    address = temporal_address(stack)
    # The doomed worker hangs every activity it gets once its work is done, so whatever it touched is mid-run.
    marker = tmp_path / "hung"
    doomed = WorkerProcess(stack.settings, address, tmp_path / "doomed.log", crash_step=ANY_STEP, crash_marker=marker)
    with doomed, WorkerProcess(stack.settings, address, tmp_path / "survivor.log") as survivor:
        await asyncio.gather(doomed.start(), survivor.start())
        handles = await start_runs(stack, slugs, ready_timeout=READY_TIMEOUT)
        await doomed.crash_points()
        await asyncio.sleep(1)  # let it take a few more
        doomed.kill()
        killed_at = time.monotonic()
        hung = marker.read_text().splitlines()
        outcomes = await outcomes_of(handles, RUN_TIMEOUT_SECONDS)
        recovered_in = time.monotonic() - killed_at
        assert survivor.process.poll() is None

    figures = verify_exactly_once(stack, database_url, before, outcomes, ProjectStatus.READY)
    lost = await all_lost_attempts(handles)
    # Every activity the killed worker held (hung after its work, or still working) came back by heartbeat timeout.
    assert len(lost) >= len(hung) >= 1
    assert set(lost) == {HEARTBEAT}, lost
    report(f"kill -9 one of two workers ({len(hung)} activities hung)", figures, recovered_in)


async def wait_until_awaiting_ready(stack: Stack, slugs: Sequence[str]) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    for slug in slugs:
        while True:
            progress = await stack.provisioner.progress(slug)
            if any(s.name is StepName.AWAIT_READY and s.state is StepState.RUNNING for s in progress.steps):
                break
            assert time.monotonic() < deadline, progress
            await asyncio.sleep(0.3)


async def test_runs_survive_a_restart_of_the_temporal_server(
    templates_dir: Path, database_url: str, tmp_path: Path
) -> None:
    with PersistentDevServer(tmp_path / "temporal.db", tmp_path / "temporal.log") as server:
        await server.start()
        client = await server.client_with_search_attributes()
        async with running_stack(
            client, tmp_path / "data", templates_dir, database_url, in_process_worker=False
        ) as stack:
            before = take_inventory(stack, database_url)
            with WorkerProcess(stack.settings, server.address, tmp_path / "worker.log") as worker:
                await worker.start()
                # Some runs wait for Ready on durable timers, others have only just started, when the server dies.
                stack.cluster.flux.hold()
                waiting = [unique_slug("restart-wait") for _ in range(3)]
                handles = dict(await start_runs(stack, waiting, ready_timeout=READY_TIMEOUT))
                await wait_until_awaiting_ready(stack, waiting)
                starting = [unique_slug("restart-new") for _ in range(2)]
                handles |= await start_runs(stack, starting, ready_timeout=READY_TIMEOUT)
                server.kill()
                killed_at = time.monotonic()
                await asyncio.sleep(3)  # the worker and the client now face a dead server
                stack.cluster.flux.release()
                await server.start()
                # The same client and the same worker process carry on against the restarted server.
                outcomes = await outcomes_of(handles, RUN_TIMEOUT_SECONDS)
                recovered_in = time.monotonic() - killed_at
                assert worker.process.poll() is None, worker.output()

            figures = verify_exactly_once(stack, database_url, before, outcomes, ProjectStatus.READY)
    report("kill -9 and restart of the Temporal server", figures, recovered_in)
