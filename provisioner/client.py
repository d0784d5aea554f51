"""ProvisionerClient: what a backend uses to start provisioning and teardown runs and watch their progress."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from provisioner.contracts import (
    DEFAULT_DELETION_TIMEOUT,
    SEARCH_ATTRIBUTE_SLUG,
    SEARCH_ATTRIBUTE_STATUS,
    SEARCH_ATTRIBUTE_TEMPLATE,
    TEMPLATE_NAME_PATTERN,
    TERMINAL_STATUSES,
    FieldError,
    OperatorDecision,
    Progress,
    ProjectSpec,
    ProjectStatus,
    ProvisioningResult,
    RunSummary,
    TeardownResult,
    TeardownSpec,
    provisioning_workflow_id,
    teardown_workflow_id,
    validate_spec,
    validate_teardown_spec,
)
from workflows.project_init import ProjectInitWorkflow
from workflows.project_teardown import ProjectTeardownWorkflow

ProvisioningHandle = WorkflowHandle[ProjectInitWorkflow, ProvisioningResult]
TeardownHandle = WorkflowHandle[ProjectTeardownWorkflow, TeardownResult]
InputT = TypeVar("InputT")
HandleT = TypeVar("HandleT", bound=WorkflowHandle[Any, Any])
RequestT = TypeVar("RequestT", ProjectSpec, TeardownSpec)

# Both project workflows answer this query with a `Progress`.
PROGRESS_QUERY = "progress"
CLOSED_CHECK_EVERY_POLLS = 8


class InvalidRequest(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("invalid project request: " + "; ".join(map(str, errors)))
        self.errors = errors


class ProjectConflict(Exception):
    """The slug is already being provisioned with a different spec, or is busy with another operation."""


class NoSuchRun(LookupError):
    """The project has no provisioning run."""


class ProvisionerClient:
    def __init__(self, client: Client, task_queue: str) -> None:
        self._client = client
        self._task_queue = task_queue

    @property
    def task_queue(self) -> str:
        return self._task_queue

    async def start(self, spec: ProjectSpec) -> ProvisioningHandle:
        """Start provisioning, or return the run already provisioning this same spec.

        The workflow id is derived from the slug, and the server enforces one running workflow per id: starting the
        same project twice attaches to the existing run instead of running two provisionings.
        """
        errors = validate_spec(spec)
        if errors:
            raise InvalidRequest(errors)
        teardown = await self._describe(self.teardown_handle(spec.slug))
        if teardown is not None and teardown.status == WorkflowExecutionStatus.RUNNING:
            raise ProjectConflict(
                f"project {spec.slug!r} is being torn down (run {teardown.run_id}); wait for it to end"
            )

        async def start(conflict_policy: WorkflowIDConflictPolicy) -> ProvisioningHandle:
            return await self._client.start_workflow(
                ProjectInitWorkflow.run,
                spec,
                id=provisioning_workflow_id(spec.slug),
                task_queue=self._task_queue,
                id_conflict_policy=conflict_policy,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(SEARCH_ATTRIBUTE_SLUG, spec.slug),
                        SearchAttributePair(SEARCH_ATTRIBUTE_TEMPLATE, spec.template),
                        SearchAttributePair(SEARCH_ATTRIBUTE_STATUS, ProjectStatus.PENDING.value),
                    ]
                ),
                static_summary=f"Provision {spec.slug} from template {spec.template}",
                static_details=(
                    f"**{spec.display_name}** (`{spec.slug}`), template `{spec.template}`, "
                    f"environment `{spec.environment}`, wait for Ready: {spec.wait_for_ready}"
                ),
            )

        return await self._start_or_attach(
            start, spec, f"project {spec.slug!r} is already being provisioned with a different request"
        )

    async def teardown(
        self,
        slug: str,
        *,
        delete_repository: bool = False,
        deletion_timeout: timedelta = DEFAULT_DELETION_TIMEOUT,
    ) -> TeardownHandle:
        """Start tearing SLUG down, or return the teardown already running with this same request.

        Refused with ProjectConflict while SLUG is being provisioned (the workflow checks again: ProjectBusy).
        The repository is kept unless `delete_repository`.
        """
        spec = TeardownSpec(slug=slug, delete_repository=delete_repository, deletion_timeout=deletion_timeout)
        errors = validate_teardown_spec(spec)
        if errors:
            raise InvalidRequest(errors)
        provisioning = await self._describe(self.handle(slug))
        if provisioning is not None and provisioning.status == WorkflowExecutionStatus.RUNNING:
            raise ProjectConflict(
                f"project {slug!r} is being provisioned (run {provisioning.run_id}); "
                "wait for it to end (abort it if it awaits a decision) before tearing the project down"
            )
        attributes = [
            SearchAttributePair(SEARCH_ATTRIBUTE_SLUG, slug),
            SearchAttributePair(SEARCH_ATTRIBUTE_STATUS, ProjectStatus.DELETING.value),
        ]
        template = provisioning.typed_search_attributes.get(SEARCH_ATTRIBUTE_TEMPLATE) if provisioning else None
        if template:
            attributes.append(SearchAttributePair(SEARCH_ATTRIBUTE_TEMPLATE, template))
        repository = "delete its repository" if delete_repository else "keep its repository"

        async def start(conflict_policy: WorkflowIDConflictPolicy) -> TeardownHandle:
            return await self._client.start_workflow(
                ProjectTeardownWorkflow.run,
                spec,
                id=teardown_workflow_id(slug),
                task_queue=self._task_queue,
                id_conflict_policy=conflict_policy,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                search_attributes=TypedSearchAttributes(attributes),
                static_summary=f"Tear down {slug} and {repository}",
                static_details=(
                    f"`{slug}`: delete its Kustomization, GitRepository and Namespace, then {repository}; "
                    f"deletion timeout {deletion_timeout}"
                ),
            )

        return await self._start_or_attach(
            start, spec, f"project {slug!r} is already being torn down with a different request"
        )

    async def _start_or_attach(
        self,
        start: Callable[[WorkflowIDConflictPolicy], Awaitable[HandleT]],
        request: RequestT,
        conflict: str,
    ) -> HandleT:
        """Start a run of `request`, or attach to the run of this id already running with this same request.

        The first attempt refuses an existing run (FAIL), so a new run, the usual case, costs one call and no
        history read; only a run that was already there has its input read from history and compared.
        """
        try:
            return await start(WorkflowIDConflictPolicy.FAIL)
        except WorkflowAlreadyStartedError as error:
            existing = self._client.get_workflow_handle(error.workflow_id, run_id=error.run_id)
        running_request = await self._started_input(existing, type(request))
        if running_request is not None and asdict(running_request) != asdict(request):
            raise ProjectConflict(f"{conflict} (run {existing.run_id})")
        # The same request: attach to that run (USE_EXISTING); had it ended meanwhile, this starts it anew as asked.
        return await start(WorkflowIDConflictPolicy.USE_EXISTING)

    async def _describe(self, handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionDescription | None:
        try:
            return await handle.describe()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return None
            raise

    async def _started_input(self, handle: WorkflowHandle[Any, Any], input_type: type[InputT]) -> InputT | None:
        """The input the current run was started with (the history's first event)."""
        async for event in handle.fetch_history_events():
            attributes = event.workflow_execution_started_event_attributes
            payloads = list(attributes.input.payloads)
            if not payloads:
                return None
            decoded = await self._client.data_converter.decode(payloads, [input_type])
            value = decoded[0]
            return value if isinstance(value, input_type) else None
        return None

    def handle(self, slug: str) -> ProvisioningHandle:
        return self._client.get_workflow_handle_for(ProjectInitWorkflow.run, provisioning_workflow_id(slug))

    def teardown_handle(self, slug: str) -> TeardownHandle:
        return self._client.get_workflow_handle_for(ProjectTeardownWorkflow.run, teardown_workflow_id(slug))

    async def progress(self, slug: str) -> Progress:
        return await self.handle(slug).query(ProjectInitWorkflow.progress)

    async def teardown_progress(self, slug: str) -> Progress:
        return await self.teardown_handle(slug).query(ProjectTeardownWorkflow.progress)

    async def watch(
        self,
        slug: str,
        interval: timedelta = timedelta(milliseconds=250),
        stop_at: frozenset[ProjectStatus] = TERMINAL_STATUSES,
    ) -> AsyncIterator[Progress]:
        """Yield the provisioning progress each time it changes, ending with a status in `stop_at` (by default the
        terminal ones; add AWAITING_DECISION to stop where an operator must act)."""
        async for progress in self._watch(self.handle(slug), interval, stop_at):
            yield progress

    async def watch_teardown(
        self, slug: str, interval: timedelta = timedelta(milliseconds=250)
    ) -> AsyncIterator[Progress]:
        """Yield the teardown progress each time it changes, ending with the terminal state."""
        async for progress in self._watch(self.teardown_handle(slug), interval, TERMINAL_STATUSES):
            yield progress

    async def _watch(
        self, handle: WorkflowHandle[Any, Any], interval: timedelta, stop_at: frozenset[ProjectStatus]
    ) -> AsyncIterator[Progress]:
        """Poll the `progress` query, yielding changes, until a terminal status or until the run has closed.

        A run that was terminated, cancelled or timed out never reports a terminal status of its own, so every few
        unchanged polls the run itself is described.
        """
        last: Progress | None = None
        unchanged = 0
        while True:
            try:
                progress = await handle.query(PROGRESS_QUERY, result_type=Progress)
            except RPCError:
                # The run may be between tasks right after start; its status decides whether to keep trying.
                if not await self._is_running(handle):
                    raise
                await asyncio.sleep(interval.total_seconds())
                continue
            if progress != last:
                yield progress
                last, unchanged = progress, 0
            if progress.status in stop_at:
                return
            unchanged += 1
            if unchanged % CLOSED_CHECK_EVERY_POLLS == 0 and not await self._is_running(handle):
                return
            await asyncio.sleep(interval.total_seconds())

    @staticmethod
    async def _is_running(handle: WorkflowHandle[Any, Any]) -> bool:
        return (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

    async def wait(self, slug: str) -> ProvisioningResult:
        return await self.handle(slug).result()

    async def wait_teardown(self, slug: str) -> TeardownResult:
        return await self.teardown_handle(slug).result()

    async def list(
        self, *, status: ProjectStatus | None = None, template: str | None = None, limit: int = 100
    ) -> list[RunSummary]:
        """Runs of project workflows, newest first, found with a visibility query on the search attributes."""
        clauses = [f"{SEARCH_ATTRIBUTE_SLUG.name} IS NOT NULL"]
        if status is not None:
            clauses.append(f"{SEARCH_ATTRIBUTE_STATUS.name} = '{ProjectStatus(status).value}'")
        if template is not None:
            if not TEMPLATE_NAME_PATTERN.fullmatch(template):
                raise InvalidRequest([FieldError("template", "must be a template name such as 'web-service'")])
            clauses.append(f"{SEARCH_ATTRIBUTE_TEMPLATE.name} = '{template}'")
        runs: list[RunSummary] = []
        async for execution in self._client.list_workflows(" AND ".join(clauses), limit=limit):
            attributes = execution.typed_search_attributes
            runs.append(
                RunSummary(
                    slug=attributes.get(SEARCH_ATTRIBUTE_SLUG) or "",
                    workflow_id=execution.id,
                    run_id=execution.run_id,
                    workflow_type=execution.workflow_type,
                    status=attributes.get(SEARCH_ATTRIBUTE_STATUS) or "",
                    execution_status=execution.status.name if execution.status else "UNKNOWN",
                    template=attributes.get(SEARCH_ATTRIBUTE_TEMPLATE) or "",
                    started_at=execution.start_time,
                    closed_at=execution.close_time,
                )
            )
        return runs

    async def decide(self, slug: str, decision: OperatorDecision) -> str:
        """Send an operator's decision (retry, abort or leave) to SLUG's run awaiting one; returns its answer.

        NoSuchRun when SLUG was never provisioned; ProjectConflict when its run is not awaiting a decision.
        """
        handle = self.handle(slug)
        description = await self._describe(handle)
        if description is None:
            raise NoSuchRun(f"project {slug!r} has no provisioning run")
        if description.status != WorkflowExecutionStatus.RUNNING:
            raise ProjectConflict(f"project {slug!r} is not awaiting a decision: its last run has ended")
        try:
            return await handle.execute_update(ProjectInitWorkflow.decide, decision)
        except WorkflowUpdateFailedError as refused:
            cause = refused.cause
            raise ProjectConflict(cause.message if isinstance(cause, ApplicationError) else str(cause)) from None
