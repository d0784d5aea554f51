"""The API's routes: `/projects` (behind the bearer token) and `/healthz` (open)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.exceptions import RequestValidationError
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import text
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from activities import records
from provisioner.api.events import progress_events
from provisioner.api.progress import RunProgressReader
from provisioner.api.schemas import (
    DecisionRequest,
    ErrorResponse,
    Health,
    OperationAccepted,
    ProjectDetail,
    ProjectLinks,
    ProjectPage,
    ProjectRequest,
    body_field_errors,
)
from provisioner.client import (
    InvalidRequest,
    NoSuchRun,
    ProjectConflict,
    ProvisionerClient,
)
from provisioner.contracts import (
    FailureAction,
    FieldError,
    OperatorDecision,
    ProjectSpec,
    ProjectStatus,
    provisioning_workflow_id,
    teardown_workflow_id,
    validate_spec,
)
from provisioner.db.engine import engine_for
from provisioner.settings import Settings
from provisioner.templating import TemplateError, UnknownTemplate, check_against_template, load_template

HEALTH_TIMEOUT = timedelta(seconds=3)


@dataclass
class ApiContext:
    """What the routes share: the settings and the Temporal client (connected by the app's lifespan if not given)."""

    settings: Settings
    client: Client | None = None
    _progress: RunProgressReader | None = None

    @property
    def progress(self) -> RunProgressReader:
        if self._progress is None:
            self._progress = RunProgressReader(self.temporal, self.settings.task_queue)
        return self._progress

    @property
    def temporal(self) -> Client:
        if self.client is None:
            raise HTTPException(HTTPStatus.SERVICE_UNAVAILABLE, "not connected to Temporal yet")
        return self.client

    @property
    def provisioner(self) -> ProvisionerClient:
        return ProvisionerClient(self.temporal, self.settings.task_queue)

    @property
    def database_url(self) -> str:
        return self.settings.effective_database_url


def project_links(slug: str) -> ProjectLinks:
    return ProjectLinks(project=f"/projects/{slug}", events=f"/projects/{slug}/events")


def _error(status: HTTPStatus, description: str) -> dict[int | str, dict[str, Any]]:
    return {status.value: {"model": ErrorResponse, "description": description}}


NOT_FOUND = _error(HTTPStatus.NOT_FOUND, "No such project: neither a record nor a workflow run.")
CONFLICT = _error(HTTPStatus.CONFLICT, "The project is busy with a different request or another operation.")


def projects_router(context: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/projects", tags=["projects"])

    @router.post(
        "",
        status_code=HTTPStatus.ACCEPTED,
        responses=CONFLICT,
        summary="Start provisioning a project",
        description="Starts the provisioning workflow and answers at once; follow `Location` or `links.events`. "
        "Repeating the same request while it runs answers with the same run; a different request for a slug "
        "being provisioned is a conflict.",
    )
    async def create_project(request: ProjectRequest, response: Response) -> OperationAccepted:
        spec = request.to_spec()
        errors = await asyncio.to_thread(check_spec, spec, context.settings.templates_dir)
        if errors:
            raise RequestValidationError(body_field_errors(errors))
        try:
            handle = await context.provisioner.start(spec)
        except InvalidRequest as invalid:
            raise RequestValidationError(body_field_errors(invalid.errors)) from None
        except ProjectConflict as conflict:
            raise HTTPException(HTTPStatus.CONFLICT, str(conflict)) from None
        response.headers["Location"] = project_links(spec.slug).project
        return _accepted(spec.slug, handle)

    @router.get("", summary="List projects (from the database), newest first")
    async def list_projects(
        status: ProjectStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=records.MAX_PAGE_SIZE)] = records.DEFAULT_PAGE_SIZE,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> ProjectPage:
        items = await asyncio.to_thread(records.list_projects, context.database_url, status, limit, offset)
        return ProjectPage(
            items=items, limit=limit, offset=offset, next_offset=offset + limit if len(items) == limit else None
        )

    @router.get("/{slug}", responses=NOT_FOUND, summary="A project's record and the live progress of its runs")
    async def get_project(slug: str) -> ProjectDetail:
        record, progress, teardown = await asyncio.gather(
            asyncio.to_thread(records.get_project, context.database_url, slug),
            context.progress.read(provisioning_workflow_id(slug)),
            context.progress.read(teardown_workflow_id(slug)),
        )
        if record is None and progress is None and teardown is None:
            raise HTTPException(HTTPStatus.NOT_FOUND, f"no project {slug!r}")
        return ProjectDetail(slug=slug, record=record, progress=progress, teardown=teardown, links=project_links(slug))

    async def provisioning_run(slug: str) -> None:
        """404 before any stream starts if the project has no provisioning run."""
        status, _ = await context.progress.latest_run(provisioning_workflow_id(slug))
        if status is None:
            raise HTTPException(HTTPStatus.NOT_FOUND, f"project {slug!r} has no provisioning run")

    @router.get(
        "/{slug}/events",
        response_class=EventSourceResponse,
        dependencies=[Depends(provisioning_run)],
        responses=NOT_FOUND,
        summary="Server-Sent Events of the provisioning progress",
        description="`event: progress` (data: a `Progress`) each time the progress of the latest provisioning run "
        "changes, starting with its current state; then one `event: end` (data: a `StreamEnd`) when the run "
        "reaches a final status, after which the server closes the stream (EventSource clients should `close()` "
        "on `end` rather than reconnect). Keep-alive comments are sent while nothing changes.",
    )
    async def stream_progress(slug: str) -> AsyncIterator[ServerSentEvent]:
        async for event in progress_events(context.provisioner, slug):
            yield event

    @router.delete(
        "/{slug}",
        status_code=HTTPStatus.ACCEPTED,
        responses={**NOT_FOUND, **CONFLICT},
        summary="Tear a project down",
        description="Starts the teardown workflow: the Flux resources and the namespace are deleted and the record "
        "is marked deleted; the Git repository is kept unless `delete_repository=true`. Refused (409) while the "
        "project is being provisioned.",
    )
    async def delete_project(slug: str, response: Response, delete_repository: bool = False) -> OperationAccepted:
        record, (provisioning, _) = await asyncio.gather(
            asyncio.to_thread(records.get_project, context.database_url, slug),
            context.progress.latest_run(provisioning_workflow_id(slug)),
        )
        if record is None and provisioning is None:
            raise HTTPException(HTTPStatus.NOT_FOUND, f"no project {slug!r}")
        try:
            handle = await context.provisioner.teardown(slug, delete_repository=delete_repository)
        except ProjectConflict as conflict:
            raise HTTPException(HTTPStatus.CONFLICT, str(conflict)) from None
        response.headers["Location"] = project_links(slug).project
        return _accepted(slug, handle)

    async def decide(slug: str, action: FailureAction, request: DecisionRequest | None) -> OperationAccepted:
        decision = OperatorDecision(action, request.reason if request else "")
        try:
            await context.provisioner.decide(slug, decision)
        except NoSuchRun as missing:
            raise HTTPException(HTTPStatus.NOT_FOUND, str(missing)) from None
        except ProjectConflict as conflict:
            raise HTTPException(HTTPStatus.CONFLICT, str(conflict)) from None
        return OperationAccepted(
            slug=slug, workflow_id=provisioning_workflow_id(slug), run_id=None, links=project_links(slug)
        )

    @router.post(
        "/{slug}/retry",
        status_code=HTTPStatus.ACCEPTED,
        responses={**NOT_FOUND, **CONFLICT},
        summary="Resume the failed step of a run awaiting a decision",
        description="Refused (409) unless the project's run is awaiting an operator's decision.",
    )
    async def retry_project(slug: str, request: DecisionRequest | None = None) -> OperationAccepted:
        return await decide(slug, FailureAction.RETRY, request)

    @router.post(
        "/{slug}/abort",
        status_code=HTTPStatus.ACCEPTED,
        responses={**NOT_FOUND, **CONFLICT},
        summary="Roll back the completed steps of a run awaiting a decision",
        description="The Flux objects and the namespace are deleted, the record is marked failed, and the repository "
        "is kept or deleted as the run's failure policy says. Refused (409) unless the run awaits a decision.",
    )
    async def abort_project(slug: str, request: DecisionRequest | None = None) -> OperationAccepted:
        return await decide(slug, FailureAction.ABORT, request)

    return router


def health_router(context: ApiContext) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get(
        "/healthz",
        responses={HTTPStatus.SERVICE_UNAVAILABLE.value: {"model": Health, "description": "A dependency is down."}},
        summary="Whether Temporal and the database answer (no authentication)",
    )
    async def healthz(response: Response) -> Health:
        temporal, database = await asyncio.gather(temporal_healthy(context.client), database_healthy(context))
        if not (temporal and database):
            response.status_code = HTTPStatus.SERVICE_UNAVAILABLE
        return Health(status="ok" if temporal and database else "unavailable", temporal=temporal, database=database)

    return router


def check_spec(spec: ProjectSpec, templates_dir: Path) -> list[FieldError]:
    """Every field error of `spec`: its shape (`validate_spec`), then the rules of its template (that it exists,
    its declared parameters and environments), each field reported once."""
    errors = validate_spec(spec)
    if any(error.field == "template" for error in errors):
        return errors
    try:
        manifest = load_template(templates_dir, spec.template)
    except UnknownTemplate as unknown:
        return errors + unknown.field_errors
    except TemplateError as broken:
        return [*errors, FieldError("template", f"cannot be used: {broken.message}")]
    _, errors = check_against_template(spec, manifest, errors)
    return errors


def _accepted(slug: str, handle: WorkflowHandle[Any, Any]) -> OperationAccepted:
    return OperationAccepted(slug=slug, workflow_id=handle.id, run_id=handle.result_run_id, links=project_links(slug))


async def temporal_healthy(client: Client | None) -> bool:
    if client is None:
        return False
    try:
        return await client.service_client.check_health(timeout=HEALTH_TIMEOUT)
    except RPCError:
        return False


async def database_healthy(context: ApiContext) -> bool:
    def probe() -> None:
        with engine_for(context.database_url).connect() as connection:
            connection.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(asyncio.to_thread(probe), HEALTH_TIMEOUT.total_seconds())
    except Exception:  # any failure to answer means unhealthy; the reason may hold the URL, so it is not shown
        return False
    return True
