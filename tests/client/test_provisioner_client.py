"""ProvisionerClient against a real Temporal dev server: one provisioning per slug, conflicts, bad input."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from provisioner.client import InvalidRequest, NoSuchRun, ProjectConflict, ProvisionerClient
from provisioner.contracts import (
    TERMINAL_STATUSES,
    FailureAction,
    OperatorDecision,
    Progress,
    ProjectSpec,
    ProjectStatus,
    StepName,
    StepState,
)


def spec(slug: str, **overrides: object) -> ProjectSpec:
    values: dict[str, object] = {"slug": slug, "display_name": "Shop", "template": "web-service"}
    values.update(overrides)
    return ProjectSpec(**values)  # type: ignore[arg-type]


@pytest.fixture
def client(local_env: WorkflowEnvironment) -> ProvisionerClient:
    # No worker polls this queue, so started runs stay running for the test to look at.
    return ProvisionerClient(local_env.client, task_queue=f"idle-{uuid.uuid4().hex[:8]}")


async def test_starting_the_same_project_twice_attaches_to_the_running_provisioning(client: ProvisionerClient) -> None:
    slug = f"dup-{uuid.uuid4().hex[:6]}"
    first = await client.start(spec(slug))
    second = await client.start(spec(slug))
    assert first.id == second.id == f"project-{slug}"
    assert first.result_run_id == second.result_run_id
    description = await client.handle(slug).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING
    await client.handle(slug).terminate("test cleanup")


async def test_the_same_slug_with_a_different_spec_is_a_conflict(client: ProvisionerClient) -> None:
    slug = f"conflict-{uuid.uuid4().hex[:6]}"
    await client.start(spec(slug))
    with pytest.raises(ProjectConflict, match=slug):
        await client.start(spec(slug, display_name="Another shop"))
    await client.handle(slug).terminate("test cleanup")


async def test_invalid_requests_start_nothing(client: ProvisionerClient) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await client.start(spec("Not_A_Slug", template="../etc"))
    assert {error.field for error in raised.value.errors} == {"slug", "template"}
    with pytest.raises(RPCError):
        await client.handle("Not_A_Slug").describe()


async def test_list_finds_runs_by_their_search_attributes(client: ProvisionerClient) -> None:
    slug = f"listed-{uuid.uuid4().hex[:6]}"
    await client.start(spec(slug, template="web-service"))
    try:
        for _ in range(50):  # visibility is eventually consistent
            runs = [run for run in await client.list(status=ProjectStatus.PENDING) if run.slug == slug]
            if runs:
                break
            await asyncio.sleep(0.1)
        assert len(runs) == 1
        assert (runs[0].workflow_id, runs[0].template, runs[0].execution_status) == (
            f"project-{slug}",
            "web-service",
            "RUNNING",
        )
        assert not [run for run in await client.list(status=ProjectStatus.READY) if run.slug == slug]
        assert not [run for run in await client.list(template="other-template") if run.slug == slug]
    finally:
        await client.handle(slug).terminate("test cleanup")


async def test_a_decision_needs_a_run_awaiting_one(client: ProvisionerClient) -> None:
    with pytest.raises(NoSuchRun, match="has no run"):
        await client.decide(f"never-{uuid.uuid4().hex[:6]}", OperatorDecision(FailureAction.RETRY))
    slug = f"ended-{uuid.uuid4().hex[:6]}"
    await client.start(spec(slug))
    await client.handle(slug).terminate("test: the run has ended")
    with pytest.raises(ProjectConflict, match="its last run has ended"):
        await client.decide(slug, OperatorDecision(FailureAction.ABORT))


async def test_watching_a_terminated_run_ends(client: ProvisionerClient, local_env: WorkflowEnvironment) -> None:
    """A run ended from outside never reports a terminal status itself; the watch must notice and stop.

    The run is cut at its first step (a worker runs the workflow code, so the query answers, but no activity), so the
    last progress it ever reports is not terminal: the watch can only end by noticing that the run has closed, after
    the termination, with nothing new to show."""
    from temporalio.worker import Worker

    from workflows.project_init import ProjectInitWorkflow

    slug = f"cut-{uuid.uuid4().hex[:6]}"
    async with Worker(local_env.client, task_queue=client.task_queue, workflows=[ProjectInitWorkflow]):
        await client.start(spec(slug))
        seen: list[Progress] = []
        first_seen = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def watch() -> float:
            async for progress in client.watch(slug, interval=timedelta(milliseconds=50)):
                seen.append(progress)
                first_seen.set()
            return loop.time()

        watching = asyncio.create_task(watch())
        try:
            await asyncio.wait_for(first_seen.wait(), timeout=20)
            assert not watching.done(), "the watch ended before the run did"
            await client.handle(slug).terminate("operator stopped it")
            terminated_at = loop.time()
            ended_at = await asyncio.wait_for(watching, timeout=20)
        finally:
            watching.cancel()

    assert ended_at >= terminated_at
    assert (await client.handle(slug).describe()).status == WorkflowExecutionStatus.TERMINATED
    # What the run showed when it was cut, once: it never reported a terminal status, nor anything after.
    [last] = seen
    assert last.status is ProjectStatus.PROVISIONING and last.status not in TERMINAL_STATUSES
    states = {step.name: step.state for step in last.steps}
    assert states[StepName.VALIDATE_TEMPLATE] is StepState.RUNNING
    assert all(state is StepState.PENDING for name, state in states.items() if name is not StepName.VALIDATE_TEMPLATE)


def test_the_progress_view_renders_every_status() -> None:
    from rich.console import Console

    from provisioner.contracts import PROVISIONING_STEPS, STEP_TITLES, Progress, StepProgress
    from provisioner.progress_view import render_progress

    console = Console(width=120, record=True)
    for status in ProjectStatus:
        steps = [StepProgress(name=name, title=STEP_TITLES[name]) for name in PROVISIONING_STEPS]
        console.print(render_progress(Progress("shop", "project-shop", status, 0, steps)))
        assert status.value in console.export_text()


async def test_provisioning_is_refused_while_a_teardown_runs(client: ProvisionerClient) -> None:
    slug = f"leaving-{uuid.uuid4().hex[:6]}"
    await client.teardown(slug)  # no worker on this queue: the teardown stays running
    try:
        with pytest.raises(ProjectConflict, match="torn down"):
            await client.start(spec(slug))
    finally:
        await client.handle(slug).terminate("test cleanup")
