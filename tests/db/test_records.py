"""The project record: upsert semantics, idempotency, concurrency, error mapping, the activity and the readers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_mock_engine, text
from sqlalchemy.exc import OperationalError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.records import (
    ProjectRecordSummary,
    RecordActivities,
    update_project,
    upsert_project,
)
from provisioner.contracts import ErrorType, Parameters, ProjectIdentity, ProjectRecordUpdate, ProjectStatus
from provisioner.db import engine_for, migrate
from provisioner.db.engine import ALEMBIC_INI
from provisioner.db.projects import get_project, list_projects

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def persist_update(slug: str = "billing-api") -> ProjectRecordUpdate:
    """What the workflow writes once the repository exists."""
    return ProjectRecordUpdate(
        slug=slug,
        status=ProjectStatus.PROVISIONING,
        display_name="Billing API",
        template="web-service",
        environment="development",
        namespace=slug,
        workflow_id=f"project-{slug}",
        repo_url=f"http://git.example/{slug}.git",
        commit_sha="a" * 40,
        operation="create",
        last_message="Repository pushed",
        parameters={"owner": "payments", "replicas": 2},
    )


def finalize_update(status: ProjectStatus, message: str, slug: str = "billing-api") -> ProjectRecordUpdate:
    """What the workflow writes at the end: only the status and a message."""
    return ProjectRecordUpdate(slug=slug, status=status, last_message=message)


def row_count(database_url: str, slug: str) -> int:
    with engine_for(database_url).connect() as connection:
        count: int = connection.execute(
            text("SELECT count(*) FROM projects WHERE slug = :slug"), {"slug": slug}
        ).scalar_one()
        return count


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# ---- Upsert semantics (PostgreSQL) ---------------------------------------------------------------------------


def test_the_first_upsert_inserts_the_full_record(postgres_url: str) -> None:
    summary = upsert_project(engine_for(postgres_url), persist_update(), now=T0)

    assert summary == ProjectRecordSummary(
        slug="billing-api", status=ProjectStatus.PROVISIONING, updated_at=T0, ready_at=None
    )
    project = get_project(postgres_url, "billing-api")
    assert project is not None
    assert asdict(project) == {
        "slug": "billing-api",
        "display_name": "Billing API",
        "template": "web-service",
        "environment": "development",
        "status": ProjectStatus.PROVISIONING,
        "namespace": "billing-api",
        "workflow_id": "project-billing-api",
        "repo_url": "http://git.example/billing-api.git",
        "commit_sha": "a" * 40,
        "last_message": "Repository pushed",
        "created_at": T0,
        "updated_at": T0,
        "ready_at": None,
        "applied_revision": None,
        "operation": "create",
        "parameters": {"owner": "payments", "replicas": 2},
    }
    assert project.created_at.tzinfo is not None and project.created_at.utcoffset() == timedelta(0)


def test_a_partial_update_keeps_what_it_does_not_know(postgres_url: str) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, persist_update(), now=T0)

    upsert_project(engine, finalize_update(ProjectStatus.NOT_READY, "Flux did not report Ready"), now=T0 + timedelta(1))

    project = get_project(postgres_url, "billing-api")
    assert project is not None
    assert project.status is ProjectStatus.NOT_READY
    assert project.last_message == "Flux did not report Ready"
    assert (project.repo_url, project.commit_sha) == ("http://git.example/billing-api.git", "a" * 40)
    assert (project.display_name, project.template, project.namespace) == ("Billing API", "web-service", "billing-api")
    assert project.created_at == T0
    assert project.updated_at == T0 + timedelta(1)
    assert project.ready_at is None


def test_an_update_overwrites_the_fields_it_provides(postgres_url: str) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, persist_update(), now=T0)

    upsert_project(engine, replace(persist_update(), commit_sha="b" * 40, display_name="Billing"), now=T0)

    project = get_project(postgres_url, "billing-api")
    assert project is not None
    assert (project.commit_sha, project.display_name) == ("b" * 40, "Billing")


def test_ready_at_is_set_once_when_the_project_first_becomes_ready(postgres_url: str) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, persist_update(), now=T0)
    became_ready = T0 + timedelta(minutes=2)

    first = upsert_project(engine, finalize_update(ProjectStatus.READY, "Ready"), now=became_ready)
    upsert_project(engine, finalize_update(ProjectStatus.FAILED, "broken"), now=became_ready + timedelta(1))
    again = upsert_project(engine, finalize_update(ProjectStatus.READY, "Ready again"), now=became_ready + timedelta(2))

    assert first.ready_at == became_ready
    assert again.ready_at == became_ready
    assert again.updated_at == became_ready + timedelta(2)


def test_a_project_created_ready_gets_ready_at_on_insert(postgres_url: str) -> None:
    summary = upsert_project(engine_for(postgres_url), replace(persist_update(), status=ProjectStatus.READY), now=T0)
    assert summary.ready_at == T0


def test_the_same_upsert_twice_leaves_one_identical_row(postgres_url: str) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, persist_update(), now=T0)
    first = get_project(postgres_url, "billing-api")

    upsert_project(engine, persist_update(), now=T0 + timedelta(seconds=5))
    second = get_project(postgres_url, "billing-api")

    assert row_count(postgres_url, "billing-api") == 1
    assert first is not None and second is not None
    assert replace(second, updated_at=first.updated_at) == first
    assert second.updated_at == T0 + timedelta(seconds=5)


def test_concurrent_upserts_of_one_slug_end_in_one_row(postgres_url: str) -> None:
    workers = 8
    start = threading.Barrier(workers)
    statuses = [ProjectStatus.PROVISIONING, ProjectStatus.READY]

    def upsert_when_all_ready(worker: int) -> ProjectRecordSummary:
        start.wait()
        summary = None
        for round_ in range(5):
            status = statuses[(worker + round_) % 2]
            summary = upsert_project(engine_for(postgres_url), replace(persist_update(), status=status))
        assert summary is not None
        return summary

    with ThreadPoolExecutor(max_workers=workers) as pool:
        summaries = list(pool.map(upsert_when_all_ready, range(workers), timeout=60))

    assert {summary.slug for summary in summaries} == {"billing-api"}
    assert row_count(postgres_url, "billing-api") == 1
    project = get_project(postgres_url, "billing-api")
    assert project is not None and project.ready_at is not None


# ---- Errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["update", "upsert"])
@pytest.mark.parametrize(
    ("update", "message"),
    [
        (
            ProjectRecordUpdate(slug="Not A Slug", status=ProjectStatus.PENDING),
            "the record of project 'Not A Slug' cannot be stored: the slug is not a valid project slug",
        ),
        (
            ProjectRecordUpdate(slug="ab", status=ProjectStatus.PENDING),
            "the record of project 'ab' cannot be stored: the slug is not a valid project slug",
        ),
        (  # the slug named in the message is cut to the longest valid length
            ProjectRecordUpdate(slug="a" * 41 + "-tail", status=ProjectStatus.PENDING),
            f"the record of project '{'a' * 40}' cannot be stored: the slug is not a valid project slug",
        ),
        (
            ProjectRecordUpdate(slug="billing-api", status="exploded"),  # type: ignore[arg-type]
            "the record of project 'billing-api' cannot be stored: unknown status 'exploded'",
        ),
        (  # an unknown status is quoted cut to 40 characters
            ProjectRecordUpdate(slug="billing-api", status="s" * 40 + "-tail"),  # type: ignore[arg-type]
            f"the record of project 'billing-api' cannot be stored: unknown status '{'s' * 40}'",
        ),
        (
            replace(persist_update(), display_name=5),  # type: ignore[arg-type]
            "the record of project 'billing-api' cannot be stored: display_name must be a string",
        ),
        (
            replace(persist_update(), commit_sha="c" * 65),
            "the record of project 'billing-api' cannot be stored: commit_sha is longer than 64 characters",
        ),
        (
            replace(persist_update(), display_name="d" * 201),
            "the record of project 'billing-api' cannot be stored: display_name is longer than 200 characters",
        ),
    ],
    ids=[
        "invalid-slug",
        "too-short-slug",
        "too-long-slug",
        "unknown-status",
        "long-unknown-status",
        "non-string-field",
        "too-long-commit",
        "too-long-display-name",
    ],
)
def test_a_record_that_can_never_be_stored_is_a_permanent_failure(
    postgres_url: str, update: ProjectRecordUpdate, message: str, path: str
) -> None:
    with pytest.raises(ApplicationError) as caught:
        (update_project if path == "update" else upsert_project)(engine_for(postgres_url), update)

    assert caught.value.message == message
    assert caught.value.type == ErrorType.INVALID_RECORD.value
    assert caught.value.non_retryable
    with engine_for(postgres_url).connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM projects")).scalar_one() == 0


def test_values_at_their_length_limits_are_stored(postgres_url: str) -> None:
    engine = engine_for(postgres_url)
    shortest, longest = "abc", "a" * 40
    at_limits = replace(persist_update(longest), display_name="d" * 200, commit_sha="c" * 64)

    upsert_project(engine, persist_update(shortest), now=T0)
    upsert_project(engine, at_limits, now=T0)

    assert {p.slug for p in list_projects(postgres_url)} == {shortest, longest}
    project = get_project(postgres_url, longest)
    assert project is not None and (project.display_name, project.commit_sha) == ("d" * 200, "c" * 64)


@pytest.mark.parametrize("path", ["update", "upsert"])
def test_the_parameters_are_stored_as_canonical_json(postgres_url: str, path: str) -> None:
    """Sorted keys, no spaces: equal parameters are equal text."""
    engine = engine_for(postgres_url)
    upsert_project(engine, replace(persist_update(), parameters=None), now=T0)
    parameters: Parameters = {"replicas": 2, "owner": "payments", "debug": True, "ratio": 0.5}

    (update_project if path == "update" else upsert_project)(
        engine, replace(finalize_update(ProjectStatus.READY, "Ready"), parameters=parameters), now=T0 + timedelta(1)
    )

    with engine.connect() as connection:
        stored = connection.execute(text("SELECT parameters FROM projects")).scalar_one()
    assert stored == '{"debug":true,"owner":"payments","ratio":0.5,"replicas":2}'


@pytest.mark.parametrize("path", ["update", "upsert"])
def test_a_value_the_database_rejects_is_a_permanent_failure_naming_the_project_and_the_reason(
    postgres_url: str, path: str
) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, persist_update(), now=T0)
    rejected = finalize_update(ProjectStatus.FAILED, "a NUL \x00 byte")

    with pytest.raises(ApplicationError) as caught:
        (update_project if path == "update" else upsert_project)(engine, rejected, now=T0 + timedelta(1))

    assert caught.value.message == (
        "the record of project 'billing-api' cannot be stored: PostgreSQL text fields cannot contain NUL (0x00) bytes"
    )
    assert caught.value.type == ErrorType.INVALID_RECORD.value and caught.value.non_retryable
    project = get_project(postgres_url, "billing-api")
    assert project is not None and (project.status, project.updated_at) == (ProjectStatus.PROVISIONING, T0)


def test_a_database_of_another_dialect_is_refused_before_any_write() -> None:
    engine = create_mock_engine("mysql://", lambda *_args, **_kwargs: None)

    with pytest.raises(ValueError, match=r"^unsupported database dialect 'mysql'$"):
        upsert_project(engine, persist_update())  # type: ignore[arg-type]


def test_a_database_constraint_violation_is_a_permanent_failure(fresh_postgres_url: str) -> None:
    migrate(fresh_postgres_url)
    with engine_for(fresh_postgres_url).begin() as connection:
        # A rule only the database knows, as a later migration might add one.
        connection.execute(text("ALTER TABLE projects ADD CONSTRAINT no_prod CHECK (environment <> 'production')"))

    with pytest.raises(ApplicationError) as caught:
        upsert_project(engine_for(fresh_postgres_url), replace(persist_update(), environment="production"))

    assert caught.value.type == ErrorType.INVALID_RECORD.value
    assert caught.value.non_retryable
    assert "no_prod" in caught.value.message


def test_an_unreachable_database_raises_a_retryable_error_without_the_password() -> None:
    url = f"postgresql+psycopg://provisioner:s3cret-pw@127.0.0.1:{closed_port()}/projects"
    activities = RecordActivities(url)

    with pytest.raises(OperationalError) as caught:
        ActivityEnvironment().run(activities.upsert_project_record, persist_update())

    assert not isinstance(caught.value, ApplicationError)
    assert "s3cret-pw" not in str(caught.value)
    assert "s3cret-pw" not in repr(caught.value)


# ---- The activity ----------------------------------------------------------------------------------------------


def test_the_activity_upserts_and_returns_a_serializable_summary(postgres_url: str) -> None:
    activities = RecordActivities(postgres_url)
    environment = ActivityEnvironment()
    before = datetime.now(UTC)

    environment.run(activities.upsert_project_record, persist_update())
    summary = environment.run(activities.upsert_project_record, finalize_update(ProjectStatus.READY, "Ready"))

    assert (summary.slug, summary.status) == ("billing-api", ProjectStatus.READY)
    assert before <= summary.updated_at <= datetime.now(UTC)
    assert summary.ready_at == summary.updated_at
    project = get_project(postgres_url, "billing-api")
    assert project is not None and project.commit_sha == "a" * 40 and project.last_message == "Ready"
    # The result crosses the Temporal boundary through the pydantic data converter.
    converter = pydantic_data_converter.payload_converter
    [decoded] = converter.from_payloads(converter.to_payloads([summary]), [ProjectRecordSummary])
    assert decoded == summary


# ---- Readers ---------------------------------------------------------------------------------------------------


def test_get_project_of_an_unknown_slug_is_none(postgres_url: str) -> None:
    assert get_project(postgres_url, "nobody-here") is None


def test_list_projects_pages_newest_first_and_filters_by_status(postgres_url: str) -> None:
    engine = engine_for(postgres_url)
    for minute, slug in enumerate(["alpha", "bravo", "charlie", "delta"]):
        upsert_project(engine, persist_update(slug), now=T0 + timedelta(minutes=minute))
    upsert_project(engine, finalize_update(ProjectStatus.READY, "Ready", slug="bravo"), now=T0 + timedelta(hours=1))

    assert [p.slug for p in list_projects(postgres_url)] == ["delta", "charlie", "bravo", "alpha"]
    assert [p.slug for p in list_projects(postgres_url, limit=2, offset=1)] == ["charlie", "bravo"]
    assert [p.slug for p in list_projects(postgres_url, status=ProjectStatus.READY)] == ["bravo"]
    assert [p.slug for p in list_projects(postgres_url, status="provisioning", offset=2)] == ["alpha"]
    with pytest.raises(ValueError):
        list_projects(postgres_url, limit=0)
    with pytest.raises(ValueError):
        list_projects(postgres_url, status="exploded")


# ---- SQLite (the demo default) ---------------------------------------------------------------------------------


def test_the_sqlite_path_supports_the_same_record_semantics(sqlite_url: str) -> None:
    migrate(sqlite_url)
    engine = engine_for(sqlite_url)

    upsert_project(engine, persist_update(), now=T0)
    upsert_project(engine, persist_update(), now=T0)
    ready = upsert_project(engine, finalize_update(ProjectStatus.READY, "Ready"), now=T0 + timedelta(1))
    upsert_project(engine, finalize_update(ProjectStatus.READY, "Still ready"), now=T0 + timedelta(2))

    assert ready.ready_at == T0 + timedelta(1)
    assert row_count(sqlite_url, "billing-api") == 1
    [project] = list_projects(sqlite_url, status=ProjectStatus.READY)
    assert (project.repo_url, project.commit_sha) == ("http://git.example/billing-api.git", "a" * 40)
    assert (project.created_at, project.updated_at, project.ready_at) == (T0, T0 + timedelta(2), T0 + timedelta(1))
    assert project.last_message == "Still ready"


def test_concurrent_sqlite_activities_end_in_one_row(sqlite_url: str) -> None:
    migrate(sqlite_url)
    activities = RecordActivities(sqlite_url)
    start = threading.Barrier(6)

    def run_activity(_: int) -> ProjectRecordSummary:
        start.wait()
        return ActivityEnvironment().run(activities.upsert_project_record, persist_update())

    with ThreadPoolExecutor(max_workers=6) as pool:
        summaries = list(pool.map(run_activity, range(6), timeout=60))

    # Every activity wrote (none was refused or skipped as stale), and they all wrote the same one row.
    assert [(s.slug, s.status, s.applied) for s in summaries] == [("billing-api", ProjectStatus.PROVISIONING, True)] * 6
    assert row_count(sqlite_url, "billing-api") == 1
    project = get_project(sqlite_url, "billing-api")
    assert project is not None
    assert (project.status, project.commit_sha, project.parameters) == (
        ProjectStatus.PROVISIONING,
        "a" * 40,
        {"owner": "payments", "replicas": 2},
    )
    # The row was created by one of these writes and last updated by one (each takes its time before its
    # transaction, so the order of the times need not be the order of the commits).
    written = {summary.updated_at for summary in summaries}
    assert project.updated_at in written and project.created_at in written


# ---- Ordered writes: a late, stale attempt changes nothing ----------------------------------------------------


@pytest.mark.parametrize("database", ["postgres_url", "sqlite_url"])
def test_a_write_decided_earlier_than_the_stored_one_is_skipped(database: str, request: pytest.FixtureRequest) -> None:
    """A timed-out attempt landing after its retry and the final write must not move the status back."""
    database_url: str = request.getfixturevalue(database)
    migrate(database_url)
    engine = engine_for(database_url)
    decided = T0 - timedelta(minutes=5)
    provisioning = replace(persist_update(), written_at=decided)
    upsert_project(engine, provisioning, now=T0)
    upsert_project(
        engine, replace(finalize_update(ProjectStatus.READY, "Ready"), written_at=decided + timedelta(1)), now=T0
    )

    late = upsert_project(engine, replace(provisioning, commit_sha="b" * 40), now=T0 + timedelta(minutes=1))

    assert late.applied is False
    assert late.status is ProjectStatus.READY
    project = get_project(database_url, "billing-api")
    assert project is not None
    assert (project.status, project.last_message, project.commit_sha) == (ProjectStatus.READY, "Ready", "a" * 40)
    assert project.updated_at == T0


@pytest.mark.parametrize("database", ["postgres_url", "sqlite_url"])
def test_writes_decided_at_the_same_time_or_later_apply(database: str, request: pytest.FixtureRequest) -> None:
    database_url: str = request.getfixturevalue(database)
    migrate(database_url)
    engine = engine_for(database_url)
    upsert_project(engine, replace(persist_update(), written_at=T0), now=T0)

    retried = upsert_project(engine, replace(persist_update(), written_at=T0, last_message="again"), now=T0)
    later = upsert_project(
        engine, replace(finalize_update(ProjectStatus.NOT_READY, "not ready"), written_at=T0 + timedelta(1)), now=T0
    )
    unordered = upsert_project(engine, finalize_update(ProjectStatus.READY, "Ready"), now=T0)

    assert (retried.applied, later.applied, unordered.applied) == (True, True, True)
    project = get_project(database_url, "billing-api")
    assert project is not None
    assert (project.status, project.last_message) == (ProjectStatus.READY, "Ready")
    # An unordered write keeps the stored order, so a later stale write is still recognised.
    stale = upsert_project(engine, replace(finalize_update(ProjectStatus.FAILED, "x"), written_at=T0), now=T0)
    assert stale.applied is False


def test_a_stale_update_of_an_existing_record_is_skipped(postgres_url: str) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, replace(persist_update(), written_at=T0), now=T0)
    deleted = ProjectRecordUpdate(slug="billing-api", status=ProjectStatus.DELETED, last_message="gone")
    update_project(engine, replace(deleted, written_at=T0 + timedelta(2)), now=T0)

    deleting = ProjectRecordUpdate(slug="billing-api", status=ProjectStatus.DELETING, last_message="deleting")
    late = update_project(engine, replace(deleting, written_at=T0 + timedelta(1)), now=T0)

    assert late is not None and late.applied is False and late.status is ProjectStatus.DELETED
    assert update_project(engine, replace(deleting, slug="unknown", written_at=T0), now=T0) is None
    project = get_project(postgres_url, "billing-api")
    assert project is not None and project.status is ProjectStatus.DELETED


def test_an_update_sets_ready_at_once_when_the_project_first_becomes_ready(postgres_url: str) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, persist_update(), now=T0)

    not_ready = update_project(engine, finalize_update(ProjectStatus.NOT_READY, "not yet"), now=T0 + timedelta(1))
    first = update_project(engine, finalize_update(ProjectStatus.READY, "Ready"), now=T0 + timedelta(2))
    failed = update_project(engine, finalize_update(ProjectStatus.FAILED, "broken"), now=T0 + timedelta(3))
    again = update_project(engine, finalize_update(ProjectStatus.READY, "Ready again"), now=T0 + timedelta(4))

    assert not_ready is not None and not_ready.ready_at is None
    assert first is not None and first.ready_at == T0 + timedelta(2)
    assert failed is not None and failed.ready_at == T0 + timedelta(2)
    assert again is not None and (again.ready_at, again.updated_at) == (T0 + timedelta(2), T0 + timedelta(4))


def test_an_update_changes_only_the_record_of_its_slug(postgres_url: str) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, replace(persist_update("alpha"), written_at=T0), now=T0)
    upsert_project(engine, replace(persist_update("bravo"), written_at=T0), now=T0)

    update_project(
        engine,
        replace(finalize_update(ProjectStatus.FAILED, "broken", slug="alpha"), written_at=T0 + timedelta(1)),
        now=T0 + timedelta(1),
    )

    untouched = get_project(postgres_url, "bravo")
    assert untouched is not None
    assert (untouched.status, untouched.last_message, untouched.updated_at) == (
        ProjectStatus.PROVISIONING,
        "Repository pushed",
        T0,
    )


def test_an_update_decided_at_the_same_time_as_the_stored_write_applies(postgres_url: str) -> None:
    """A retry of the write that landed carries its time: it must apply, not be taken for a stale one."""
    engine = engine_for(postgres_url)
    upsert_project(engine, replace(persist_update(), written_at=T0), now=T0)

    retried = update_project(
        engine, replace(finalize_update(ProjectStatus.DELETING, "Deleting"), written_at=T0), now=T0 + timedelta(1)
    )

    assert retried is not None and (retried.applied, retried.status) == (True, ProjectStatus.DELETING)
    project = get_project(postgres_url, "billing-api")
    assert project is not None and (project.status, project.last_message) == (ProjectStatus.DELETING, "Deleting")


@pytest.fixture
def local_time_far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The worker's local time zone is UTC+5 (a POSIX TZ: no tz database needed); the database's stays UTC."""
    monkeypatch.setenv("TZ", "XYZ-5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("path", ["update", "upsert"])
@pytest.mark.usefixtures("local_time_far_from_utc")
def test_a_write_without_a_given_time_is_stamped_with_the_current_utc_time(postgres_url: str, path: str) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, persist_update(), now=T0)
    before = datetime.now(UTC)

    summary = (update_project if path == "update" else upsert_project)(
        engine, finalize_update(ProjectStatus.READY, "Ready")
    )

    assert summary is not None
    assert before <= summary.updated_at <= datetime.now(UTC)
    assert summary.ready_at == summary.updated_at


def store_a_record_as_written_before_migration_0002(database_url: str) -> None:
    """A database at revision 0001 with the row its code wrote, then upgraded to head: `status_written_at` NULL."""
    engine = engine_for(database_url)
    config = Config(str(ALEMBIC_INI))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            text(
                "INSERT INTO projects (slug, display_name, template, environment, namespace, status, last_message) "
                "VALUES ('billing-api', 'Billing API', 'web-service', 'development', 'billing-api', 'ready', 'Ready')"
            )
        )
    migrate(database_url)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT status, status_written_at FROM projects")).all()
    assert [tuple(row) for row in stored] == [("ready", None)]


@pytest.mark.parametrize("path", ["update", "upsert"])
def test_a_record_written_before_migration_0002_accepts_ordered_writes(fresh_postgres_url: str, path: str) -> None:
    """Both freshness guards treat a stored NULL `status_written_at` as "older than any ordered write": the first
    ordered write applies, and from then on the order holds."""
    store_a_record_as_written_before_migration_0002(fresh_postgres_url)
    engine = engine_for(fresh_postgres_url)

    def write(status: ProjectStatus, message: str, written_at: datetime) -> ProjectRecordSummary:
        update = replace(finalize_update(status, message), written_at=written_at)
        summary = (update_project if path == "update" else upsert_project)(engine, update, now=written_at)
        assert summary is not None
        return summary

    first = write(ProjectStatus.UPDATING, "Updating", T0 + timedelta(minutes=1))
    stale = write(ProjectStatus.FAILED, "A late attempt", T0)
    later = write(ProjectStatus.NOT_READY, "Flux did not report Ready", T0 + timedelta(minutes=2))

    assert (first.applied, first.status) == (True, ProjectStatus.UPDATING)
    assert (stale.applied, stale.status) == (False, ProjectStatus.UPDATING)
    assert (later.applied, later.status) == (True, ProjectStatus.NOT_READY)
    project = get_project(fresh_postgres_url, "billing-api")
    assert project is not None
    assert (project.status, project.last_message, project.updated_at) == (
        ProjectStatus.NOT_READY,
        "Flux did not report Ready",
        T0 + timedelta(minutes=2),
    )
    with engine.connect() as connection:
        assert connection.execute(text("SELECT status_written_at FROM projects")).scalar_one() == T0 + timedelta(
            minutes=2
        )


# ---- A create claims the slug; the revision never describes another commit ------------------------------------


def claim(slug: str = "billing-api", **changes: Any) -> ProjectRecordUpdate:
    """A create's first write: the identity, no repository or commit yet."""
    update = replace(persist_update(slug), repo_url=None, commit_sha=None, claim=True)
    return replace(update, **changes)


def test_a_claim_of_a_live_project_with_another_identity_is_refused_naming_the_fields(postgres_url: str) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, persist_update(), now=T0)
    other = claim(environment="production", parameters={"owner": "payments", "replicas": 3})

    with pytest.raises(ApplicationError) as refused:
        upsert_project(engine, other, now=T0 + timedelta(1))

    assert refused.value.type == ErrorType.PROJECT_CONFLICT.value and refused.value.non_retryable
    assert refused.value.message == (
        "project 'billing-api' already exists (provisioning) with another environment, parameters.replicas: "
        "change it with an update, or delete it first"
    )
    assert refused.value.details == ({"fields": ["environment", "parameters.replicas"]},)
    project = get_project(postgres_url, "billing-api")
    assert project is not None  # untouched
    assert (project.environment, project.parameters, project.updated_at) == (
        "development",
        {"owner": "payments", "replicas": 2},
        T0,
    )


def test_a_claim_with_the_same_identity_passes(postgres_url: str) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, persist_update(), now=T0)
    summary = upsert_project(engine, claim(), now=T0 + timedelta(1))
    assert summary.applied and summary.status is ProjectStatus.PROVISIONING


def test_an_int_and_a_bool_parameter_are_different_values(postgres_url: str) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, persist_update(), now=T0)
    with pytest.raises(ApplicationError, match=r"parameters\.replicas"):
        upsert_project(engine, claim(parameters={"owner": "payments", "replicas": 2.0}), now=T0 + timedelta(1))


@pytest.mark.parametrize("free_status", [ProjectStatus.DELETED, ProjectStatus.ROLLED_BACK])
def test_a_claim_takes_a_free_slug_and_nothing_of_the_old_project_carries_over(
    postgres_url: str, free_status: ProjectStatus
) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, persist_update(), now=T0)
    ready = ProjectRecordUpdate(
        "billing-api", ProjectStatus.READY, commit_sha="a" * 40, applied_revision="main@sha1:" + "a" * 40
    )
    upsert_project(engine, ready, now=T0 + timedelta(1))
    upsert_project(engine, ProjectRecordUpdate("billing-api", free_status), now=T0 + timedelta(2))

    upsert_project(engine, claim(environment="production", template="worker"), now=T0 + timedelta(3))

    project = get_project(postgres_url, "billing-api")
    assert project is not None
    assert (project.environment, project.template, project.status) == (
        "production",
        "worker",
        ProjectStatus.PROVISIONING,
    )
    assert project.created_at == T0 + timedelta(3)
    assert (project.commit_sha, project.applied_revision, project.repo_url, project.ready_at) == (None,) * 4


def test_a_claim_of_a_row_written_before_parameters_were_kept_compares_the_rest(postgres_url: str) -> None:
    engine = engine_for(postgres_url)
    upsert_project(engine, replace(persist_update(), parameters=None), now=T0)
    upsert_project(engine, claim(parameters={"anything": 1}), now=T0 + timedelta(1))  # cannot be told apart
    with pytest.raises(ApplicationError, match="template"):
        upsert_project(engine, claim(template="worker"), now=T0 + timedelta(2))


def test_a_new_commit_clears_the_revision_of_the_old_one(postgres_url: str) -> None:
    """The record never pairs one commit with another commit's readiness."""
    engine = engine_for(postgres_url)
    old, new = "a" * 40, "b" * 40
    upsert_project(engine, persist_update(), now=T0)
    upsert_project(
        engine,
        ProjectRecordUpdate("billing-api", ProjectStatus.READY, commit_sha=old, applied_revision=f"main@sha1:{old}"),
        now=T0 + timedelta(1),
    )
    # The same commit written again (e.g. a finalize without a verdict) keeps its revision ...
    upsert_project(
        engine, ProjectRecordUpdate("billing-api", ProjectStatus.UPDATING, commit_sha=old), now=T0 + timedelta(2)
    )
    project = get_project(postgres_url, "billing-api")
    assert project is not None and project.applied_revision == f"main@sha1:{old}"
    # ... a new commit without a Ready verdict for it clears it, in both write paths.
    upsert_project(
        engine, ProjectRecordUpdate("billing-api", ProjectStatus.NOT_READY, commit_sha=new), now=T0 + timedelta(3)
    )
    project = get_project(postgres_url, "billing-api")
    assert project is not None and (project.commit_sha, project.applied_revision) == (new, None)
    # A revision the write brings is stored as it is, whatever the stored commit was ...
    update_project(
        engine,
        ProjectRecordUpdate("billing-api", ProjectStatus.READY, commit_sha=old, applied_revision=f"main@sha1:{old}"),
        now=T0 + timedelta(4),
    )
    project = get_project(postgres_url, "billing-api")
    assert project is not None and (project.commit_sha, project.applied_revision) == (old, f"main@sha1:{old}")
    # ... the same commit without one keeps it, and a new commit without one clears it.
    update_project(
        engine, ProjectRecordUpdate("billing-api", ProjectStatus.UPDATING, commit_sha=old), now=T0 + timedelta(5)
    )
    project = get_project(postgres_url, "billing-api")
    assert project is not None and (project.commit_sha, project.applied_revision) == (old, f"main@sha1:{old}")
    update_project(
        engine, ProjectRecordUpdate("billing-api", ProjectStatus.FAILED, commit_sha=new), now=T0 + timedelta(6)
    )
    project = get_project(postgres_url, "billing-api")
    assert project is not None and (project.commit_sha, project.applied_revision) == (new, None)


def test_read_project_record_returns_the_live_identity_only(postgres_url: str) -> None:
    activities = RecordActivities(postgres_url)
    environment = ActivityEnvironment()
    assert environment.run(activities.read_project_record, "billing-api") is None
    upsert_project(engine_for(postgres_url), persist_update(), now=T0)
    stored = environment.run(activities.read_project_record, "billing-api")
    assert stored is not None
    assert stored.identity == ProjectIdentity(
        "Billing API", "web-service", "development", {"owner": "payments", "replicas": 2}
    )
    assert stored.commit_sha == "a" * 40
    upsert_project(
        engine_for(postgres_url), ProjectRecordUpdate("billing-api", ProjectStatus.DELETED), now=T0 + timedelta(1)
    )
    assert environment.run(activities.read_project_record, "billing-api") is None
