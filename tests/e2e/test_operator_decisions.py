"""Operator retry and abort on the real stack: a run whose Flux objects stall waits for a decision; retry (after the
cause is fixed) finishes it Ready, abort removes what it made. Every assertion reads the systems back."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from provisioner.client import ProjectConflict
from provisioner.contracts import (
    ErrorType,
    FailureAction,
    FailurePolicy,
    OperatorDecision,
    Progress,
    ProjectStatus,
    StepName,
    StepState,
)
from provisioner.db.projects import get_project
from tests.stack import Stack, spec_for, unique_slug

WAIT_FOR_AN_OPERATOR = FailurePolicy(decision_timeout=timedelta(hours=1))


async def stalled_and_awaiting_decision(stack: Stack, slug: str, policy: FailurePolicy) -> Progress:
    stack.cluster.flux.stall(slug, slug, reason="BuildFailed", message="kustomize build failed: missing resource")
    await stack.provisioner.start(spec_for(slug, on_failure=policy))
    async for progress in stack.provisioner.watch(slug, stop_at=frozenset({ProjectStatus.AWAITING_DECISION})):
        last = progress
    assert last.status is ProjectStatus.AWAITING_DECISION, last.message
    return last


async def test_retry_after_the_cause_is_fixed_finishes_ready(stack: Stack) -> None:
    slug = unique_slug("retry")
    waiting = await stalled_and_awaiting_decision(stack, slug, WAIT_FOR_AN_OPERATOR)
    assert waiting.decision is not None and waiting.decision.step is StepName.AWAIT_READY
    assert "BuildFailed" in waiting.message
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None and record.status == ProjectStatus.AWAITING_DECISION.value

    await stack.unstall(slug)
    answer = await stack.provisioner.decide(slug, OperatorDecision(FailureAction.RETRY, "fixed the overlay"))
    result = await stack.provisioner.wait(slug)

    assert "retry accepted" in answer
    assert result.status is ProjectStatus.READY
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None and record.status == ProjectStatus.READY.value
    with pytest.raises(ProjectConflict):  # nothing left to decide
        await stack.provisioner.decide(slug, OperatorDecision(FailureAction.ABORT))


@pytest.mark.parametrize("delete_repository", [False, True])
async def test_abort_removes_what_the_run_made(stack: Stack, delete_repository: bool) -> None:
    slug = unique_slug("abort")
    policy = FailurePolicy(decision_timeout=timedelta(hours=1), delete_repository_on_abort=delete_repository)
    await stalled_and_awaiting_decision(stack, slug, policy)
    assert stack.namespace_exists(slug)
    repository = stack.settings.git_repos_dir / f"{slug}.git"
    assert repository.exists()

    await stack.provisioner.decide(slug, OperatorDecision(FailureAction.ABORT, "wrong template"))
    with pytest.raises(WorkflowFailureError) as raised:
        await stack.provisioner.wait(slug)
    stack.cluster.flux.unstall(slug, slug)

    cause = raised.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == ErrorType.FLUX_STALLED.value
    assert "aborted" in cause.message
    assert not stack.namespace_exists(slug)
    assert not stack.flux_object_exists("Kustomization", slug)
    assert repository.exists() is not delete_repository
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None and record.status == ProjectStatus.ROLLED_BACK.value
    assert "wrong template" in record.last_message and "rolled back" in record.last_message
    progress = await stack.provisioner.progress(slug)
    states = {step.name: step.state for step in progress.steps}
    assert states[StepName.AWAIT_DELETION] is StepState.SUCCEEDED
    assert states[StepName.MARK_FAILED] is StepState.SUCCEEDED
    # A rolled-back creation frees the slug: a create with another spec is a new project.
    anew = spec_for(slug, environment="production", parameters={"owner": "search", "replicas": 2})
    result = await (await stack.provisioner.start(anew)).result()
    assert result.status is ProjectStatus.READY, result.message
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None and record.environment == "production" and record.parameters is not None
    assert (record.parameters["owner"], record.parameters["replicas"], record.parameters["port"]) == ("search", 2, 8080)


async def test_no_decision_within_the_bound_applies_the_default(stack: Stack) -> None:
    slug = unique_slug("nodecision")
    policy = FailurePolicy(decision_timeout=timedelta(seconds=2), default_action=FailureAction.ABORT)
    await stalled_and_awaiting_decision(stack, slug, policy)
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(stack.provisioner.wait(slug), timeout=60)
    stack.cluster.flux.unstall(slug, slug)
    assert not stack.namespace_exists(slug)
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None and record.status == ProjectStatus.ROLLED_BACK.value
    assert "no decision within" in record.last_message
