"""The project record's activities: read the live project (an update's start), write the record (a create claims
the slug with its first write), mark it (teardown). The read side shared with the API and the CLI is
provisioner/db/projects.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, case, delete, func, or_, select, true
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
    ProjectIdentity,
    ProjectRecordUpdate,
    ProjectStatus,
    StoredProject,
)
from provisioner.db.engine import database_host, engine_for
from provisioner.db.models import Project
from provisioner.db.projects import get_project, project_view

# `ApplicationError.type` of a record the database can never accept (not in `contracts.ErrorType` yet).

# The optional text fields of a `ProjectRecordUpdate`: an empty value means "unknown", never "clear it".
_OPTIONAL_FIELDS = tuple(
    f.name for f in fields(ProjectRecordUpdate) if f.name not in ("slug", "status", "written_at", "parameters", "claim")
)
_SUMMARY_COLUMNS = (Project.slug, Project.status, Project.updated_at, Project.ready_at)
# The dialects whose INSERT has an upsert (ON CONFLICT ... DO UPDATE) with the same API.
_DIALECT_INSERTS: dict[str, Callable[[Any], postgresql.Insert | sqlite.Insert]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}


@dataclass(frozen=True)
class ProjectRecordSummary:
    """The result of `upsert_project_record`: the record's state right after the write."""

    slug: str
    status: ProjectStatus
    updated_at: datetime
    ready_at: datetime | None = None
    applied: bool = True  # False: the write was stale (older than the stored one) and changed nothing


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

    @activity.defn(name="read_project_record")
    def read_project_record(self, slug: str) -> StoredProject | None:
        """The live project an update starts from; None when there is none (never created, deleted, rolled back)."""
        view = get_project(self._database_url, slug)
        if view is None or not view.is_live:
            return None
        return StoredProject(slug=view.slug, status=view.status, identity=view.identity, commit_sha=view.commit_sha)

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
            if update.claim:
                _claim(connection, update)
            row = connection.execute(statement).one_or_none()
            if row is None:  # the conflict's WHERE found the stored write newer
                return _stale(connection.execute(_current(update.slug)).one())
    except (IntegrityError, DataError) as error:
        raise _invalid_record(update.slug, _database_reason(error)) from error
    return _summary(row)


def _claim(connection: Connection, update: ProjectRecordUpdate) -> None:
    """A create takes the slug: refused while a live project of another identity holds it; a free record (deleted,
    rolled back) goes, so nothing of the old project (its commit, revision, ready time) carries over."""
    query = select(Project.__table__).where(Project.slug == update.slug).with_for_update()
    stored = connection.execute(query).one_or_none()
    if stored is None:
        return
    live = project_view(stored)
    if not live.is_live:
        connection.execute(delete(Project).where(Project.slug == update.slug))
        return
    wanted = ProjectIdentity(update.display_name, update.template, update.environment, dict(update.parameters or {}))
    differences = live.differences(wanted)
    if differences:
        raise ApplicationError(
            f"project {update.slug!r} already exists ({stored.status}) with another "
            + ", ".join(differences)
            + ": change it with an update, or delete it first",
            {"fields": differences},
            type=ErrorType.PROJECT_CONFLICT.value,
            non_retryable=True,
        )


def update_project(
    engine: Engine, update: ProjectRecordUpdate, *, now: datetime | None = None
) -> ProjectRecordSummary | None:
    """Update the existing record of `update.slug` as `upsert_project` would; None, writing nothing, without one."""
    status = _checked_update(update)
    timestamp = now or datetime.now(UTC)
    values: dict[str, Any] = _provided(update)
    if "commit_sha" in values and "applied_revision" not in values:
        values["applied_revision"] = _revision_kept_for(values["commit_sha"])
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


def _provided(update: ProjectRecordUpdate) -> dict[str, Any]:
    """The columns `update` knows: its non-empty text fields, and the parameters as canonical JSON."""
    values: dict[str, Any] = {name: getattr(update, name) for name in _OPTIONAL_FIELDS if getattr(update, name)}
    if update.parameters is not None:
        values["parameters"] = json.dumps(update.parameters, sort_keys=True, separators=(",", ":"))
    return values


def _revision_kept_for(commit_sha: Any) -> ColumnElement[Any]:
    """A write of a commit without a revision keeps the stored revision only if it is of that same commit, else
    clears it (a CASE without ELSE is NULL): the record never pairs one commit with another commit's readiness."""
    return case((Project.commit_sha == commit_sha, Project.applied_revision))


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
    provided = _provided(update)
    values = {
        **provided,
        "slug": update.slug,
        "status": status.value,
        "created_at": now,
        "updated_at": now,
        "ready_at": now if status is ProjectStatus.READY else None,
        "status_written_at": update.written_at,
    }
    insert = _DIALECT_INSERTS.get(dialect)
    if insert is None:
        raise ValueError(f"unsupported database dialect {dialect!r}")
    statement = insert(Project).values(values)
    return statement.on_conflict_do_update(
        index_elements=[Project.slug],
        set_=_conflict_changes(statement.excluded, provided),
        where=_fresher(statement.excluded),
    ).returning(*_SUMMARY_COLUMNS)


def _conflict_changes(
    excluded: ReadOnlyColumnCollection[str, KeyedColumnElement[Any]], provided: dict[str, Any]
) -> dict[str, ColumnElement[Any]]:
    """The SET clause when the slug exists: only what the update knows; created_at is never touched.

    `excluded` is the row that would have been inserted (SQL's EXCLUDED).
    """
    changes: dict[str, ColumnElement[Any]] = {name: excluded[name] for name in ("status", "updated_at", *provided)}
    if "commit_sha" in provided and "applied_revision" not in provided:
        changes["applied_revision"] = _revision_kept_for(excluded["commit_sha"])
    # The first ready time wins: keep the stored one, else take this update's (NULL unless it is ready).
    changes["ready_at"] = func.coalesce(Project.ready_at, excluded["ready_at"])
    changes["status_written_at"] = func.coalesce(excluded["status_written_at"], Project.status_written_at)
    return changes


def _fresher(excluded: ReadOnlyColumnCollection[str, KeyedColumnElement[Any]]) -> ColumnElement[bool]:
    """The conflict's WHERE: apply unless the stored write is newer than this one."""
    incoming = excluded["status_written_at"]
    return or_(incoming.is_(None), Project.status_written_at.is_(None), Project.status_written_at <= incoming)


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
