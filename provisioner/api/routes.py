"""The API's routes: `/projects` (behind the bearer token) and `/healthz` (open)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.exceptions import RequestValidationError
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import text
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

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
    ProjectUpdateRequest,
    body_field_errors,
)
from provisioner.client import (
    InvalidRequest,
    NoSuchProject,
    NoSuchRun,
    ProjectConflict,
    ProvisionerClient,
)
from provisioner.contracts import (
    FailureAction,
    OperatorDecision,
    ProjectStatus,
    UpdatePreview,
    project_workflow_id,
)
from provisioner.db import projects as records
from provisioner.db.engine import engine_for
from provisioner.settings import Settings

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
        return ProvisionerClient.from_settings(self.temporal, self.settings)

    @property
    def database_url(self) -> str:
        return self.settings.effective_database_url


def project_links(slug: str) -> ProjectLinks:
    return ProjectLinks(project=f"/projects/{slug}", events=f"/projects/{slug}/events")


def _error(status: HTTPStatus, description: str) -> dict[int | str, dict[str, Any]]:
    return {status.value: {"model": ErrorResponse, "description": description}}


NOT_FOUND = _error(HTTPStatus.NOT_FOUND, "No such project: neither a record nor a workflow run.")
CONFLICT = _error(
    HTTPStatus.CONFLICT,
    "The slug holds a project of another identity (the message names the fields), or the project is busy with "
    "another operation.",
)


def projects_router(context: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/projects", tags=["projects"])

    @router.post(
        "",
        status_code=HTTPStatus.ACCEPTED,
        responses=CONFLICT,
        summary="Create a project",
        description="Starts the create workflow and answers at once; follow `Location` or `links.events`. "
        "A slug whose live project has the same display name, template, environment and parameters (defaults "
        "applied) answers with that project's latest run and starts nothing; any difference is a 409 naming the "
        "fields (change a project with `PATCH`). A deleted or rolled-back project's slug is free.",
    )
    async def create_project(request: ProjectRequest, response: Response) -> OperationAccepted:
        spec = request.to_spec()
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

    @router.get("/{slug}", responses=NOT_FOUND, summary="A project's record and the live progress of its latest run")
    async def get_project(slug: str) -> ProjectDetail:
        record, progress = await asyncio.gather(
            asyncio.to_thread(records.get_project, context.database_url, slug),
            context.progress.read(project_workflow_id(slug)),
        )
        if record is None and progress is None:
            raise HTTPException(HTTPStatus.NOT_FOUND, f"no project {slug!r}")
        return ProjectDetail(slug=slug, record=record, progress=progress, links=project_links(slug))

    @router.patch(
        "/{slug}",
        status_code=HTTPStatus.ACCEPTED,
        responses={
            **NOT_FOUND,
            **CONFLICT,
            HTTPStatus.OK.value: {"model": UpdatePreview, "description": "`dry_run=true`: what would change."},
        },
        summary="Update a project",
        description="Starts the update workflow: re-render with the merged parameters, push a new commit only if "
        "the rendered tree changed, apply, and wait until Flux applied that commit. With `dry_run=true` it answers "
        "200 with the unified diff against the branch head and changes nothing. 404 without a live project; 409 "
        "while another operation of the project runs.",
    )
    async def update_project(
        slug: str, request: ProjectUpdateRequest, response: Response, dry_run: bool = False
    ) -> OperationAccepted | UpdatePreview:
        change = request.to_update(slug, dry_run)
        try:
            if dry_run:
                response.status_code = HTTPStatus.OK
                return await context.provisioner.preview(change)
            handle = await context.provisioner.update(change)
        except InvalidRequest as invalid:
            raise RequestValidationError(body_field_errors(invalid.errors)) from None
        except NoSuchProject as missing:
            raise HTTPException(HTTPStatus.NOT_FOUND, str(missing)) from None
        except ProjectConflict as conflict:
            raise HTTPException(HTTPStatus.CONFLICT, str(conflict)) from None
        response.headers["Location"] = project_links(slug).project
        return _accepted(slug, handle)

    async def provisioning_run(slug: str) -> None:
        """404 before any stream starts if the project has no run."""
        status, _ = await context.progress.latest_run(project_workflow_id(slug))
        if status is None:
            raise HTTPException(HTTPStatus.NOT_FOUND, f"project {slug!r} has no run")

    @router.get(
        "/{slug}/events",
        response_class=EventSourceResponse,
        dependencies=[Depends(provisioning_run)],
        responses=NOT_FOUND,
        summary="Server-Sent Events of the progress of the project's latest operation",
        description="`event: progress` (data: a `Progress`) each time the progress of the latest run "
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
        "project is being created or updated.",
    )
    async def delete_project(slug: str, response: Response, delete_repository: bool = False) -> OperationAccepted:
        record, (latest, _) = await asyncio.gather(
            asyncio.to_thread(records.get_project, context.database_url, slug),
            context.progress.latest_run(project_workflow_id(slug)),
        )
        if record is None and latest is None:
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
        workflow_id = project_workflow_id(slug)
        return OperationAccepted(slug=slug, workflow_id=workflow_id, run_id=None, links=project_links(slug))

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
