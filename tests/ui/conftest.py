"""One embedded stack (Temporal dev server WITH its Web UI, Git server, sandbox cluster, worker) for the tests that
look at runs the way an operator does: in the Temporal Web UI and with the `temporal` CLI.

Ports are ephemeral and the data (Temporal's and the project records' SQLite files, the repositories) lives in a
temporary directory, so these tests run beside anything else on the machine.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from kubesim.cluster import FluxSimulatorConfig
from provisioner.settings import Secret, Settings
from provisioner.stack import EmbeddedStack, StackPorts


@pytest.fixture(scope="package")
async def ui_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedStack]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("ui-stack"),
        task_queue=f"ui-{uuid.uuid4().hex[:8]}",
        git_token=Secret(uuid.uuid4().hex),
        activity_threads=4,
    )
    flux = FluxSimulatorConfig(source_retry_interval=0.2)
    async with EmbeddedStack(settings, ports=StackPorts.ephemeral(), flux=flux) as stack:
        yield stack
