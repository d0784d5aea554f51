"""ProjectTeardownWorkflow on the time-skipping test server, with stub activities standing in for the systems."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from provisioner.contracts import (
    TEARDOWN_STEPS,
    DeletionReport,
    ErrorType,
    FluxDeletionRequest,
    FluxDeletionResult,
    ProjectRecordUpdate,
    ProjectStatus,
    RemainingObject,
    RepositoryDeletionRequest,
    RepositoryDeletionResult,
    StepName,
    StepState,
    TeardownResult,
    TeardownSpec,
    project_workflow_id,
)
from worker import DETERMINISM_GUARD_RUNNER
from workflows.project_teardown import ProjectTeardownWorkflow

FLUX_OBJECTS = ["Kustomization", "GitRepository", "Namespace"]


@dataclass
class StubSystems:
    """A tiny model of one project's world: a record, three cluster objects and a repository; records every call."""

    calls: list[str] = field(default_factory=list)
    records: list[ProjectRecordUpdate] = field(default_factory=list)
    record_exists: bool = True
    cluster: set[str] = field(default_factory=lambda: set(FLUX_OBJECTS))
    repository_exists: bool = True
    # How many deletion checks still see the objects after their deletion was requested.
    checks_until_gone: int = 2
    held_by: Callable[[str], RemainingObject] = lambda kind: RemainingObject(
        kind, "shop", "2026-01-01T00:00:00Z", ["finalizers.fluxcd.io"]
    )
    deletion_checks: int = 0
    failures: dict[str, list[BaseException]] = field(default_factory=dict)

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        queued = self.failures.get(name)
        if queued:
            raise queued.pop(0)

    @activity.defn(name="mark_project_record")
    async def mark_project_record(self, update: ProjectRecordUpdate) -> dict[str, str] | None:
        self._enter("mark_project_record")
        self.records.append(update)
        return {"slug": update.slug, "status": update.status.value} if self.record_exists else None

    @activity.defn(name="delete_flux_resources")
    async def delete_flux_resources(self, request: FluxDeletionRequest) -> FluxDeletionResult:
        self._enter("delete_flux_resources")
        present = [kind for kind in FLUX_OBJECTS if kind in self.cluster]
        return FluxDeletionResult(
            requested=[f"{kind}/{request.name}" for kind in present],
            absent=[f"{kind}/{request.name}" for kind in FLUX_OBJECTS if kind not in present],
        )

    @activity.defn(name="check_flux_deletion")
    async def check_flux_deletion(self, request: FluxDeletionRequest) -> DeletionReport:
        self._enter("check_flux_deletion")
        self.deletion_checks += 1
        if self.deletion_checks > self.checks_until_gone:
            self.cluster.clear()
        return DeletionReport([self.held_by(kind) for kind in FLUX_OBJECTS if kind in self.cluster])

    @activity.defn(name="delete_repository")
    async def delete_repository(self, request: RepositoryDeletionRequest) -> RepositoryDeletionResult:
        self._enter("delete_repository")
        existed, self.repository_exists = self.repository_exists, False
        return RepositoryDeletionResult(request.slug, existed)

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.mark_project_record,
            self.delete_flux_resources,
            self.check_flux_deletion,
            self.delete_repository,
        ]


@pytest.fixture
async def stubs(time_skipping_env: WorkflowEnvironment) -> AsyncIterator[tuple[StubSystems, str]]:
    systems = StubSystems()
    task_queue = f"test-{uuid.uuid4()}"
    # In the sandbox: these tests walk every path of the workflow, so a nondeterministic call on any of them fails.
    async with Worker(
        time_skipping_env.client,
        task_queue=task_queue,
        workflows=[ProjectTeardownWorkflow],
        activities=systems.all(),
        workflow_runner=DETERMINISM_GUARD_RUNNER,
    ):
        yield systems, task_queue


def make_spec(**overrides: Any) -> TeardownSpec:
    values: dict[str, Any] = {"slug": f"proj-{uuid.uuid4().hex[:8]}"}
    values.update(overrides)
    return TeardownSpec(**values)


async def start(
    env: WorkflowEnvironment, task_queue: str, spec: TeardownSpec
) -> WorkflowHandle[ProjectTeardownWorkflow, TeardownResult]:
    return await env.client.start_workflow(
        ProjectTeardownWorkflow.run, spec, id=project_workflow_id(spec.slug), task_queue=task_queue
    )


async def run_to_failure(env: WorkflowEnvironment, task_queue: str, spec: TeardownSpec) -> ApplicationError:
    handle = await start(env, task_queue, spec)
    with pytest.raises(WorkflowFailureError) as raised:
        await handle.result()
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


def by_name(result: TeardownResult) -> dict[StepName, Any]:
    return {step.name: step for step in result.progress.steps}


async def test_runs_the_steps_in_order_and_keeps_the_repository_by_default(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    spec = make_spec()
    handle = await start(time_skipping_env, task_queue, spec)
    result = await handle.result()

    assert systems.calls == [
        "mark_project_record",
        "delete_flux_resources",
        "check_flux_deletion",
        "check_flux_deletion",
        "check_flux_deletion",
        "mark_project_record",
    ]
    assert systems.repository_exists
    assert result.status is ProjectStatus.DELETED
    assert not result.repository_deleted
    assert "repository kept" in result.message
    steps = by_name(result)
    assert [s.name for s in result.progress.steps] == list(TEARDOWN_STEPS)
    assert steps[StepName.DELETE_REPOSITORY].state is StepState.SKIPPED
    assert steps[StepName.DELETE_REPOSITORY].message.startswith("kept")
    assert "Kustomization/" in steps[StepName.DELETE_FLUX_RESOURCES].message
    assert steps[StepName.AWAIT_DELETION].attempt == 3
    assert result.progress.percent == 100
    assert [r.status for r in systems.records] == [ProjectStatus.DELETING, ProjectStatus.DELETED]
    assert systems.records[0].workflow_id == handle.id == f"project-{spec.slug}"
    queried = await handle.query(ProjectTeardownWorkflow.progress)
    assert queried.status is ProjectStatus.DELETED and queried.workflow_id == handle.id


async def test_deletes_the_repository_when_asked(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    result = await (await start(time_skipping_env, task_queue, make_spec(delete_repository=True))).result()
    assert systems.calls.index("delete_repository") > systems.calls.index("check_flux_deletion")
    assert not systems.repository_exists
    assert result.repository_deleted and "repository deleted" in result.message
    assert by_name(result)[StepName.DELETE_REPOSITORY].state is StepState.SUCCEEDED
    assert systems.records[-1].status is ProjectStatus.DELETED


async def test_a_running_operation_of_the_project_refuses_the_teardown_before_anything_is_touched(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    """Create, update and teardown share the project's workflow id: Temporal itself refuses a second run while one
    runs, so no teardown can slip into a running create (nor the other way round)."""
    systems, task_queue = stubs
    spec = make_spec(delete_repository=True)
    # A create that never finishes (no worker here runs ProjectInitWorkflow): the project's id is taken.
    creating = await time_skipping_env.client.start_workflow(
        "ProjectInitWorkflow", {"slug": spec.slug}, id=project_workflow_id(spec.slug), task_queue=task_queue
    )
    try:
        with pytest.raises(WorkflowAlreadyStartedError):
            await start(time_skipping_env, task_queue, spec)
    finally:
        await creating.terminate("test over")
    assert systems.calls == []
    assert systems.cluster == set(FLUX_OBJECTS) and systems.repository_exists and not systems.records


async def test_a_deletion_timeout_fails_naming_what_remains_and_why(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    systems.checks_until_gone = 10_000

    def held_by(kind: str) -> RemainingObject:
        if kind == "Namespace":
            return RemainingObject(
                kind,
                "shop",
                "2026-01-01T00:00:00Z",
                ["kubernetes"],
                "Some content in the namespace has finalizers remaining: finalizers.fluxcd.io in 1 resource instances",
            )
        return RemainingObject(kind, "shop", "2026-01-01T00:00:00Z", ["finalizers.fluxcd.io"])

    systems.held_by = held_by
    systems.cluster = {"Kustomization", "Namespace"}
    spec = make_spec(delete_repository=True, deletion_timeout=timedelta(minutes=2))
    failure = await run_to_failure(time_skipping_env, task_queue, spec)

    assert failure.type == ErrorType.DELETION_TIMED_OUT.value
    assert "await_deletion failed" in failure.message and "still present after 0:02:00" in failure.message
    assert "Kustomization/shop (deleting since 2026-01-01T00:00:00Z" in failure.message
    assert "waiting on finalizers finalizers.fluxcd.io" in failure.message
    assert "Namespace/shop" in failure.message and "finalizers.fluxcd.io in 1 resource instances" in failure.message
    # Polled with backoff across the whole bound, not once and not in a tight loop; nothing deleted after it.
    assert 5 <= systems.deletion_checks <= 40
    assert "delete_repository" not in systems.calls and systems.repository_exists
    # The record says what happened.
    assert [r.status for r in systems.records] == [ProjectStatus.DELETING, ProjectStatus.FAILED]
    assert "still present" in systems.records[-1].last_message


async def test_tearing_down_a_never_provisioned_project_succeeds_and_creates_nothing(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    systems.record_exists, systems.cluster, systems.repository_exists = False, set(), False
    result = await (await start(time_skipping_env, task_queue, make_spec(delete_repository=True))).result()
    assert result.status is ProjectStatus.DELETED and not result.repository_deleted
    steps = by_name(result)
    assert steps[StepName.MARK_DELETING].message == "no record: nothing to mark"
    assert steps[StepName.DELETE_FLUX_RESOURCES].message.startswith("nothing to delete")
    assert steps[StepName.DELETE_REPOSITORY].message == "no repository to delete"
    assert systems.deletion_checks == 1


async def test_tearing_down_twice_is_the_same_as_once(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    spec = make_spec(delete_repository=True)
    first = await (await start(time_skipping_env, task_queue, spec)).result()
    second = await (await start(time_skipping_env, task_queue, spec)).result()
    assert first.status is second.status is ProjectStatus.DELETED
    assert first.repository_deleted and not second.repository_deleted
    assert by_name(second)[StepName.DELETE_FLUX_RESOURCES].message.startswith("nothing to delete")
    assert systems.records[-1].status is ProjectStatus.DELETED


async def test_transient_failures_are_retried_and_visible(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    systems.failures["delete_flux_resources"] = [RuntimeError("connection refused")] * 2
    systems.failures["check_flux_deletion"] = [RuntimeError("connection reset")] * 3  # one check's server retries
    result = await (await start(time_skipping_env, task_queue, make_spec())).result()
    steps = by_name(result)
    assert steps[StepName.DELETE_FLUX_RESOURCES].attempt == 3
    assert steps[StepName.DELETE_FLUX_RESOURCES].state is StepState.SUCCEEDED
    assert result.status is ProjectStatus.DELETED


async def test_an_object_someone_else_owns_fails_the_teardown_at_once(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    systems.failures["delete_flux_resources"] = [
        ApplicationError("Namespace 'kube-system' is not managed by provisioner", type="ResourceNotManaged",
                         non_retryable=True)
    ]
    failure = await run_to_failure(time_skipping_env, task_queue, make_spec())
    assert failure.type == "ResourceNotManaged" and "kube-system" in failure.message
    assert systems.calls.count("delete_flux_resources") == 1
    assert "check_flux_deletion" not in systems.calls


async def test_invalid_input_fails_without_calling_any_activity(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    spec = make_spec(slug="Bad_Slug", deletion_timeout=timedelta(days=2))
    handle = await time_skipping_env.client.start_workflow(
        ProjectTeardownWorkflow.run, spec, id=f"bad-{uuid.uuid4()}", task_queue=task_queue
    )
    with pytest.raises(WorkflowFailureError) as raised:
        await handle.result()
    failure = raised.value.cause
    assert isinstance(failure, ApplicationError)
    assert failure.type == ErrorType.INVALID_INPUT.value
    assert "slug" in failure.message and "deletion_timeout" in failure.message
    assert systems.calls == []
