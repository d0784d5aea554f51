"""ProjectInitWorkflow's logic on the time-skipping test server, with stub activities standing in for the systems."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from provisioner.contracts import (
    PROVISIONING_STEPS,
    DeletionReport,
    ErrorType,
    FluxApplyRequest,
    FluxApplyResult,
    FluxDeletionRequest,
    FluxDeletionResult,
    KubeObjectRef,
    ProjectIdentity,
    ProjectOperation,
    ProjectRecordUpdate,
    ProjectSpec,
    ProjectStatus,
    ProjectUpdate,
    ProvisioningResult,
    PushRequest,
    PushResult,
    ReadinessReport,
    ReadinessRequest,
    ReadinessState,
    RenderSummary,
    RepositoryDeletionRequest,
    RepositoryDeletionResult,
    RepositoryInfo,
    StepName,
    StepState,
    StoredProject,
    project_workflow_id,
)
from provisioner.telemetry import AWAITING_READY_RUNS
from worker import DETERMINISM_GUARD_RUNNER
from workflows.project_init import ProjectInitWorkflow, ready_poll_maximum_interval
from workflows.project_update import ProjectUpdateWorkflow

COMMIT = "a" * 40
REVISION = f"main@sha1:{COMMIT}"
# The stub's Ready names the revision the run asked for, as the real check does only when Flux applied it.
READY = ReadinessReport(ReadinessState.READY, "ReconciliationSucceeded", f"Applied revision: {REVISION}")
PROGRESSING = ReadinessReport(ReadinessState.IN_PROGRESS, "Progressing", "Reconciliation in progress")


@dataclass
class StubSystems:
    """Records every activity call; each behaviour can be replaced by a test."""

    calls: list[str] = field(default_factory=list)
    records: list[ProjectRecordUpdate] = field(default_factory=list)
    failures: dict[str, list[BaseException]] = field(default_factory=dict)
    readiness: Callable[[int], ReadinessReport] = lambda poll: READY
    readiness_polls: int = 0
    readiness_requests: list[ReadinessRequest] = field(default_factory=list)
    apply_requests: list[FluxApplyRequest] = field(default_factory=list)
    push_requests: list[PushRequest] = field(default_factory=list)
    # Awaited by the named activity on its n-th call (1-based), before it does anything: holds it in flight.
    holds: dict[str, Callable[[int], Awaitable[None]]] = field(default_factory=dict)
    # What create_repository and push_template answer: a repository made (not found) and a commit pushed (not a no-op).
    repository_created: bool = True
    pushed: bool = True
    # What read_project_record finds (an update's first step): every slug is a live web-service project.
    stored_identity: ProjectIdentity = field(
        default_factory=lambda: ProjectIdentity("Billing API", "web-service", "development", {"owner": "payments"})
    )

    async def _enter(self, name: str) -> None:
        self.calls.append(name)
        hold = self.holds.get(name)
        if hold is not None:
            await hold(self.calls.count(name))
        queued = self.failures.get(name)
        if queued:
            raise queued.pop(0)

    @activity.defn(name="validate_template")
    async def validate_template(self, spec: ProjectSpec) -> RenderSummary:
        await self._enter("validate_template")
        return RenderSummary(
            spec.template, 7, "digest", f"k8s/overlays/{spec.environment}", {**spec.parameters, "replicas": 1}
        )

    @activity.defn(name="create_repository")
    async def create_repository(self, spec: ProjectSpec) -> RepositoryInfo:
        await self._enter("create_repository")
        return RepositoryInfo(spec.slug, f"http://git.test/{spec.slug}.git", "main", self.repository_created)

    @activity.defn(name="push_template")
    async def push_template(self, request: PushRequest) -> PushResult:
        self.push_requests.append(request)
        await self._enter("push_template")
        return PushResult(COMMIT, "main", self.pushed)

    @activity.defn(name="upsert_project_record")
    async def upsert_project_record(self, update: ProjectRecordUpdate) -> None:
        await self._enter("upsert_project_record")
        self.records.append(update)

    @activity.defn(name="apply_flux_resources")
    async def apply_flux_resources(self, request: FluxApplyRequest) -> FluxApplyResult:
        self.apply_requests.append(request)  # every attempt, failed ones too
        await self._enter("apply_flux_resources")
        ns = request.spec.namespace
        return FluxApplyResult(
            ns,
            [
                KubeObjectRef("v1", "Namespace", None, ns, "1"),
                KubeObjectRef("source.toolkit.fluxcd.io/v1", "GitRepository", ns, ns, "2", 1),
                KubeObjectRef("kustomize.toolkit.fluxcd.io/v1", "Kustomization", ns, ns, "3", 1),
            ],
        )

    @activity.defn(name="check_flux_readiness")
    async def check_flux_readiness(self, request: ReadinessRequest) -> ReadinessReport:
        await self._enter("check_flux_readiness")
        self.readiness_polls += 1
        self.readiness_requests.append(request)
        report = self.readiness(self.readiness_polls)
        if report.state is ReadinessState.READY and not report.revision:
            report = replace(report, revision=request.revision, expected_revision=request.revision)
        return report

    @activity.defn(name="read_project_record")
    async def read_project_record(self, slug: str) -> StoredProject | None:
        await self._enter("read_project_record")
        return StoredProject(slug, ProjectStatus.READY, self.stored_identity, COMMIT)

    # What the rollback of an aborted run calls
    @activity.defn(name="delete_flux_resources")
    async def delete_flux_resources(self, request: FluxDeletionRequest) -> FluxDeletionResult:
        await self._enter("delete_flux_resources")
        return FluxDeletionResult(requested=[f"Namespace/{request.namespace}"], absent=[])

    @activity.defn(name="check_flux_deletion")
    async def check_flux_deletion(self, request: FluxDeletionRequest) -> DeletionReport:
        await self._enter("check_flux_deletion")
        return DeletionReport()

    @activity.defn(name="delete_repository")
    async def delete_repository(self, request: RepositoryDeletionRequest) -> RepositoryDeletionResult:
        await self._enter("delete_repository")
        return RepositoryDeletionResult(request.slug, True)

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.validate_template,
            self.create_repository,
            self.push_template,
            self.upsert_project_record,
            self.apply_flux_resources,
            self.check_flux_readiness,
            self.delete_flux_resources,
            self.check_flux_deletion,
            self.delete_repository,
            self.read_project_record,
        ]


@pytest.fixture
async def stubs(time_skipping_env: WorkflowEnvironment) -> AsyncIterator[tuple[StubSystems, str]]:
    async with stub_worker(time_skipping_env) as running:
        yield running


@asynccontextmanager
async def stub_worker(env: WorkflowEnvironment) -> AsyncIterator[tuple[StubSystems, str]]:
    """A worker with the workflows and stub activities, on a task queue of its own."""
    systems = StubSystems()
    task_queue = f"test-{uuid.uuid4()}"
    # In the sandbox: these tests walk every path of the workflow, so a nondeterministic call on any of them fails.
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[ProjectInitWorkflow, ProjectUpdateWorkflow],
        activities=systems.all(),
        workflow_runner=DETERMINISM_GUARD_RUNNER,
        # A bug in the workflow code fails the run at once (the worker would retry its task for ever), so a test
        # reports it instead of waiting for a state that never comes (and a mutant is killed, not timed out).
        workflow_failure_exception_types=[Exception],
    ):
        yield systems, task_queue


def make_spec(**overrides: Any) -> ProjectSpec:
    values: dict[str, Any] = {
        "slug": f"proj-{uuid.uuid4().hex[:8]}",
        "display_name": "Billing API",
        "template": "web-service",
        "parameters": {"owner": "payments"},
    }
    values.update(overrides)
    return ProjectSpec(**values)


async def start(
    env: WorkflowEnvironment, task_queue: str, spec: ProjectSpec
) -> WorkflowHandle[ProjectInitWorkflow, ProvisioningResult]:
    return await env.client.start_workflow(ProjectInitWorkflow.run, spec, id=spec.workflow_id, task_queue=task_queue)


async def run_to_failure(env: WorkflowEnvironment, task_queue: str, spec: ProjectSpec) -> ApplicationError:
    return await failure_of(await start(env, task_queue, spec))


async def failure_of(handle: WorkflowHandle[Any, ProvisioningResult]) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as raised:
        await handle.result()
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


STEP_ORDER = [
    "validate_template",
    "upsert_project_record",
    "create_repository",
    "push_template",
    "apply_flux_resources",
    "check_flux_readiness",
    "upsert_project_record",
]


async def test_runs_every_step_in_order_and_reports_ready(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    spec = make_spec()
    handle = await start(time_skipping_env, task_queue, spec)
    result: ProvisioningResult = await handle.result()

    assert systems.calls == STEP_ORDER
    assert result.status is ProjectStatus.READY
    assert result.commit_sha == COMMIT
    assert result.progress.percent == 100
    assert [s.state for s in result.progress.steps] == [StepState.SUCCEEDED] * len(PROVISIONING_STEPS)
    assert all(s.started_at and s.finished_at and s.attempt == 1 for s in result.progress.steps)
    assert [r.status for r in systems.records] == [ProjectStatus.PROVISIONING, ProjectStatus.READY]
    claim, final = systems.records
    assert claim.workflow_id == spec.workflow_id == handle.id == f"project-{spec.slug}"
    # The first write claims the slug for this identity, the template's defaults applied, before anything is made.
    assert claim.claim and claim.parameters == {"owner": "payments", "replicas": 1} and claim.repo_url is None
    assert not final.claim and final.repo_url == f"http://git.test/{spec.slug}.git" and final.commit_sha == COMMIT
    # Ready names exactly the pushed commit, everywhere.
    assert final.applied_revision == result.applied_revision == result.progress.applied_revision == REVISION
    assert result.progress.commit_sha == COMMIT and REVISION in result.message
    # What the user is told: the run's outcome, and what each step did.
    assert result.message == result.progress.message == f"Flux reports Ready: applied {REVISION}"
    assert claim.last_message == "create started from template web-service" and final.last_message == result.message
    assert (result.slug, result.namespace, result.repo_url) == (spec.slug, spec.namespace, final.repo_url)
    assert result.operation is ProjectOperation.CREATE and result.readiness is not None
    assert result.readiness.revision == REVISION and result.readiness.state is ReadinessState.READY
    ns = spec.namespace
    assert {s.name: s.message for s in result.progress.steps} == {
        StepName.VALIDATE_TEMPLATE: "7 files render; kustomization found at k8s/overlays/development",
        StepName.PERSIST_RECORD: f"record {spec.slug} saved as provisioning",
        StepName.CREATE_REPOSITORY: f"created: http://git.test/{spec.slug}.git",
        StepName.PUSH_TEMPLATE: "pushed main@aaaaaaaaaaaa",
        StepName.APPLY_FLUX_RESOURCES: f"applied Namespace/{ns}, GitRepository/{ns}, Kustomization/{ns}",
        StepName.AWAIT_READY: f"Ready: Applied revision: {REVISION}",
        StepName.FINALIZE_RECORD: f"record {spec.slug} marked ready",
    }
    # The push and the apply are asked for exactly what the earlier steps produced.
    [push] = systems.push_requests
    assert push.spec == spec and push.repository.clone_url == final.repo_url
    [apply] = systems.apply_requests
    assert (apply.spec, apply.repository, apply.commit_sha) == (spec, push.repository, COMMIT)
    assert apply.kustomize_path == "k8s/overlays/development"
    [check] = systems.readiness_requests
    assert (check.revision, check.requested_at) == (REVISION, apply.requested_at) and apply.requested_at
    queried = await handle.query(ProjectInitWorkflow.progress)
    assert queried.status is ProjectStatus.READY and queried.percent == 100


async def test_a_repository_found_and_a_push_with_nothing_new_say_so(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    """A repository that already exists, and a template already pushed, are reported as found, not as made."""
    systems, task_queue = stubs
    systems.repository_created = False
    systems.pushed = False
    spec = make_spec()
    result = await (await start(time_skipping_env, task_queue, spec)).result()

    assert result.status is ProjectStatus.READY
    messages = {s.name: s.message for s in result.progress.steps}
    assert messages[StepName.CREATE_REPOSITORY] == f"already present: http://git.test/{spec.slug}.git"
    assert messages[StepName.PUSH_TEMPLATE] == "already up to date at main@aaaaaaaaaaaa"


async def test_an_update_runs_the_same_steps_and_says_it_was_an_update(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    """An update of a live project: the record is marked `updating` (no claim: the project holds the slug), and the
    result, its progress and the record name the operation."""
    systems, task_queue = stubs
    slug = make_spec().slug
    change = ProjectUpdate(slug=slug, parameters={"owner": "ledger"})
    result = await (
        await time_skipping_env.client.start_workflow(
            ProjectUpdateWorkflow.run, change, id=project_workflow_id(slug), task_queue=task_queue
        )
    ).result()

    assert systems.calls == ["read_project_record", *STEP_ORDER]
    assert result.status is ProjectStatus.READY and result.applied_revision == REVISION
    assert result.operation is result.progress.operation is ProjectOperation.UPDATE
    started, final = systems.records
    assert (started.status, started.claim, started.operation) == (ProjectStatus.UPDATING, False, "update")
    assert started.last_message == "update started from template web-service"
    assert started.parameters == {"owner": "ledger", "replicas": 1}
    assert final.status is ProjectStatus.READY and final.operation == "update"
    persist = next(step for step in result.progress.steps if step.name is StepName.PERSIST_RECORD)
    assert persist.message == f"record {slug} saved as updating"


async def test_percent_stays_below_100_until_ready(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    released = asyncio.Event()
    systems.readiness = lambda poll: READY if released.is_set() else PROGRESSING
    handle = await start(time_skipping_env, task_queue, make_spec())

    async def awaiting_ready() -> Any:
        while True:
            progress = await handle.query(ProjectInitWorkflow.progress)
            by_name = {s.name: s for s in progress.steps}
            if by_name[StepName.AWAIT_READY].state is StepState.RUNNING and systems.readiness_polls >= 1:
                return progress
            await asyncio.sleep(0.05)

    progress = await asyncio.wait_for(awaiting_ready(), timeout=20)
    assert progress.status is ProjectStatus.PROVISIONING
    assert progress.percent < 100
    by_name = {s.name: s for s in progress.steps}
    assert by_name[StepName.APPLY_FLUX_RESOURCES].state is StepState.SUCCEEDED
    assert by_name[StepName.FINALIZE_RECORD].state is StepState.PENDING
    released.set()
    result: ProvisioningResult = await handle.result()
    assert result.status is ProjectStatus.READY and result.progress.percent == 100


async def test_runs_waiting_for_ready_are_counted_each_while_they_wait(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    """The gauge of runs awaiting Ready counts each run by its id: two waiting runs are two, and none once done."""
    systems, task_queue = stubs
    released = asyncio.Event()
    systems.readiness = lambda poll: READY if released.is_set() else PROGRESSING
    before = len(AWAITING_READY_RUNS)
    handles = [await start(time_skipping_env, task_queue, make_spec()) for _ in range(2)]

    async def both_waiting() -> None:
        while True:
            checked = {request.name for request in systems.readiness_requests}
            if len(checked) == 2:
                return
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(both_waiting(), timeout=20)
        waiting = len(AWAITING_READY_RUNS) - before
    finally:
        released.set()
    assert waiting == 2
    for handle in handles:
        assert (await handle.result()).status is ProjectStatus.READY
    assert len(AWAITING_READY_RUNS) == before


async def test_without_waiting_skips_the_ready_step(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    result: ProvisioningResult = await (
        await start(time_skipping_env, task_queue, make_spec(wait_for_ready=False))
    ).result()
    assert "check_flux_readiness" not in systems.calls
    assert result.status is ProjectStatus.PROVISIONED
    steps = {s.name: s for s in result.progress.steps}
    assert steps[StepName.AWAIT_READY].state is StepState.SKIPPED
    assert result.progress.percent == 100
    assert systems.records[-1].status is ProjectStatus.PROVISIONED
    assert steps[StepName.AWAIT_READY].message == "not requested"
    message = "main@aaaaaaaaaaaa pushed and the resources exist; readiness was not awaited"
    assert result.message == result.progress.message == systems.records[-1].last_message == message
    assert result.readiness is None and result.applied_revision == "" and systems.records[-1].applied_revision is None


async def test_transient_failures_are_retried_and_visible(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    systems.failures["push_template"] = [RuntimeError("remote hung up"), RuntimeError("remote hung up")]
    result: ProvisioningResult = await (await start(time_skipping_env, task_queue, make_spec())).result()
    assert systems.calls.count("push_template") == 3
    push = {s.name: s for s in result.progress.steps}[StepName.PUSH_TEMPLATE]
    assert push.state is StepState.SUCCEEDED and push.attempt == 3
    assert result.status is ProjectStatus.READY


@pytest.mark.parametrize(
    ("activity_name", "error_type"),
    [
        ("validate_template", ErrorType.UNKNOWN_TEMPLATE),
        ("validate_template", ErrorType.KUSTOMIZE_PATH_MISSING),
        ("create_repository", ErrorType.REPOSITORY_CONFLICT),
    ],
)
async def test_permanent_errors_fail_at_once_before_anything_is_created(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str], activity_name: str, error_type: ErrorType
) -> None:
    systems, task_queue = stubs
    systems.failures[activity_name] = [ApplicationError("permanent", type=error_type.value, non_retryable=True)]
    failure = await run_to_failure(time_skipping_env, task_queue, make_spec())
    assert failure.type == error_type.value
    assert failure.non_retryable
    assert systems.calls.count(activity_name) == 1
    for later in ("push_template", "apply_flux_resources"):
        assert later not in systems.calls
    if activity_name == "validate_template":  # nothing at all was made: no record either
        assert systems.records == []
    else:  # the record claimed the slug: the policy's abort releases it
        statuses = [ProjectStatus.PROVISIONING, ProjectStatus.AWAITING_DECISION, ProjectStatus.ROLLED_BACK]
        assert [r.status for r in systems.records] == statuses


async def test_invalid_input_fails_without_calling_any_activity(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    handle = await start(time_skipping_env, task_queue, make_spec(slug="Bad_Slug", ready_timeout=timedelta(hours=2)))
    failure = await failure_of(handle)
    assert failure.type == ErrorType.INVALID_INPUT.value
    assert failure.message == (
        "validate_template failed: invalid project request: slug: must consist of lower case letters, digits or '-', "
        "start with a letter and end with a letter or digit (e.g. 'billing-api'); "
        "ready_timeout: must be between 1 s and 30 min"
    )
    assert systems.calls == []
    progress = await handle.query(ProjectInitWorkflow.progress)
    validate = next(step for step in progress.steps if step.name is StepName.VALIDATE_TEMPLATE)
    assert validate.state is StepState.FAILED and validate.attempt == 1
    assert progress.status is ProjectStatus.FAILED
    assert f"validate_template failed: {validate.message}" == failure.message


async def test_ready_timeout_ends_as_not_ready_with_the_flux_reason(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    # Flux still names the revision it applied before (another commit): not the one this run pushed.
    missing_path = ReadinessReport(
        ReadinessState.IN_PROGRESS,
        "ArtifactFailed",
        "kustomization path not found: stat /tmp/kustomization-1/k8s/overlays/development: no such file or directory",
        revision=f"main@sha1:{'b' * 40}",
    )
    systems.readiness = lambda poll: missing_path
    spec = make_spec(ready_timeout=timedelta(minutes=2))
    result: ProvisioningResult = await (await start(time_skipping_env, task_queue, spec)).result()

    assert result.status is ProjectStatus.NOT_READY
    assert "ArtifactFailed" in result.message and "kustomization path not found" in result.message
    steps = {s.name: s for s in result.progress.steps}
    assert steps[StepName.AWAIT_READY].state is StepState.FAILED
    assert steps[StepName.FINALIZE_RECORD].state is StepState.SUCCEEDED
    assert result.progress.percent < 100
    assert systems.records[-1].status is ProjectStatus.NOT_READY
    assert "kustomization path not found" in systems.records[-1].last_message
    message = f"main@aaaaaaaaaaaa pushed, but Flux is not Ready for it: ArtifactFailed: {missing_path.message}"
    assert result.message == result.progress.message == systems.records[-1].last_message == message
    # Not Ready for this commit: no revision is named anywhere, not even the one Flux applied before.
    assert result.applied_revision == result.progress.applied_revision == ""
    assert systems.records[-1].applied_revision is None
    # Polled with backoff across the whole bound, not once and not in a tight loop.
    assert 5 <= systems.readiness_polls <= 40


def assert_written_in_order(records: list[ProjectRecordUpdate]) -> None:
    """Every write carries the workflow time it was decided at (the records' freshness guard compares them): set,
    and never older than the write before it."""
    stamps = [record.written_at for record in records if record.written_at is not None]
    assert len(stamps) == len(records), [record.written_at for record in records]
    assert all(stamp.utcoffset() == timedelta(0) for stamp in stamps), stamps
    assert stamps == sorted(stamps), stamps


async def test_every_record_write_carries_the_workflow_time_it_was_decided_at(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    """The claim and the final write are a two-minute Ready bound apart in workflow time (skipped here, so about a
    second apart on the wall clock): written_at must say so, or a stale retry of the claim could overwrite the final
    status."""
    systems, task_queue = stubs
    systems.readiness = lambda poll: PROGRESSING
    ready_timeout = timedelta(minutes=2)
    before = await time_skipping_env.get_current_time()
    result = await (await start(time_skipping_env, task_queue, make_spec(ready_timeout=ready_timeout))).result()
    after = await time_skipping_env.get_current_time()

    assert result.status is ProjectStatus.NOT_READY
    claim, final = systems.records
    assert_written_in_order(systems.records)
    assert claim.written_at is not None and final.written_at is not None
    assert final.written_at - claim.written_at >= ready_timeout
    assert before - timedelta(seconds=1) <= claim.written_at and final.written_at <= after + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("ready_timeout", "ceiling"),
    [
        (timedelta(seconds=30), timedelta(seconds=10)),
        (timedelta(minutes=5), timedelta(seconds=30)),
        (timedelta(minutes=30), timedelta(seconds=60)),
    ],
)
def test_the_poll_ceiling_is_a_tenth_of_the_bound_within_limits(ready_timeout: timedelta, ceiling: timedelta) -> None:
    assert ready_poll_maximum_interval(ready_timeout) == ceiling


async def test_a_long_wait_checks_about_once_per_ceiling_not_every_ten_seconds(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    systems.readiness = lambda poll: ReadinessReport(ReadinessState.IN_PROGRESS, "Progressing", "reconciling")
    result: ProvisioningResult = await (
        await start(time_skipping_env, task_queue, make_spec(ready_timeout=timedelta(minutes=10)))
    ).result()

    assert result.status is ProjectStatus.NOT_READY
    # 12 checks while the interval grows 1 s -> 60 s (171 s), then one a minute: ~20 (a 10 s ceiling made 55).
    assert 17 <= systems.readiness_polls <= 23


async def test_stalled_fails_at_once_and_the_abort_releases_the_record(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    systems.readiness = lambda poll: ReadinessReport(ReadinessState.FAILED, "InvalidPath", "path is absolute")
    failure = await run_to_failure(time_skipping_env, task_queue, make_spec())
    assert failure.type == ErrorType.FLUX_STALLED.value
    assert "InvalidPath" in failure.message
    assert systems.readiness_polls == 1
    # No decision within the default bound: the default abort rolls the creation back and frees the slug.
    assert systems.records[-1].status is ProjectStatus.ROLLED_BACK
    assert "InvalidPath" in systems.records[-1].last_message


async def test_a_step_that_keeps_failing_fails_the_run_and_the_record(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    systems.failures["apply_flux_resources"] = [RuntimeError("connection refused")] * 50
    failure = await run_to_failure(time_skipping_env, task_queue, make_spec())
    assert "apply_flux_resources failed" in failure.message and "connection refused" in failure.message
    assert systems.calls.count("apply_flux_resources") == 12
    assert systems.records[-1].status is ProjectStatus.ROLLED_BACK
    assert "check_flux_readiness" not in systems.calls


async def test_an_input_no_spec_can_be_built_from_fails_the_run_at_once(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    """A start that bypasses the client with malformed data (here a list as a parameter value) must not leave a run
    retrying its first workflow task for ever."""
    systems, task_queue = stubs
    slug = f"proj-{uuid.uuid4().hex[:8]}"
    malformed = {"slug": slug, "display_name": "x", "template": "web-service", "parameters": {"owner": ["a", "b"]}}
    handle = await time_skipping_env.client.start_workflow(
        "ProjectInitWorkflow", malformed, id=f"project-{slug}", task_queue=task_queue
    )
    with pytest.raises(WorkflowFailureError) as raised:
        await asyncio.wait_for(handle.result(), timeout=30)
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ValidationError"
    assert "parameters.owner" in cause.message
    assert systems.calls == []
