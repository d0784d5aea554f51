"""ProvisionerClient: what a backend uses to create, update and tear down projects and watch their progress.

Every operation of a project runs under one workflow id, `project-<slug>`, so Temporal itself refuses a second run
of a project while one is running. With a `ProjectCatalog` (`from_settings`), a request is also checked before any
run starts: its template and parameters (field-level `InvalidRequest`), and the project's record (a create of a
slug whose live project has another identity is a `ProjectConflict` naming the fields; the same identity is a no-op
that returns the project's latest run).
"""

from __future__ import annotations

import asyncio
import uuid
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

from provisioner.catalog import ProjectCatalog, RequestRefused
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
    ProjectUpdate,
    ProvisioningResult,
    RunSummary,
    TeardownResult,
    TeardownSpec,
    UpdatePreview,
    dry_run_workflow_id,
    project_workflow_id,
    validate_spec,
    validate_teardown_spec,
    validate_update,
)
from provisioner.settings import Settings
from workflows.project_init import ProjectInitWorkflow
from workflows.project_teardown import ProjectTeardownWorkflow
from workflows.project_update import ProjectPreviewWorkflow, ProjectUpdateWorkflow

ProvisioningHandle = WorkflowHandle[ProjectInitWorkflow, ProvisioningResult]
UpdateHandle = WorkflowHandle[ProjectUpdateWorkflow, ProvisioningResult]
TeardownHandle = WorkflowHandle[ProjectTeardownWorkflow, TeardownResult]
ProjectHandle = WorkflowHandle[Any, Any]  # the latest run of a project, whichever operation it is
InputT = TypeVar("InputT")
HandleT = TypeVar("HandleT", bound=WorkflowHandle[Any, Any])

# Every project workflow answers this query with a `Progress`, and `decide` when awaiting a decision.
PROGRESS_QUERY = "progress"
CLOSED_CHECK_EVERY_POLLS = 8
# The workflow type of each operation, as a busy project's error names it.
OPERATIONS = {
    "ProjectInitWorkflow": "being created",
    "ProjectUpdateWorkflow": "being updated",
    "ProjectTeardownWorkflow": "being torn down",
}


class InvalidRequest(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("invalid project request: " + "; ".join(map(str, errors)))
        self.errors = errors


class ProjectConflict(Exception):
    """The slug holds a project of another identity, or is busy with another operation."""


class NoSuchProject(LookupError):
    """There is no live project of that slug (never created, deleted or rolled back)."""


class NoSuchRun(LookupError):
    """The project has no run."""


class ProvisionerClient:
    def __init__(self, client: Client, task_queue: str, catalog: ProjectCatalog | None = None) -> None:
        self._client = client
        self._task_queue = task_queue
        self._catalog = catalog

    @classmethod
    def from_settings(cls, client: Client, settings: Settings) -> ProvisionerClient:
        """A client that checks every request against the templates and the records before starting a run."""
        return cls(client, settings.task_queue, ProjectCatalog(settings.templates_dir, settings.effective_database_url))

    @property
    def task_queue(self) -> str:
        return self._task_queue

    async def start(self, spec: ProjectSpec) -> ProvisioningHandle:
        """Create a project; returns the handle of its run.

        Refused with ProjectConflict when the slug holds a live project of another identity (the message names the
        fields; use `update`), or while another operation of the project runs. The same identity is a no-op that
        returns the project's latest run; a run creating this same spec is attached to.
        """
        if self._catalog is not None:  # every field error at once: the request's shape and its template's rules
            existing = await self._existing_project(spec)
            if existing is not None:
                return existing
        elif errors := validate_spec(spec):
            raise InvalidRequest(errors)

        async def start(conflict_policy: WorkflowIDConflictPolicy) -> ProvisioningHandle:
            return await self._client.start_workflow(
                ProjectInitWorkflow.run,
                spec,
                id=project_workflow_id(spec.slug),
                task_queue=self._task_queue,
                id_conflict_policy=conflict_policy,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                search_attributes=_search_attributes(spec.slug, spec.template, ProjectStatus.PENDING),
                static_summary=f"Create {spec.slug} from template {spec.template}",
                static_details=(
                    f"**{spec.display_name}** (`{spec.slug}`), template `{spec.template}`, "
                    f"environment `{spec.environment}`, wait for Ready: {spec.wait_for_ready}"
                ),
            )

        return await self._start_or_attach(start, spec, "ProjectInitWorkflow")

    async def _existing_project(self, spec: ProjectSpec) -> ProvisioningHandle | None:
        """The live project's latest run when it is this very project; None when the slug is free."""
        assert self._catalog is not None
        catalog = self._catalog
        try:
            checked = await asyncio.to_thread(catalog.check, spec)
        except RequestRefused as refused:
            raise InvalidRequest(refused.errors) from None
        live = await asyncio.to_thread(catalog.live_project, spec.slug)
        if live is None:
            return None
        differences = live.differences(checked.identity)
        if differences:
            raise ProjectConflict(
                f"project {spec.slug!r} already exists ({live.status.value}) with another "
                + ", ".join(differences)
                + f": change it with an update (`provisioner update {spec.slug}`, `PATCH /projects/{spec.slug}`), "
                "or delete it first"
            )
        # Its latest run, pinned: a create or an update, either answers with a ProvisioningResult.
        latest = await self._describe(self.handle(spec.slug))
        return self._client.get_workflow_handle_for(
            ProjectInitWorkflow.run, project_workflow_id(spec.slug), run_id=latest.run_id if latest else None
        )

    async def update(self, change: ProjectUpdate) -> UpdateHandle:
        """Update a live project: re-render, push a new commit only if the rendered tree changed, apply, and wait
        until Flux applied that commit. NoSuchProject without a live project; ProjectConflict while another
        operation of it runs (the same update running is attached to)."""
        template = await self._checked_update(change)
        changes = [f"{name}={value!r}" for name, value in change.parameters.items()]
        changes += [f"unset {name}" for name in change.unset]
        if change.environment:
            changes.append(f"environment {change.environment}")
        if change.display_name:
            changes.append(f"display name {change.display_name!r}")

        async def start(conflict_policy: WorkflowIDConflictPolicy) -> UpdateHandle:
            return await self._client.start_workflow(
                ProjectUpdateWorkflow.run,
                change,
                id=project_workflow_id(change.slug),
                task_queue=self._task_queue,
                id_conflict_policy=conflict_policy,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                search_attributes=_search_attributes(change.slug, template, ProjectStatus.UPDATING),
                static_summary=f"Update {change.slug}",
                static_details=f"`{change.slug}`: " + (", ".join(changes) or "re-render and apply, nothing changed"),
            )

        return await self._start_or_attach(start, change, "ProjectUpdateWorkflow")

    async def preview(self, change: ProjectUpdate) -> UpdatePreview:
        """What `update(change)` would push: the unified diff against the branch head. Changes nothing anywhere;
        runs beside the project's operations."""
        await self._checked_update(change)
        return await self._client.execute_workflow(
            ProjectPreviewWorkflow.run,
            change,
            id=f"{dry_run_workflow_id(change.slug)}-{uuid.uuid4().hex[:8]}",
            task_queue=self._task_queue,
            static_summary=f"Dry run of an update of {change.slug}: changes nothing",
        )

    async def _checked_update(self, change: ProjectUpdate) -> str:
        """Refuse a malformed `change` (InvalidRequest) and, with a catalogue, one of no live project
        (NoSuchProject) or whose merged spec its template refuses; returns the project's template ("" unknown)."""
        if errors := validate_update(change):
            raise InvalidRequest(errors)
        if self._catalog is None:
            return ""
        live = await asyncio.to_thread(self._catalog.live_project, change.slug)
        if live is None:
            raise NoSuchProject(f"there is no project {change.slug!r} to update")
        try:
            await asyncio.to_thread(self._catalog.updated_spec, change, live)
        except RequestRefused as refused:
            raise InvalidRequest(refused.errors) from None
        return live.template

    async def teardown(
        self,
        slug: str,
        *,
        delete_repository: bool = False,
        deletion_timeout: timedelta = DEFAULT_DELETION_TIMEOUT,
    ) -> TeardownHandle:
        """Start tearing SLUG down, or return the teardown already running with this same request.

        Refused with ProjectConflict while the project is being created or updated (one workflow id: atomic).
        The repository is kept unless `delete_repository`.
        """
        spec = TeardownSpec(slug=slug, delete_repository=delete_repository, deletion_timeout=deletion_timeout)
        errors = validate_teardown_spec(spec)
        if errors:
            raise InvalidRequest(errors)
        latest = await self._describe(self.handle(slug))
        template = latest.typed_search_attributes.get(SEARCH_ATTRIBUTE_TEMPLATE) if latest else None
        repository = "delete its repository" if delete_repository else "keep its repository"

        async def start(conflict_policy: WorkflowIDConflictPolicy) -> TeardownHandle:
            return await self._client.start_workflow(
                ProjectTeardownWorkflow.run,
                spec,
                id=project_workflow_id(slug),
                task_queue=self._task_queue,
                id_conflict_policy=conflict_policy,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                search_attributes=_search_attributes(slug, template or "", ProjectStatus.DELETING),
                static_summary=f"Tear down {slug} and {repository}",
                static_details=(
                    f"`{slug}`: delete its Kustomization, GitRepository and Namespace, then {repository}; "
                    f"deletion timeout {deletion_timeout}"
                ),
            )

        return await self._start_or_attach(start, spec, "ProjectTeardownWorkflow")

    async def _start_or_attach(
        self,
        start: Callable[[WorkflowIDConflictPolicy], Awaitable[HandleT]],
        request: ProjectSpec | ProjectUpdate | TeardownSpec,
        workflow_type: str,
    ) -> HandleT:
        """Start a run of `request`, or attach to the project's run already running this same request.

        The first attempt refuses an existing run (FAIL), so a new run, the usual case, costs one call and no
        history read; only a run that was already there is described and its input compared.
        """
        slug = request.slug
        try:
            return await start(WorkflowIDConflictPolicy.FAIL)
        except WorkflowAlreadyStartedError as error:
            existing = self._client.get_workflow_handle(error.workflow_id, run_id=error.run_id)
        description = await existing.describe()
        if description.workflow_type != workflow_type:
            busy = OPERATIONS.get(description.workflow_type, f"busy with {description.workflow_type}")
            raise ProjectConflict(
                f"project {slug!r} is {busy} (run {existing.run_id}); wait for it to end, then try again"
            )
        running_request = await self._started_input(existing, type(request))
        if running_request is not None and asdict(running_request) != asdict(request):
            raise ProjectConflict(
                f"project {slug!r} is {OPERATIONS[workflow_type]} with a different request (run {existing.run_id})"
            )
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

    def handle(self, slug: str) -> ProjectHandle:
        """The project's latest run: create, update or teardown (`Progress.operation` says which)."""
        return self._client.get_workflow_handle(project_workflow_id(slug))

    async def progress(self, slug: str) -> Progress:
        """The progress of the project's latest operation."""
        progress: Progress = await self.handle(slug).query(PROGRESS_QUERY, result_type=Progress)
        return progress

    async def watch(
        self,
        slug: str,
        interval: timedelta = timedelta(milliseconds=250),
        stop_at: frozenset[ProjectStatus] = TERMINAL_STATUSES,
    ) -> AsyncIterator[Progress]:
        """Yield the progress of the project's latest operation each time it changes, ending with a status in
        `stop_at` (by default the terminal ones; add AWAITING_DECISION to stop where an operator must act)."""
        async for progress in self._watch(self.handle(slug), interval, stop_at):
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
        """The result of the project's latest operation, a create or an update."""
        handle = self._client.get_workflow_handle(project_workflow_id(slug), result_type=ProvisioningResult)
        result: ProvisioningResult = await handle.result()
        return result

    async def wait_teardown(self, slug: str) -> TeardownResult:
        """The result of the project's latest operation, a teardown."""
        handle = self._client.get_workflow_handle(project_workflow_id(slug), result_type=TeardownResult)
        result: TeardownResult = await handle.result()
        return result

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

        NoSuchRun when SLUG has no run; ProjectConflict when its run is not awaiting a decision.
        """
        handle = self.handle(slug)
        description = await self._describe(handle)
        if description is None:
            raise NoSuchRun(f"project {slug!r} has no run")
        if description.status != WorkflowExecutionStatus.RUNNING:
            raise ProjectConflict(f"project {slug!r} is not awaiting a decision: its last run has ended")
        try:
            answer: str = await handle.execute_update(ProjectInitWorkflow.decide, decision)
            return answer
        except WorkflowUpdateFailedError as refused:
            cause = refused.cause
            raise ProjectConflict(cause.message if isinstance(cause, ApplicationError) else str(cause)) from None


def _search_attributes(slug: str, template: str, status: ProjectStatus) -> TypedSearchAttributes:
    pairs: list[SearchAttributePair[str]] = [
        SearchAttributePair(SEARCH_ATTRIBUTE_SLUG, slug),
        SearchAttributePair(SEARCH_ATTRIBUTE_STATUS, status.value),
    ]
    if template:
        pairs.append(SearchAttributePair(SEARCH_ATTRIBUTE_TEMPLATE, template))
    return TypedSearchAttributes(pairs)
