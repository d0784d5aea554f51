"""Throw-away PostgreSQL databases on the machine's real server, one per test session or test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from provisioner.db import dispose_engine

TEST_DATABASE_URL_ENV = "PROVISIONER_TEST_DATABASE_URL"
DEFAULT_TEST_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def temporary_postgres_database(admin_url: str, prefix: str = "provisioner_test_") -> Iterator[str]:
    """Create a fresh database next to `admin_url`'s, yield its URL, then drop it (connections and all)."""
    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    admin_engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin_engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        try:
            yield url
        finally:
            dispose_engine(url)
            with admin_engine.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin_engine.dispose()
