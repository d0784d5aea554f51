"""The `projects` table: the durable record of every project the provisioner knows about.

The Alembic migrations under `migrations/versions` must create exactly this schema; a test compares the two.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Dialect, Index, Integer, MetaData, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names, so migrations can refer to them and autogenerate compares them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Column sizes. Slugs and namespaces are DNS-1123 labels (at most 63 characters).
SLUG_LENGTH = 63
STATUS_LENGTH = 32
DISPLAY_NAME_LENGTH = 200
TEMPLATE_LENGTH = 100
ENVIRONMENT_LENGTH = 63
NAMESPACE_LENGTH = 63
WORKFLOW_ID_LENGTH = 255
REPO_URL_LENGTH = 2048
COMMIT_SHA_LENGTH = 64  # a SHA-256 object id; SHA-1 ids are 40
APPLIED_REVISION_LENGTH = 300  # `<branch>@sha1:<40 hex>`; a branch name may be long
OPERATION_LENGTH = 16


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores `timestamptz`; SQLite has no time zones and hands back naive values, which are UTC by
    construction here, so they are re-labelled as such on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Project(Base):
    """One provisioned (or being provisioned) project, keyed by its slug.

    Fields the provisioning steps have not learnt yet are NULL. `status` holds a `contracts.ProjectStatus` value;
    it is a plain string column (validated by the application) so that adding a status needs no migration.
    """

    __tablename__ = "projects"
    __table_args__ = (Index("ix_projects_status", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    slug: Mapped[str] = mapped_column(String(SLUG_LENGTH), unique=True, nullable=False)
    display_name: Mapped[str | None] = mapped_column(String(DISPLAY_NAME_LENGTH))
    template: Mapped[str | None] = mapped_column(String(TEMPLATE_LENGTH))
    environment: Mapped[str | None] = mapped_column(String(ENVIRONMENT_LENGTH))
    status: Mapped[str] = mapped_column(String(STATUS_LENGTH), nullable=False)
    repo_url: Mapped[str | None] = mapped_column(String(REPO_URL_LENGTH))
    commit_sha: Mapped[str | None] = mapped_column(String(COMMIT_SHA_LENGTH))
    namespace: Mapped[str | None] = mapped_column(String(NAMESPACE_LENGTH))
    workflow_id: Mapped[str | None] = mapped_column(String(WORKFLOW_ID_LENGTH))
    last_message: Mapped[str | None] = mapped_column(Text)
    # The parameters, the template's defaults applied, as canonical JSON (sorted keys): equal text, equal values.
    parameters: Mapped[str | None] = mapped_column(Text)
    # The revision Flux reported Ready for (`<branch>@sha1:<commit_sha>`); cleared by a write of a new commit.
    applied_revision: Mapped[str | None] = mapped_column(String(APPLIED_REVISION_LENGTH))
    # The ProjectOperation (create, update, teardown) of the run that wrote the status.
    operation: Mapped[str | None] = mapped_column(String(OPERATION_LENGTH))
    # The application sets both timestamps explicitly; the server defaults cover rows written by hand.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())
    # When the project first became ready; never moved afterwards.
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The `written_at` (workflow time) of the write that set the status: older writes are stale and skipped.
    status_written_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"Project(slug={self.slug!r}, status={self.status!r})"
