"""Marking a record (the teardown's deleting/deleted/failed) updates an existing record and never creates one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from temporalio.testing import ActivityEnvironment

from activities.records import RecordActivities, update_project, upsert_project
from provisioner.contracts import ProjectRecordUpdate, ProjectStatus
from provisioner.db import engine_for, migrate
from provisioner.db.projects import get_project

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def provisioned(slug: str = "billing-api") -> ProjectRecordUpdate:
    return ProjectRecordUpdate(
        slug=slug,
        status=ProjectStatus.READY,
        display_name="Billing API",
        template="web-service",
        environment="development",
        namespace=slug,
        workflow_id=f"project-{slug}",
        repo_url=f"http://git.example/{slug}.git",
        commit_sha="a" * 40,
        last_message="Ready",
    )


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = request.getfixturevalue("sqlite_url")
        migrate(url)
    return url


def test_marking_a_recorded_project_keeps_what_is_known(database_url: str) -> None:
    engine = engine_for(database_url)
    upsert_project(engine, provisioned(), now=T0)
    deleting = ProjectRecordUpdate(
        slug="billing-api",
        status=ProjectStatus.DELETING,
        workflow_id="project-billing-api",
        last_message="teardown started",
    )
    summary = update_project(engine, deleting, now=T0 + timedelta(minutes=1))
    assert summary is not None and summary.status is ProjectStatus.DELETING
    update_project(
        engine,
        ProjectRecordUpdate(slug="billing-api", status=ProjectStatus.DELETED, last_message="gone"),
        now=T0 + timedelta(minutes=2),
    )

    record = get_project(database_url, "billing-api")
    assert record is not None
    assert (record.status, record.last_message, record.workflow_id) == (
        ProjectStatus.DELETED,
        "gone",
        "project-billing-api",
    )
    assert (record.display_name, record.template, record.repo_url) == (
        "Billing API",
        "web-service",
        "http://git.example/billing-api.git",
    )
    assert record.created_at == T0 and record.ready_at == T0
    assert record.updated_at == T0 + timedelta(minutes=2)


def test_marking_an_unknown_project_writes_nothing(database_url: str) -> None:
    activities = RecordActivities(database_url)
    for status in (ProjectStatus.DELETING, ProjectStatus.DELETED):
        update = ProjectRecordUpdate(slug="never-seen", status=status, last_message="x")
        assert ActivityEnvironment().run(activities.mark_project_record, update) is None
    assert get_project(database_url, "never-seen") is None


def test_the_activity_marks_an_existing_record(database_url: str) -> None:
    activities = RecordActivities(database_url)
    ActivityEnvironment().run(activities.upsert_project_record, provisioned("known-one"))
    update = ProjectRecordUpdate(slug="known-one", status=ProjectStatus.DELETING, last_message="teardown started")
    summary = ActivityEnvironment().run(activities.mark_project_record, update)
    assert summary is not None and summary.status is ProjectStatus.DELETING
    record = get_project(database_url, "known-one")
    assert record is not None and record.status is ProjectStatus.DELETING and record.template == "web-service"
