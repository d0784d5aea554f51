"""Create and update as separate intents, and Ready for exactly the pushed commit, end to end: the real worker, git
over HTTP, PostgreSQL and the sandbox cluster with its Flux simulator. Every claim is read back from the systems:
the branch head, the record, the Kustomization's status."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from provisioner.client import NoSuchProject, ProjectConflict
from provisioner.contracts import (
    ErrorType,
    ProjectOperation,
    ProjectStatus,
    ProjectUpdate,
    ProvisioningResult,
    StepName,
    project_workflow_id,
)
from provisioner.db.projects import ProjectView, get_project
from tests.stack import Stack, git, spec_for, unique_slug
from workflows.project_init import ProjectInitWorkflow


def branch_head(repo_url: str) -> str:
    return git("ls-remote", repo_url, "refs/heads/main").split()[0]


def record_of(stack: Stack, slug: str) -> ProjectView:
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None
    return record


def assert_ready_at_the_branch_head(stack: Stack, slug: str, result: ProvisioningResult) -> str:
    """Ready, the result, the record and the cluster all name the commit at the head of the project's branch."""
    assert result.status is ProjectStatus.READY, result.message
    head = branch_head(result.repo_url)
    revision = f"main@sha1:{head}"
    assert result.commit_sha == head
    assert result.applied_revision == result.progress.applied_revision == revision
    kustomization = stack.flux_object("Kustomization", slug)
    assert kustomization["status"]["lastAppliedRevision"] == revision
    source = stack.flux_object("GitRepository", slug)
    assert source["status"]["artifact"]["revision"] == revision
    record = record_of(stack, slug)
    assert (record.status, record.commit_sha, record.applied_revision) == (ProjectStatus.READY, head, revision)
    return head


async def latest_run_id(stack: Stack, slug: str) -> str:
    return (await stack.temporal.get_workflow_handle(project_workflow_id(slug)).describe()).run_id


async def test_an_update_is_ready_only_for_its_own_commit(stack: Stack) -> None:
    slug = unique_slug("upd")
    created = await (await stack.provisioner.start(spec_for(slug, parameters={"owner": "payments"}))).result()
    first_head = assert_ready_at_the_branch_head(stack, slug, created)
    kustomization = stack.flux_object("Kustomization", slug)
    first_token = kustomization["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"]

    handle = await stack.provisioner.update(ProjectUpdate(slug=slug, parameters={"replicas": 3}))
    updated = await handle.result()

    second_head = assert_ready_at_the_branch_head(stack, slug, updated)
    assert second_head != first_head
    assert updated.operation is ProjectOperation.UPDATE and updated.progress.operation is ProjectOperation.UPDATE
    # A new apply, a new token, and the Kustomization handled it.
    kustomization = stack.flux_object("Kustomization", slug)
    token = kustomization["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"]
    assert token != first_token and kustomization["status"]["lastHandledReconcileAt"] == token
    record = record_of(stack, slug)
    assert record.operation == "update" and record.parameters is not None
    assert (record.parameters["owner"], record.parameters["replicas"]) == ("payments", 3)
    assert record.workflow_id == project_workflow_id(slug) == handle.id


async def test_an_update_that_changes_nothing_makes_no_commit(stack: Stack) -> None:
    slug = unique_slug("same")
    created = await (await stack.provisioner.start(spec_for(slug))).result()
    head = assert_ready_at_the_branch_head(stack, slug, created)

    again = await (await stack.provisioner.update(ProjectUpdate(slug=slug))).result()

    assert assert_ready_at_the_branch_head(stack, slug, again) == head
    push = next(step for step in again.progress.steps if step.name is StepName.PUSH_TEMPLATE)
    assert "already up to date" in push.message


async def test_a_second_create_with_another_spec_is_refused_and_the_same_one_is_a_no_op(stack: Stack) -> None:
    slug = unique_slug("twice")
    created = await (await stack.provisioner.start(spec_for(slug))).result()
    assert created.status is ProjectStatus.READY
    run_id = await latest_run_id(stack, slug)
    head = branch_head(created.repo_url)

    with pytest.raises(ProjectConflict) as refused:
        await stack.provisioner.start(
            spec_for(slug, environment="production", parameters={"owner": "payments", "replicas": 4})
        )
    message = str(refused.value)
    assert "environment" in message and "parameters.replicas" in message and "update" in message
    assert "parameters.owner" not in message and "display_name" not in message
    # A default given explicitly is the same content: still a no-op (replicas defaults to 2).
    same = await stack.provisioner.start(spec_for(slug, parameters={"owner": "payments", "replicas": 2}))

    assert same.id == project_workflow_id(slug)
    assert await latest_run_id(stack, slug) == run_id  # no run started, nothing moved
    assert branch_head(created.repo_url) == head
    assert record_of(stack, slug).environment == "development"


async def test_a_create_that_bypasses_the_client_is_refused_by_the_workflow_and_makes_nothing(stack: Stack) -> None:
    """Another language's SDK starts the workflow directly: the record's claim still refuses another identity."""
    slug = unique_slug("direct")
    created = await (await stack.provisioner.start(spec_for(slug))).result()
    head = branch_head(created.repo_url)
    other = spec_for(slug, display_name="Someone else's")

    handle = await stack.temporal.start_workflow(
        ProjectInitWorkflow.run, other, id=project_workflow_id(slug), task_queue=stack.settings.task_queue
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()

    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == ErrorType.PROJECT_CONFLICT.value
    assert "display_name" in cause.message
    record = record_of(stack, slug)
    assert (record.display_name, record.status, record.commit_sha) == (f"Project {slug}", ProjectStatus.READY, head)
    assert branch_head(created.repo_url) == head
    steps = {step.name: step.state.value for step in (await stack.provisioner.progress(slug)).steps}
    assert (steps[StepName.CREATE_REPOSITORY], steps[StepName.APPLY_FLUX_RESOURCES]) == ("pending", "pending")


async def test_an_update_may_move_the_project_to_another_environment(stack: Stack) -> None:
    slug = unique_slug("move")
    await (await stack.provisioner.start(spec_for(slug))).result()

    moved = await (await stack.provisioner.update(ProjectUpdate(slug=slug, environment="production"))).result()

    assert_ready_at_the_branch_head(stack, slug, moved)
    assert stack.flux_object("Kustomization", slug)["spec"]["path"] == "./k8s/overlays/production"
    assert record_of(stack, slug).environment == "production"


async def test_a_dry_run_shows_the_diff_and_changes_nothing(stack: Stack) -> None:
    slug = unique_slug("dry")
    created = await (await stack.provisioner.start(spec_for(slug))).result()
    head, run_id, before = branch_head(created.repo_url), await latest_run_id(stack, slug), record_of(stack, slug)

    preview = await stack.provisioner.preview(ProjectUpdate(slug=slug, parameters={"replicas": 5}, dry_run=True))

    assert preview.base_commit == head
    # replicas count in production only (the template says so); the README renders them too.
    assert "k8s/overlays/production/kustomization.yaml" in preview.changed_files
    assert preview.diff.startswith("diff --git a/")
    added = [line for line in preview.diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    removed = [line for line in preview.diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    assert any("5" in line for line in added) and any("2" in line for line in removed), preview.diff
    # Nothing changed anywhere: branch, record, the project's runs.
    assert branch_head(created.repo_url) == head
    assert await latest_run_id(stack, slug) == run_id
    assert record_of(stack, slug) == before
    nothing = await stack.provisioner.preview(ProjectUpdate(slug=slug, parameters={"replicas": 2}, dry_run=True))
    assert (nothing.changed_files, nothing.diff) == ([], "")


async def test_an_update_of_no_project_is_refused(stack: Stack) -> None:
    slug = unique_slug("ghost")
    with pytest.raises(NoSuchProject):
        await stack.provisioner.update(ProjectUpdate(slug=slug, parameters={"replicas": 3}))
    with pytest.raises(WorkflowFailureError) as failed:  # started directly, the workflow refuses it as well
        await stack.temporal.execute_workflow(
            "ProjectUpdateWorkflow",
            ProjectUpdate(slug=slug),
            id=project_workflow_id(slug),
            task_queue=stack.settings.task_queue,
        )
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == ErrorType.NO_SUCH_PROJECT.value
    assert get_project(stack.settings.effective_database_url, slug) is None


async def test_the_run_waits_while_flux_fetches_the_new_commit_slowly(stack: Stack) -> None:
    """source-controller keeps Ready=True at the old artifact while it fetches a new one: the old readiness must
    not pass for the new commit's."""
    slug = unique_slug("slow")
    created = await (await stack.provisioner.start(spec_for(slug))).result()
    old_revision = created.applied_revision
    delay = 4.0
    stack.cluster.flux.delay_fetch(slug, delay)
    try:
        started = time.monotonic()
        await stack.provisioner.update(ProjectUpdate(slug=slug, parameters={"replicas": 3}))
        waiting: list[str] = []
        async for progress in stack.provisioner.watch(slug):
            step = next(s for s in progress.steps if s.name is StepName.AWAIT_READY)
            if step.message.startswith("waiting"):
                waiting.append(step.message)
        result = await stack.provisioner.wait(slug)
        elapsed = time.monotonic() - started
    finally:
        stack.cluster.flux.clear_fetch_delay(slug)

    assert_ready_at_the_branch_head(stack, slug, result)
    assert result.applied_revision != old_revision
    assert elapsed >= delay
    # While it waited, it said why: the source still held the old artifact, which it named.
    assert any(old_revision in message and "waiting for" in message for message in waiting), waiting


async def test_operations_of_one_project_exclude_each_other(stack: Stack) -> None:
    """Create, update and teardown share the project's workflow id: started together, exactly one runs."""
    slug = unique_slug("race")
    await (await stack.provisioner.start(spec_for(slug))).result()
    for attempt in range(3):
        operations: list[Any] = [
            stack.provisioner.update(ProjectUpdate(slug=slug, parameters={"replicas": 3 + attempt})),
            stack.provisioner.teardown(slug),
        ]
        if attempt % 2:
            operations.reverse()
        outcomes = await asyncio.gather(*operations, return_exceptions=True)
        started = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
        refused = [outcome for outcome in outcomes if isinstance(outcome, ProjectConflict)]
        assert len(started) == 1 and len(refused) == 1, outcomes
        description = await stack.temporal.get_workflow_handle(project_workflow_id(slug)).describe()
        assert description.run_id == started[0].result_run_id
        await started[0].result()
        if description.workflow_type == "ProjectTeardownWorkflow":
            assert record_of(stack, slug).status is ProjectStatus.DELETED
            await (await stack.provisioner.start(spec_for(slug))).result()  # a deleted slug is free again
        else:
            assert record_of(stack, slug).status is ProjectStatus.READY
    final = await stack.temporal.get_workflow_handle(project_workflow_id(slug)).describe()
    assert final.status == WorkflowExecutionStatus.COMPLETED
