"""Provisioning a project on the embedded stack until an operator's tools can see all of it."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

from provisioner.client import ProvisionerClient
from provisioner.contracts import SEARCH_ATTRIBUTE_SLUG, ProjectSpec, ProjectStatus, ProvisioningResult
from provisioner.stack import EmbeddedStack

VISIBILITY_TIMEOUT_SECONDS = 10.0


def unique_slug(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def provision(stack: EmbeddedStack, slug: str) -> ProvisioningResult:
    """Provision SLUG to Ready and wait until the visibility store lists it, as the UI and `workflow list` read it."""
    assert stack.client is not None
    provisioner = ProvisionerClient(stack.client, stack.settings.task_queue)
    spec = ProjectSpec(
        slug=slug,
        display_name=f"Project {slug}",
        template="web-service",
        parameters={"owner": "payments"},
        ready_timeout=timedelta(seconds=30),
    )
    result = await (await provisioner.start(spec)).result()
    assert result.status is ProjectStatus.READY, result.message
    await wait_until_listed(stack, slug)
    return result


async def wait_until_listed(stack: EmbeddedStack, slug: str) -> None:
    """Visibility is written after the history, so a just-closed run can be missing from a list for a moment."""
    assert stack.client is not None
    query = f"{SEARCH_ATTRIBUTE_SLUG.name} = '{slug}' AND ExecutionStatus = 'Completed'"
    deadline = time.monotonic() + VISIBILITY_TIMEOUT_SECONDS
    while not [execution async for execution in stack.client.list_workflows(query)]:
        if time.monotonic() > deadline:
            raise AssertionError(f"{slug} was not listed by the visibility store within {VISIBILITY_TIMEOUT_SECONDS}s")
        await asyncio.sleep(0.1)
