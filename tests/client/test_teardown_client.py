"""ProvisionerClient.teardown against a real Temporal dev server: one teardown per slug, refusals, bad input."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from provisioner.client import InvalidRequest, ProjectConflict, ProvisionerClient
from provisioner.contracts import SEARCH_ATTRIBUTE_SLUG, SEARCH_ATTRIBUTE_STATUS, ProjectSpec, ProjectStatus


@pytest.fixture
def client(local_env: WorkflowEnvironment) -> ProvisionerClient:
    # No worker polls this queue, so started runs stay running for the test to look at.
    return ProvisionerClient(local_env.client, task_queue=f"idle-{uuid.uuid4().hex[:8]}")


def slug(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def test_a_second_identical_teardown_attaches_to_the_running_one(client: ProvisionerClient) -> None:
    name = slug("tear")
    first = await client.teardown(name)
    second = await client.teardown(name)
    try:
        assert first.id == second.id == f"project-{name}"
        assert first.result_run_id == second.result_run_id
        description = await client.handle(name).describe()
        assert description.typed_search_attributes.get(SEARCH_ATTRIBUTE_SLUG) == name
        assert description.typed_search_attributes.get(SEARCH_ATTRIBUTE_STATUS) == ProjectStatus.DELETING.value
        with pytest.raises(ProjectConflict, match="different request"):
            await client.teardown(name, delete_repository=True)
    finally:
        await client.handle(name).terminate("test cleanup")


async def test_a_running_provisioning_refuses_the_teardown(client: ProvisionerClient) -> None:
    name = slug("prov")
    await client.start(ProjectSpec(slug=name, display_name="Shop", template="web-service"))
    try:
        with pytest.raises(ProjectConflict, match="being created"):
            await client.teardown(name)
    finally:
        await client.handle(name).terminate("test cleanup")
    # A provisioning that ended (here: terminated) no longer blocks.
    handle = await client.teardown(name)
    await handle.terminate("test cleanup")


async def test_invalid_teardown_requests_start_nothing(client: ProvisionerClient) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await client.teardown("Not_A_Slug", deletion_timeout=timedelta(days=1))
    assert {error.field for error in raised.value.errors} == {"slug", "deletion_timeout"}
