"""The Alembic migrations: they apply (repeatedly, concurrently) and create exactly the model's schema."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Engine, MetaData, String, inspect, text

from provisioner.db import Base, engine_for, migrate
from provisioner.db.engine import ALEMBIC_INI

HEAD_REVISION = "0003"


def schema_differences(engine: Engine, metadata: MetaData) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(context, metadata))


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_migrate_twice_creates_the_projects_table(fresh_postgres_url: str) -> None:
    engine = engine_for(fresh_postgres_url)
    assert "projects" not in inspect(engine).get_table_names()

    migrate(fresh_postgres_url)
    migrate(fresh_postgres_url)

    inspector = inspect(engine)
    assert set(inspector.get_table_names()) == {"projects", "alembic_version"}
    assert current_revision(engine) == HEAD_REVISION
    assert [(unique["name"], unique["column_names"]) for unique in inspector.get_unique_constraints("projects")] == [
        ("uq_projects_slug", ["slug"])
    ]
    plain_indexes = [index for index in inspector.get_indexes("projects") if not index.get("duplicates_constraint")]
    assert [(index["name"], index["column_names"], index["unique"]) for index in plain_indexes] == [
        ("ix_projects_status", ["status"], False)
    ]
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1


def test_concurrent_migrations_of_one_database_all_succeed(fresh_postgres_url: str, tmp_path: Path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'concurrent.db'}"
    start = threading.Barrier(8)

    def migrate_when_all_ready(url: str) -> None:
        start.wait()
        migrate(url)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [pool.submit(migrate_when_all_ready, url) for url in [fresh_postgres_url, sqlite_url] * 4]
        for result in results:
            result.result(timeout=60)

    for url in (fresh_postgres_url, sqlite_url):
        assert current_revision(engine_for(url)) == HEAD_REVISION


def test_the_migrated_postgres_schema_matches_the_model(migrated_postgres_url: str) -> None:
    assert schema_differences(engine_for(migrated_postgres_url), Base.metadata) == []


def test_the_schema_comparison_would_notice_a_drift(migrated_postgres_url: str) -> None:
    # Guards the test above against comparing nothing: a model with one more column must differ.
    drifted = MetaData(naming_convention=Base.metadata.naming_convention)
    projects = Base.metadata.tables["projects"].to_metadata(drifted)
    projects.append_column(Column("owner", String(100)))

    differences = schema_differences(engine_for(migrated_postgres_url), drifted)

    assert [(diff[0], diff[3].name) for diff in differences if isinstance(diff, tuple)] == [("add_column", "owner")]


def test_the_migrated_sqlite_schema_matches_the_model(sqlite_url: str) -> None:
    migrate(sqlite_url)
    migrate(sqlite_url)

    engine = engine_for(sqlite_url)
    assert current_revision(engine) == HEAD_REVISION
    assert schema_differences(engine, Base.metadata) == []


def test_migrate_does_not_depend_on_the_working_directory(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    migrate(sqlite_url)
    assert ALEMBIC_INI.is_file()
    assert "projects" in inspect(engine_for(sqlite_url)).get_table_names()


def test_upgrading_a_0001_database_keeps_its_records(fresh_postgres_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    engine = engine_for(fresh_postgres_url)
    config = Config(str(ALEMBIC_INI))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            text(
                "INSERT INTO projects (slug, display_name, template, environment, namespace, status) "
                "VALUES ('billing-api', 'Billing API', 'web-service', 'development', 'billing-api', 'ready')"
            )
        )

    migrate(fresh_postgres_url)

    assert current_revision(engine) == HEAD_REVISION
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT slug, status, status_written_at FROM projects")).all()
    assert [tuple(row) for row in rows] == [("billing-api", "ready", None)]
