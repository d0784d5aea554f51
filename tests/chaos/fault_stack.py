"""The fault stack: the end-to-end stack (tests/stack.py) whose worker reaches PostgreSQL through a fault proxy.

In PASS mode the proxy is transparent, so every dependency-fault test uses this one fixture (`chaos`, made
visible by conftest.py); each test arms its own fault
(the proxy, `cluster.faults`, `git_server.fail_pushes`, the Flux simulator's knobs) and disarms it when done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from temporalio.testing import WorkflowEnvironment

from provisioner.db import dispose_engine
from tests.chaos.faultproxy import FaultProxy
from tests.stack import Stack, running_stack

# Enough activity slots for every concurrent project to hold one while a fault makes attempts slow.
CHAOS_ACTIVITY_THREADS = 8


@dataclass
class ChaosStack:
    stack: Stack
    database_proxy: FaultProxy
    database_url: str  # direct, for the tests' own reads; the worker's goes through `database_proxy`


@pytest.fixture(scope="module")
async def chaos(
    local_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory, templates_dir: Path, database_url: str
) -> AsyncIterator[ChaosStack]:
    direct = make_url(database_url)
    with FaultProxy((direct.host or "127.0.0.1", direct.port or 5432)) as proxy:
        proxied = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        try:
            async with running_stack(
                local_env.client,
                tmp_path_factory.mktemp("data"),
                templates_dir,
                database_url,
                worker_database_url=proxied,
                activity_threads=CHAOS_ACTIVITY_THREADS,
            ) as stack:
                yield ChaosStack(stack, proxy, database_url)
        finally:
            dispose_engine(proxied)
