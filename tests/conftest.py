"""Fixtures shared by every test area: the Temporal test servers, started from the venv's bundled binaries."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment

from provisioner.temporal import DATA_CONVERTER, bundled_binary


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=bundled_binary("temporal-test-server"), data_converter=DATA_CONVERTER
    )
    try:
        yield env
    finally:
        await env.shutdown()
