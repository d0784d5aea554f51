"""Teardown end to end on a local Temporal dev server: provision for real, tear down for real, then read the cluster,
the Git host and PostgreSQL back."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest
from temporalio.exceptions import WorkflowAlreadyStartedError

from provisioner.client import ProjectConflict
from provisioner.contracts import (
    SEARCH_ATTRIBUTE_STATUS,
    ProjectStatus,
    StepName,
    StepState,
    TeardownResult,
    TeardownSpec,
    project_workflow_id,
)
from provisioner.db.projects import get_project
from tests.stack import Stack, spec_for, unique_slug
from workflows.project_teardown import ProjectTeardownWorkflow


async def provision(stack: Stack, slug: str) -> str:
    result = await (await stack.provisioner.start(spec_for(slug))).result()
    assert result.status is ProjectStatus.READY, result.message
    return result.repo_url


def assert_cluster_resources_gone(stack: Stack, slug: str) -> None:
    assert not stack.namespace_exists(slug)
    assert not stack.flux_object_exists("Kustomization", slug)
    assert not stack.flux_object_exists("GitRepository", slug)


def served_branches(url: str) -> list[str] | None:
    """The branches the git server serves at `url`, or None when it answers that there is no such repository (its
    404, "repository not found"). Any other failure (server down, refused, timed out) fails the test."""
    listing = subprocess.run(
        ["git", "ls-remote", "--heads", url],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"},
    )
    if listing.returncode == 0:
        return [line.split("\t", 1)[1] for line in listing.stdout.splitlines()]
    not_found = ("remote: repository not found\n", f"fatal: repository '{url.rstrip('/')}/' not found\n")
    if listing.returncode == 128 and all(line in listing.stderr for line in not_found):
        return None
    raise AssertionError(f"git ls-remote {url}: exit status {listing.returncode}: {listing.stderr.strip()}")


async def test_teardown_removes_the_cluster_resources_and_keeps_the_repository(stack: Stack) -> None:
    slug = unique_slug("gone")
    repo_url = await provision(stack, slug)
    assert stack.namespace_exists(slug)

    handle = await stack.provisioner.teardown(slug)
    assert handle.id == project_workflow_id(slug)
    result: TeardownResult = await handle.result()

    assert result.status is ProjectStatus.DELETED and not result.repository_deleted
    assert_cluster_resources_gone(stack, slug)
    assert served_branches(repo_url) == ["refs/heads/main"]
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None
    assert record.status is ProjectStatus.DELETED
    assert record.last_message == "cluster resources deleted; repository kept"
    assert record.workflow_id == handle.id
    assert record.repo_url == repo_url  # what was provisioned stays on the record
    steps = {s.name: s for s in result.progress.steps}
    assert steps[StepName.DELETE_REPOSITORY].state is StepState.SKIPPED
    assert result.progress.percent == 100
    description = await handle.describe()
    assert description.typed_search_attributes.get(SEARCH_ATTRIBUTE_STATUS) == ProjectStatus.DELETED.value
    assert (await stack.provisioner.progress(slug)).status is ProjectStatus.DELETED


async def test_teardown_deletes_the_repository_when_asked(stack: Stack) -> None:
    slug = unique_slug("purge")
    repo_url = await provision(stack, slug)
    assert served_branches(repo_url) == ["refs/heads/main"]  # so that "not found" below speaks of this repository

    handle = await stack.provisioner.teardown(slug, delete_repository=True)
    watched = [progress async for progress in stack.provisioner.watch(slug)]
    result = await handle.result()

    assert result.repository_deleted and result.message == "cluster resources deleted; repository deleted"
    assert watched[-1].status is ProjectStatus.DELETED
    assert_cluster_resources_gone(stack, slug)
    assert not (stack.settings.git_repos_dir / f"{slug}.git").exists()
    assert served_branches(repo_url) is None
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None and record.status is ProjectStatus.DELETED


async def test_tearing_down_twice_or_a_project_that_never_existed_is_fine(stack: Stack) -> None:
    slug = unique_slug("twice")
    await provision(stack, slug)
    first = await (await stack.provisioner.teardown(slug, delete_repository=True)).result()
    second = await (await stack.provisioner.teardown(slug, delete_repository=True)).result()

    assert first.status is second.status is ProjectStatus.DELETED
    assert first.repository_deleted and not second.repository_deleted
    steps = {s.name: s for s in second.progress.steps}
    assert steps[StepName.DELETE_FLUX_RESOURCES].message.startswith("nothing to delete")
    assert_cluster_resources_gone(stack, slug)
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None and record.status is ProjectStatus.DELETED

    stranger = unique_slug("never")
    result = await (await stack.provisioner.teardown(stranger)).result()
    assert result.status is ProjectStatus.DELETED
    assert get_project(stack.settings.effective_database_url, stranger) is None  # no half-row invented
    assert not stack.namespace_exists(stranger)
    assert not (stack.settings.git_repos_dir / f"{stranger}.git").exists()


async def test_teardown_while_provisioning_runs_is_refused(stack: Stack) -> None:
    slug = unique_slug("busy")
    stack.cluster.flux.hold(namespace=slug)
    try:
        provisioning = await stack.provisioner.start(spec_for(slug))
        async for progress in stack.provisioner.watch(slug):
            if {s.name: s for s in progress.steps}[StepName.AWAIT_READY].state is StepState.RUNNING:
                break

        # The client refuses...
        with pytest.raises(ProjectConflict, match="being created"):
            await stack.provisioner.teardown(slug)
        # ... because Temporal refuses a second run of the project's workflow id, however it is started.
        with pytest.raises(WorkflowAlreadyStartedError):
            await stack.temporal.start_workflow(
                ProjectTeardownWorkflow.run,
                TeardownSpec(slug=slug, delete_repository=True),
                id=project_workflow_id(slug),
                task_queue=stack.settings.task_queue,
            )

        # Nothing was touched.
        assert stack.namespace_exists(slug) and stack.flux_object_exists("Kustomization", slug)
        assert (stack.settings.git_repos_dir / f"{slug}.git").exists()
        record = get_project(stack.settings.effective_database_url, slug)
        assert record is not None and record.status is ProjectStatus.PROVISIONING
    finally:
        stack.cluster.flux.release()
    result = await asyncio.wait_for(provisioning.result(), timeout=60)
    assert result.status is ProjectStatus.READY
