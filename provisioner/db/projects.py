"""Reading the `projects` table: what the API, the CLI and the client's checks see of a project.

`get_project` and `list_projects` return plain dataclasses, never ORM objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select

from provisioner.contracts import FREE_RECORD_STATUSES, Parameters, ProjectIdentity, ProjectStatus
from provisioner.db.engine import session_factory
from provisioner.db.models import Project

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class ProjectView:
    """One project record as plain data. Unknown text fields are "", unknown URL/commit/ready time are None."""

    slug: str
    display_name: str
    template: str
    environment: str
    status: ProjectStatus
    namespace: str
    workflow_id: str
    repo_url: str | None
    commit_sha: str | None
    last_message: str
    created_at: datetime
    updated_at: datetime
    ready_at: datetime | None
    # What Flux reported Ready for: `<branch>@sha1:<commit_sha>`, never another commit's (None: not Ready for it).
    applied_revision: str | None = None
    operation: str = ""  # the operation (create, update, teardown) of the run that wrote the status
    parameters: Parameters | None = None  # the template's defaults applied; None: written before they were kept


    @property
    def is_live(self) -> bool:
        """A project holds the slug (anything but deleted or rolled back)."""
        return self.status not in FREE_RECORD_STATUSES

    @property
    def identity(self) -> ProjectIdentity:
        return ProjectIdentity(self.display_name, self.template, self.environment, dict(self.parameters or {}))

    def differences(self, wanted: ProjectIdentity) -> list[str]:
        """The fields in which `wanted` differs from this project; parameters only when the record keeps them
        (rows written before migration 0003 do not, and they cannot be told apart)."""
        differences = self.identity.differences(wanted)
        if self.parameters is None:
            differences = [name for name in differences if not name.startswith("parameters.")]
        return differences


def get_project(database_url: str, slug: str) -> ProjectView | None:
    with session_factory(database_url)() as session:
        project = session.scalars(select(Project).where(Project.slug == slug)).one_or_none()
        return None if project is None else project_view(project)


def list_projects(
    database_url: str,
    status: ProjectStatus | str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    offset: int = 0,
) -> list[ProjectView]:
    """Projects, newest first, optionally only those with `status`."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    if offset < 0:
        raise ValueError("offset must not be negative")
    query = select(Project).order_by(Project.created_at.desc(), Project.id.desc()).limit(limit).offset(offset)
    if status is not None:
        query = query.where(Project.status == ProjectStatus(status).value)
    with session_factory(database_url)() as session:
        return [project_view(project) for project in session.scalars(query)]


def stored_parameters(stored: str | None) -> Parameters | None:
    return None if stored is None else dict(json.loads(stored))


def project_view(project: Project | Row[Any]) -> ProjectView:
    """The plain view of a row, read through the ORM or as a Core row (the same attribute names)."""
    return ProjectView(
        slug=project.slug,
        display_name=project.display_name or "",
        template=project.template or "",
        environment=project.environment or "",
        status=ProjectStatus(project.status),
        namespace=project.namespace or "",
        workflow_id=project.workflow_id or "",
        repo_url=project.repo_url,
        commit_sha=project.commit_sha,
        last_message=project.last_message or "",
        created_at=project.created_at,
        updated_at=project.updated_at,
        ready_at=project.ready_at,
        applied_revision=project.applied_revision,
        operation=project.operation or "",
        parameters=stored_parameters(project.parameters),
    )
