"""The project record: the `upsert_project_record` activity and the read helpers over the `projects` table.

The HTTP API and the CLI read projects through `get_project` / `list_projects`, which return plain
dataclasses, never ORM objects.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, or_, select, true
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.base import ReadOnlyColumnCollection
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import KeyedColumnElement
from temporalio import activity
from temporalio.exceptions import ApplicationError

from provisioner.contracts import (
    SLUG_MAX_LENGTH,
    SLUG_MIN_LENGTH,
    SLUG_PATTERN,
    ErrorType,
    ProjectRecordUpdate,
    ProjectStatus,
)
from provisioner.db.engine import database_host, engine_for, session_factory
from provisioner.db.models import Project

# `ApplicationError.type` of a record the database can never accept (not in `contracts.ErrorType` yet).

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

# The optional fields of a `ProjectRecordUpdate`: an empty value means "unknown", never "clear it".
_OPTIONAL_FIELDS = tuple(f.name for f in fields(ProjectRecordUpdate) if f.name not in ("slug", "status", "written_at"))
_SUMMARY_COLUMNS = (Project.slug, Project.status, Project.updated_at, Project.ready_at)


@dataclass(frozen=True)
class ProjectRecordSummary:
    """The result of `upsert_project_record`: the record's state right after the write."""

    slug: str
    status: ProjectStatus
    updated_at: datetime
    ready_at: datetime | None = None
    applied: bool = True  # False: the write was stale (older than the stored one) and changed nothing


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


class RecordActivities:
    """Activities that write the project record. Thread-safe: the engine and its pool are shared."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        # Resolved on first use so that constructing the worker needs no database; engine_for caches per URL.
        if self._engine is None:
            self._engine = engine_for(self._database_url)
        return self._engine

    @activity.defn(name="upsert_project_record")
    def upsert_project_record(self, update: ProjectRecordUpdate) -> ProjectRecordSummary:
        """Create or update the record (provisioning). Teardown statuses go through `mark_project_record`."""
        summary = upsert_project(self.engine, update)
        self._log(summary)
        return summary

    @activity.defn(name="mark_project_record")
    def mark_project_record(self, update: ProjectRecordUpdate) -> ProjectRecordSummary | None:
        """Update an existing record only (teardown): None, writing nothing, when the project was never recorded.

        Tearing down an unknown project must not leave behind a row holding nothing but a slug and a status.
        """
        summary = update_project(self.engine, update)
        if summary is None:
            activity.logger.info("No record of project %s: nothing to mark %s", update.slug, update.status)
            return None
        self._log(summary)
        return summary

    def _log(self, summary: ProjectRecordSummary) -> None:
        if not summary.applied:
            activity.logger.info("Skipped a stale write to project record %s: it is %s", summary.slug, summary.status)
            return
        activity.logger.info(
            "Project record %s is %s (database host %s)",
            summary.slug,
            summary.status.value,
            database_host(self._database_url),
        )


def upsert_project(engine: Engine, update: ProjectRecordUpdate, *, now: datetime | None = None) -> ProjectRecordSummary:
    """Insert or update the record of `update.slug` in one race-free statement.

    Empty/None fields of the update keep the stored values; `created_at` is kept, `updated_at` moves to `now`,
    and `ready_at` is set the first time the status is `ready`. A connection failure propagates unchanged (the
    caller retries); a record the database rejects raises a non-retryable `ApplicationError`.
    """
    status = _checked_update(update)
    timestamp = now or datetime.now(UTC)
    statement = _upsert_statement(engine.dialect.name, update, status, timestamp)
    try:
        with engine.begin() as connection:
            row = connection.execute(statement).one_or_none()
            if row is None:  # the conflict's WHERE found the stored write newer
                return _stale(connection.execute(_current(update.slug)).one())
    except (IntegrityError, DataError) as error:
        raise _invalid_record(update.slug, _database_reason(error)) from error
    return _summary(row)


def update_project(
    engine: Engine, update: ProjectRecordUpdate, *, now: datetime | None = None
) -> ProjectRecordSummary | None:
    """Update the existing record of `update.slug` as `upsert_project` would; None, writing nothing, without one."""
    status = _checked_update(update)
    timestamp = now or datetime.now(UTC)
    values: dict[str, Any] = {name: getattr(update, name) for name in _OPTIONAL_FIELDS if getattr(update, name)}
    values.update(status=status.value, updated_at=timestamp)
    if status is ProjectStatus.READY:
        values["ready_at"] = func.coalesce(Project.ready_at, timestamp)
    if update.written_at is not None:
        values["status_written_at"] = update.written_at
    statement = (
        sql_update(Project)
        .where(Project.slug == update.slug, _not_newer_than(update.written_at))
        .values(values)
        .returning(*_SUMMARY_COLUMNS)
    )
    try:
        with engine.begin() as connection:
            row = connection.execute(statement).one_or_none()
            if row is None:
                current = connection.execute(_current(update.slug)).one_or_none()
                return None if current is None else _stale(current)
    except (IntegrityError, DataError) as error:
        raise _invalid_record(update.slug, _database_reason(error)) from error
    return _summary(row)


def _not_newer_than(written_at: datetime | None) -> ColumnElement[bool]:
    """The stored write is not newer than one made at `written_at` (unordered writes always apply)."""
    if written_at is None:
        return true()
    return or_(Project.status_written_at.is_(None), Project.status_written_at <= written_at)


def _current(slug: str) -> Any:
    return select(*_SUMMARY_COLUMNS).where(Project.slug == slug)


def _summary(row: Any) -> ProjectRecordSummary:
    return ProjectRecordSummary(
        slug=row.slug, status=ProjectStatus(row.status), updated_at=row.updated_at, ready_at=row.ready_at
    )


def _stale(row: Any) -> ProjectRecordSummary:
    return replace(_summary(row), applied=False)


def get_project(database_url: str, slug: str) -> ProjectView | None:
    with session_factory(database_url)() as session:
        project = session.scalars(select(Project).where(Project.slug == slug)).one_or_none()
        return None if project is None else _view(project)


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
        return [_view(project) for project in session.scalars(query)]


def _checked_update(update: ProjectRecordUpdate) -> ProjectStatus:
    """Reject, before touching the database, what no retry could ever store."""
    slug = update.slug
    if not (isinstance(slug, str) and SLUG_MIN_LENGTH <= len(slug) <= SLUG_MAX_LENGTH and SLUG_PATTERN.fullmatch(slug)):
        raise _invalid_record(str(slug)[:SLUG_MAX_LENGTH], "the slug is not a valid project slug")
    try:
        status = ProjectStatus(update.status)
    except ValueError:
        raise _invalid_record(slug, f"unknown status {str(update.status)[:40]!r}") from None
    for name in _OPTIONAL_FIELDS:
        value = getattr(update, name)
        if value is not None and not isinstance(value, str):
            raise _invalid_record(slug, f"{name} must be a string")
        max_length = getattr(Project.__table__.c[name].type, "length", None)
        if value and max_length is not None and len(value) > max_length:
            raise _invalid_record(slug, f"{name} is longer than {max_length} characters")
    return status


def _upsert_statement(dialect: str, update: ProjectRecordUpdate, status: ProjectStatus, now: datetime) -> Insert:
    provided = {name: getattr(update, name) for name in _OPTIONAL_FIELDS if getattr(update, name)}
    values = {
        **provided,
        "slug": update.slug,
        "status": status.value,
        "created_at": now,
        "updated_at": now,
        "ready_at": now if status is ProjectStatus.READY else None,
        "status_written_at": update.written_at,
    }
    if dialect == "postgresql":
        pg_statement = postgresql.insert(Project).values(values)
        return pg_statement.on_conflict_do_update(
            index_elements=[Project.slug],
            set_=_conflict_changes(pg_statement.excluded, provided),
            where=_fresher(pg_statement.excluded),
        ).returning(*_SUMMARY_COLUMNS)
    if dialect == "sqlite":
        sqlite_statement = sqlite.insert(Project).values(values)
        return sqlite_statement.on_conflict_do_update(
            index_elements=[Project.slug],
            set_=_conflict_changes(sqlite_statement.excluded, provided),
            where=_fresher(sqlite_statement.excluded),
        ).returning(*_SUMMARY_COLUMNS)
    raise ValueError(f"unsupported database dialect {dialect!r}")


def _conflict_changes(
    excluded: ReadOnlyColumnCollection[str, KeyedColumnElement[Any]], provided: dict[str, str]
) -> dict[str, ColumnElement[Any]]:
    """The SET clause when the slug exists: only what the update knows; created_at is never touched.

    `excluded` is the row that would have been inserted (SQL's EXCLUDED).
    """
    changes: dict[str, ColumnElement[Any]] = {name: excluded[name] for name in ("status", "updated_at", *provided)}
    # The first ready time wins: keep the stored one, else take this update's (NULL unless it is ready).
    changes["ready_at"] = func.coalesce(Project.ready_at, excluded["ready_at"])
    changes["status_written_at"] = func.coalesce(excluded["status_written_at"], Project.status_written_at)
    return changes


def _fresher(excluded: ReadOnlyColumnCollection[str, KeyedColumnElement[Any]]) -> ColumnElement[bool]:
    """The conflict's WHERE: apply unless the stored write is newer than this one."""
    incoming = excluded["status_written_at"]
    return or_(incoming.is_(None), Project.status_written_at.is_(None), Project.status_written_at <= incoming)


def _view(project: Project) -> ProjectView:
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
    )


def _database_reason(error: IntegrityError | DataError) -> str:
    # The driver's first line names the problem ("value too long for type ..."); the rest repeats the SQL.
    original = str(error.orig).strip().splitlines()
    return original[0] if original else type(error.orig).__name__


def _invalid_record(slug: str, reason: str) -> ApplicationError:
    return ApplicationError(
        f"the record of project {slug!r} cannot be stored: {reason}",
        type=ErrorType.INVALID_RECORD.value,
        non_retryable=True,
    )
