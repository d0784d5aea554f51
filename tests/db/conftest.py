"""Fixtures for the project database tests: throw-away PostgreSQL databases and SQLite files.

Every session (and every test that needs a pristine schema) gets its own uniquely named database, created through
an AUTOCOMMIT connection to the admin database and dropped afterwards, so parallel runs never collide.
PostgreSQL being unreachable is a test failure, never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from provisioner.db import dispose_engine, engine_for
from tests.postgres import temporary_postgres_database


@pytest.fixture
def postgres_url(migrated_postgres_url: str) -> str:
    """The session's migrated database with an empty `projects` table."""
    with engine_for(migrated_postgres_url).begin() as connection:
        connection.execute(text("DELETE FROM projects"))
    return migrated_postgres_url


@pytest.fixture
def fresh_postgres_url(admin_database_url: str) -> Iterator[str]:
    """A brand-new, empty (unmigrated) database of this test's own."""
    with temporary_postgres_database(admin_database_url) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    # A not-yet-existing subdirectory: the engine must create it, as it does for the demo's data dir.
    url = f"sqlite:///{tmp_path / 'data' / 'provisioner.db'}"
    yield url
    dispose_engine(url)
