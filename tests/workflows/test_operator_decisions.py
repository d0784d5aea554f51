"""A step that fails for good makes ProjectInitWorkflow wait for an operator: retry resumes at the failed step, abort
rolls the completed steps back in reverse order, and no decision within the bound applies the policy's default.

Runs on the time-skipping test server with the stub systems of test_project_init.py: the bound (hours) passes in
moments while the test waits for the result, and in real time while it polls the progress query.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

from provisioner.contracts import (
    STEP_TITLES,
    ErrorType,
    FailureAction,
    FailurePolicy,
    OperatorDecision,
    Progress,
    ProjectStatus,
    ProjectUpdate,
    ProvisioningResult,
    ReadinessReport,
    ReadinessState,
    StepName,
    StepState,
    project_workflow_id,
)
from tests.conftest import time_skipping_environment
from tests.workflows.test_project_init import (
    PROGRESSING,
    READY,
    REVISION,
    StubSystems,
    assert_written_in_order,
    failure_of,
    make_spec,
    run_to_failure,
    start,
    stub_worker,
    stubs,
)
from workflows.project_init import NOT_AWAITING_DECISION, ProjectInitWorkflow
from workflows.project_update import ProjectUpdateWorkflow

__all__ = ["stubs"]  # the fixture, shared with test_project_init.py

ProvisioningHandle = WorkflowHandle[ProjectInitWorkflow, ProvisioningResult]
REJECTED = ApplicationError(
    "the cluster refused: namespace quota exceeded", type=ErrorType.CLUSTER_REJECTED.value, non_retryable=True
)
GIT_HOST_REJECTED = ApplicationError(
    "the Git host refused: 403 Forbidden", type=ErrorType.GIT_HOST_REJECTED.value, non_retryable=True
)
APPLY = StepName.APPLY_FLUX_RESOURCES
WAIT = FailurePolicy(decision_timeout=timedelta(hours=4))


async def awaiting_decision(handle: ProvisioningHandle) -> Progress:
    async def poll() -> Progress:
        while True:
            progress = await handle.query(ProjectInitWorkflow.progress)
            if progress.status is ProjectStatus.AWAITING_DECISION:
                return progress
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), timeout=30)


def steps_of(progress: Progress) -> dict[StepName, StepState]:
    return {step.name: step.state for step in progress.steps}


@asynccontextmanager
async def ended_at_the_end(handle: ProvisioningHandle) -> AsyncIterator[ProvisioningHandle]:
    """Terminate the run if the test leaves it running (e.g. a failed assertion while it awaits a decision): a run
    left waiting on the shared time-skipping server would fire its timers into the tests after this one."""
    try:
        yield handle
    finally:
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate("test over")


async def test_the_progress_query_shows_the_failure_and_the_pending_decision(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    systems.failures["apply_flux_resources"] = [REJECTED]
    async with ended_at_the_end(await start(time_skipping_env, task_queue, make_spec(on_failure=WAIT))) as handle:
        progress = await awaiting_decision(handle)

        assert progress.decision is not None
        assert progress.decision.step is StepName.APPLY_FLUX_RESOURCES
        assert progress.decision.error_type == ErrorType.CLUSTER_REJECTED.value
        assert progress.decision.default_action is FailureAction.ABORT
        assert "namespace quota exceeded" in progress.message and "awaiting an operator's decision" in progress.message
        assert steps_of(progress)[StepName.APPLY_FLUX_RESOURCES] is StepState.FAILED
        # The record says so too: this run claimed it (persist_record, the second step), so it mirrors the wait.
        assert systems.records[-1].status is ProjectStatus.AWAITING_DECISION
        description = await handle.describe()
        assert description.status is not None and description.status.name == "RUNNING"


async def test_the_record_mirrors_the_wait_when_it_is_all_the_run_has_made(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    """The record is claimed before the repository is created: a failure at create_repository leaves the record as
    the only thing this run has made, and it must show the wait as much as when more exists."""
    systems, task_queue = stubs
    systems.failures["create_repository"] = [GIT_HOST_REJECTED]
    async with ended_at_the_end(await start(time_skipping_env, task_queue, make_spec(on_failure=WAIT))) as handle:
        progress = await awaiting_decision(handle)

    assert progress.decision is not None and progress.decision.step is StepName.CREATE_REPOSITORY
    assert systems.calls == ["validate_template", "upsert_project_record", "create_repository", "upsert_project_record"]
    claim, mirror = systems.records
    assert claim.claim and claim.status is ProjectStatus.PROVISIONING
    assert not mirror.claim and mirror.status is ProjectStatus.AWAITING_DECISION
    assert mirror.repo_url is None and "create_repository failed" in mirror.last_message


async def test_retry_resumes_at_the_failed_step(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    systems.failures["apply_flux_resources"] = [REJECTED]
    handle = await start(time_skipping_env, task_queue, make_spec(on_failure=WAIT))
    await awaiting_decision(handle)

    answer = await handle.execute_update(
        ProjectInitWorkflow.decide, OperatorDecision(FailureAction.RETRY, "quota raised")
    )
    result = await handle.result()

    assert "retry accepted" in answer
    assert result.status is ProjectStatus.READY and result.progress.percent == 100
    assert result.progress.decision is None
    # The steps before the failed one ran once; the failed one twice.
    for done in ("validate_template", "create_repository", "push_template"):
        assert systems.calls.count(done) == 1
    assert systems.calls.count("apply_flux_resources") == 2
    assert [r.status for r in systems.records] == [
        ProjectStatus.PROVISIONING,
        ProjectStatus.AWAITING_DECISION,
        ProjectStatus.READY,
    ]


@pytest.mark.parametrize("delete_repository", [False, True])
async def test_abort_rolls_back_the_completed_steps_in_reverse_order(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str], delete_repository: bool
) -> None:
    systems, task_queue = stubs
    systems.readiness = lambda poll: ReadinessReport(ReadinessState.FAILED, "InvalidPath", "path is absolute")
    policy = FailurePolicy(decision_timeout=timedelta(hours=4), delete_repository_on_abort=delete_repository)
    handle = await start(time_skipping_env, task_queue, make_spec(on_failure=policy))
    await awaiting_decision(handle)
    calls_before = len(systems.calls)

    await handle.execute_update(ProjectInitWorkflow.decide, OperatorDecision(FailureAction.ABORT, "wrong path"))
    failure = await failure_of(handle)

    rollback = systems.calls[calls_before:]
    expected = ["delete_flux_resources", "check_flux_deletion", "upsert_project_record"]
    assert rollback == ([*expected, "delete_repository"] if delete_repository else expected)
    assert systems.records[-1].status is ProjectStatus.ROLLED_BACK
    assert "wrong path" in systems.records[-1].last_message
    assert failure.type == ErrorType.FLUX_STALLED.value and "aborted" in failure.message
    # What the record, the run's failure and its progress tell: what failed, what was undone, and why.
    stalled = f"Flux reports Stalled for {REVISION}: InvalidPath: path is absolute"
    repository = "the repository is deleted" if delete_repository else "the repository is kept"
    outcome = f"rolled back: cluster resources removed; {repository}"
    assert systems.records[-1].last_message == f"await_ready failed: {stalled}; {outcome} (abort: wrong path)"
    assert failure.message == f"await_ready failed: {stalled} (aborted; {outcome})"
    progress = await handle.query(ProjectInitWorkflow.progress)
    states = steps_of(progress)
    assert progress.status is ProjectStatus.FAILED and progress.message == failure.message
    assert states[StepName.DELETE_FLUX_RESOURCES] is StepState.SUCCEEDED
    assert states[StepName.AWAIT_DELETION] is StepState.SUCCEEDED
    assert states[StepName.MARK_FAILED] is StepState.SUCCEEDED
    assert states[StepName.DELETE_REPOSITORY] is (StepState.SUCCEEDED if delete_repository else StepState.SKIPPED)
    slug = systems.records[-1].slug
    messages = {step.name: step.message for step in progress.steps}
    assert messages[StepName.MARK_FAILED] == f"record {slug} marked rolled_back"
    kept = "kept, as the failure policy says"
    assert messages[StepName.DELETE_REPOSITORY] == (f"deleted repository {slug}" if delete_repository else kept)


@pytest.mark.parametrize("delete_repository", [False, True])
async def test_an_abort_after_the_push_failed_rolls_back_the_record_and_the_repository(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str], delete_repository: bool
) -> None:
    """As after any other failure: the record ends rolled back (the slug is free again, not left awaiting a decision)
    and the repository, which exists, is deleted or kept as the policy says. Nothing was applied, so nothing is
    deleted from the cluster."""
    systems, task_queue = stubs
    systems.failures["push_template"] = [GIT_HOST_REJECTED]
    policy = FailurePolicy(decision_timeout=timedelta(hours=4), delete_repository_on_abort=delete_repository)
    handle = await start(time_skipping_env, task_queue, make_spec(on_failure=policy))
    await awaiting_decision(handle)
    calls_before = len(systems.calls)

    await handle.execute_update(ProjectInitWorkflow.decide, OperatorDecision(FailureAction.ABORT, "wrong host"))
    failure = await failure_of(handle)

    rollback = systems.calls[calls_before:]
    assert rollback == ["upsert_project_record", *(["delete_repository"] if delete_repository else [])]
    statuses = [record.status for record in systems.records]
    assert statuses == [ProjectStatus.PROVISIONING, ProjectStatus.AWAITING_DECISION, ProjectStatus.ROLLED_BACK]
    final = systems.records[-1]
    assert "push_template failed" in final.last_message and "wrong host" in final.last_message
    assert ("the repository is deleted" if delete_repository else "the repository is kept") in final.last_message
    assert final.repo_url is not None and final.commit_sha is None
    assert failure.type == ErrorType.GIT_HOST_REJECTED.value and "aborted" in failure.message
    # Nothing was applied, so the outcome names no cluster resources.
    outcome = "rolled back: " + ("the repository is deleted" if delete_repository else "the repository is kept")
    refused = "the Git host refused: 403 Forbidden"
    assert final.last_message == f"push_template failed: {refused}; {outcome} (abort: wrong host)"
    assert failure.message == f"push_template failed: {refused} (aborted; {outcome})"
    progress = await handle.query(ProjectInitWorkflow.progress)
    states = steps_of(progress)
    assert progress.status is ProjectStatus.FAILED and progress.message == failure.message
    assert states[StepName.PUSH_TEMPLATE] is StepState.FAILED
    assert states[StepName.APPLY_FLUX_RESOURCES] is StepState.PENDING
    assert StepName.DELETE_FLUX_RESOURCES not in states and StepName.AWAIT_DELETION not in states
    assert states[StepName.MARK_FAILED] is StepState.SUCCEEDED
    assert states[StepName.DELETE_REPOSITORY] is (StepState.SUCCEEDED if delete_repository else StepState.SKIPPED)


async def test_abort_before_anything_was_made_rolls_nothing_back(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    systems.failures["validate_template"] = [
        ApplicationError("no such template", type=ErrorType.UNKNOWN_TEMPLATE.value, non_retryable=True)
    ]
    handle = await start(time_skipping_env, task_queue, make_spec(on_failure=WAIT))
    await awaiting_decision(handle)
    await handle.execute_update(ProjectInitWorkflow.decide, OperatorDecision(FailureAction.ABORT))
    failure = await failure_of(handle)

    assert failure.type == ErrorType.UNKNOWN_TEMPLATE.value
    assert systems.calls == ["validate_template"]
    assert systems.records == []


@pytest.mark.parametrize("default_action", [FailureAction.ABORT, FailureAction.LEAVE])
async def test_no_decision_within_the_bound_applies_the_default(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str], default_action: FailureAction
) -> None:
    systems, task_queue = stubs
    systems.failures["apply_flux_resources"] = [REJECTED]
    policy = FailurePolicy(decision_timeout=timedelta(hours=6), default_action=default_action)
    failure = await run_to_failure(time_skipping_env, task_queue, make_spec(on_failure=policy))

    assert failure.type == ErrorType.CLUSTER_REJECTED.value
    rolled_back = "delete_flux_resources" in systems.calls
    assert rolled_back is (default_action is FailureAction.ABORT)
    # An abort undoes the creation and frees the slug; leave keeps a failed project.
    assert systems.records[-1].status is (ProjectStatus.ROLLED_BACK if rolled_back else ProjectStatus.FAILED)
    assert "delete_repository" not in systems.calls  # the default policy keeps the repository
    # The mirror and the final write are the decision bound apart in workflow time, and their written_at says so.
    awaiting, final = systems.records[-2:]
    assert awaiting.status is ProjectStatus.AWAITING_DECISION
    assert_written_in_order(systems.records)
    assert awaiting.written_at is not None and final.written_at is not None
    assert final.written_at - awaiting.written_at >= policy.decision_timeout


async def test_a_zero_bound_applies_the_default_at_once(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    systems.failures["apply_flux_resources"] = [REJECTED]
    policy = FailurePolicy(decision_timeout=timedelta(0), default_action=FailureAction.LEAVE)
    handle = await start(time_skipping_env, task_queue, make_spec(on_failure=policy))
    failure = await failure_of(handle)

    assert failure.type == ErrorType.CLUSTER_REJECTED.value
    statuses = [r.status for r in systems.records]
    assert ProjectStatus.AWAITING_DECISION not in statuses and statuses[-1] is ProjectStatus.FAILED
    events = [event async for event in handle.fetch_history_events()]
    assert not any(event.HasField("timer_started_event_attributes") for event in events)


async def test_a_decision_is_refused_unless_the_run_awaits_one(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    systems, task_queue = stubs
    released = asyncio.Event()
    systems.readiness = lambda poll: READY if released.is_set() else PROGRESSING
    running = await start(time_skipping_env, task_queue, make_spec(on_failure=WAIT))

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await running.execute_update(ProjectInitWorkflow.decide, OperatorDecision(FailureAction.ABORT))
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == NOT_AWAITING_DECISION
    assert "is not awaiting a decision" in cause.message
    # A rejected update leaves no trace in the history, and the run carries on.
    released.set()
    assert (await running.result()).status is ProjectStatus.READY
    events = [event async for event in running.fetch_history_events()]
    assert not any(event.HasField("workflow_execution_update_accepted_event_attributes") for event in events)


async def test_a_retried_ready_wait_applies_again_with_a_new_token(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    """An operator's retry of the Ready wait asks Flux to reconcile again: a new apply with a new requestedAt token,
    which the readiness check then waits for."""
    systems, task_queue = stubs
    stalled = ReadinessReport(ReadinessState.FAILED, "BuildFailed", "kustomize build failed")
    systems.readiness = lambda poll: stalled if poll == 1 else READY
    handle = await start(time_skipping_env, task_queue, make_spec(on_failure=WAIT))
    await awaiting_decision(handle)

    await handle.execute_update(ProjectInitWorkflow.decide, OperatorDecision(FailureAction.RETRY, "fixed the overlay"))
    result = await handle.result()

    assert result.status is ProjectStatus.READY
    first, second = systems.apply_requests
    assert first.requested_at != second.requested_at and first.commit_sha == second.commit_sha
    assert [check.requested_at for check in systems.readiness_requests] == [first.requested_at, second.requested_at]
    for done in ("validate_template", "create_repository", "push_template"):
        assert systems.calls.count(done) == 1


async def test_a_retried_ready_wait_shows_the_apply_running_again(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    """After the operator's retry of the Ready wait, the apply runs again before any check, with a new token, and
    the progress shows it running anew: not the first apply's finish, and the Ready wait pending behind it."""
    systems, task_queue = stubs
    stalled = ReadinessReport(ReadinessState.FAILED, "BuildFailed", "kustomize build failed")
    systems.readiness = lambda poll: stalled if poll == 1 else READY
    released = asyncio.Event()

    async def hold_the_second_apply(call: int) -> None:
        if call == 2:
            await released.wait()

    systems.holds["apply_flux_resources"] = hold_the_second_apply
    async with ended_at_the_end(await start(time_skipping_env, task_queue, make_spec(on_failure=WAIT))) as handle:
        await awaiting_decision(handle)
        await handle.execute_update(
            ProjectInitWorkflow.decide, OperatorDecision(FailureAction.RETRY, "fixed the overlay")
        )

        async def applying_again() -> Progress:
            while True:
                progress = await handle.query(ProjectInitWorkflow.progress)
                if systems.calls.count("apply_flux_resources") == 2 and progress.message == STEP_TITLES[APPLY]:
                    return progress
                await asyncio.sleep(0.05)

        try:
            progress = await asyncio.wait_for(applying_again(), timeout=30)
            checks_before_the_new_apply = systems.readiness_polls
        finally:
            released.set()
        apply = next(step for step in progress.steps if step.name is APPLY)
        assert progress.status is ProjectStatus.PROVISIONING
        assert apply.state is StepState.RUNNING and apply.attempt == 1 and apply.finished_at is None
        assert steps_of(progress)[StepName.AWAIT_READY] is StepState.PENDING
        assert checks_before_the_new_apply == 1  # the stalled one: no check before the new apply
        first, second = systems.apply_requests
        assert second.requested_at != first.requested_at

        result = await handle.result()
    assert result.status is ProjectStatus.READY
    assert systems.readiness_requests[-1].requested_at == second.requested_at


async def test_the_token_stays_the_same_across_the_retries_of_one_apply(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    """A retried apply must stay a no-op on the cluster: every attempt sends the token decided once."""
    systems, task_queue = stubs
    systems.failures["apply_flux_resources"] = [RuntimeError("connection reset")] * 2
    result = await (await start(time_skipping_env, task_queue, make_spec())).result()

    assert result.status is ProjectStatus.READY
    assert systems.calls.count("apply_flux_resources") == 3
    tokens = {request.requested_at for request in systems.apply_requests}
    assert len(systems.apply_requests) == 3 and len(tokens) == 1
    [check] = systems.readiness_requests
    assert {check.requested_at} == tokens


async def activity_summaries(handle: ProvisioningHandle, env: WorkflowEnvironment) -> list[str]:
    """The summaries the Temporal UI shows for the activities the run scheduled, in order."""
    converter = env.client.data_converter.payload_converter
    return [
        converter.from_payloads([event.user_metadata.summary])[0]
        async for event in handle.fetch_history_events()
        if event.HasField("activity_task_scheduled_event_attributes")
    ]


async def test_a_failed_rollback_ends_the_record_failed_with_what_went_wrong(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    """A rollback that fails itself stops there: the record says failed (the slug stays taken: something may be
    left), and the run's failure names both the failure and where the rollback stopped."""
    systems, task_queue = stubs
    systems.readiness = lambda poll: ReadinessReport(ReadinessState.FAILED, "InvalidPath", "path is absolute")
    systems.failures["delete_flux_resources"] = [
        ApplicationError("the cluster refused: forbidden", type=ErrorType.CLUSTER_REJECTED.value, non_retryable=True)
    ]
    handle = await start(time_skipping_env, task_queue, make_spec(on_failure=FailurePolicy(timedelta(0))))
    failure = await failure_of(handle)

    assert systems.calls[-3:] == ["check_flux_readiness", "delete_flux_resources", "upsert_project_record"]
    stalled = f"Flux reports Stalled for {REVISION}: InvalidPath: path is absolute"
    outcome = "rollback failed at delete_flux_resources: the cluster refused: forbidden"
    assert [record.status for record in systems.records] == [ProjectStatus.PROVISIONING, ProjectStatus.FAILED]
    assert systems.records[-1].last_message == f"await_ready failed: {stalled}; {outcome}"
    assert failure.type == ErrorType.FLUX_STALLED.value
    assert failure.message == f"await_ready failed: {stalled} (aborted; {outcome})"
    progress = await handle.query(ProjectInitWorkflow.progress)
    assert progress.status is ProjectStatus.FAILED and progress.message == failure.message
    states = steps_of(progress)
    assert states[StepName.DELETE_FLUX_RESOURCES] is StepState.FAILED
    assert states[StepName.MARK_FAILED] is StepState.PENDING and states[StepName.DELETE_REPOSITORY] is StepState.PENDING
    # The record write outside the step list is named in the Temporal UI by the status it records.
    assert (await activity_summaries(handle, time_skipping_env))[-1] == "Record the status failed"


async def test_an_aborted_update_keeps_the_project_and_records_the_failure(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str]
) -> None:
    """An update changes a live project: its abort deletes nothing (not even with delete_repository_on_abort) and
    leaves the record failed, not rolled back (the slug still holds the project)."""
    systems, task_queue = stubs
    systems.readiness = lambda poll: ReadinessReport(ReadinessState.FAILED, "InvalidPath", "path is absolute")
    slug = make_spec().slug
    policy = FailurePolicy(decision_timeout=timedelta(0), delete_repository_on_abort=True)
    change = ProjectUpdate(slug=slug, parameters={"owner": "ledger"}, on_failure=policy)
    handle = await time_skipping_env.client.start_workflow(
        ProjectUpdateWorkflow.run, change, id=project_workflow_id(slug), task_queue=task_queue
    )
    failure = await failure_of(handle)

    assert systems.calls[-2:] == ["check_flux_readiness", "upsert_project_record"]
    assert not {"delete_flux_resources", "check_flux_deletion", "delete_repository"} & set(systems.calls)
    assert [record.status for record in systems.records] == [ProjectStatus.UPDATING, ProjectStatus.FAILED]
    stalled = f"Flux reports Stalled for {REVISION}: InvalidPath: path is absolute"
    outcome = "update aborted: the project keeps its resources and its repository"
    decided = "abort: the failure policy decides at once"
    assert systems.records[-1].last_message == f"await_ready failed: {stalled}; {outcome} ({decided})"
    assert failure.type == ErrorType.FLUX_STALLED.value
    assert failure.message == f"await_ready failed: {stalled} (aborted; {outcome})"
    progress = await handle.query(ProjectUpdateWorkflow.progress)
    assert progress.status is ProjectStatus.FAILED and progress.message == failure.message
    states = steps_of(progress)
    assert states[StepName.MARK_FAILED] is StepState.SUCCEEDED
    assert not {StepName.DELETE_FLUX_RESOURCES, StepName.AWAIT_DELETION, StepName.DELETE_REPOSITORY} & set(states)
    mark_failed = next(step for step in progress.steps if step.name is StepName.MARK_FAILED)
    assert mark_failed.message == f"record {slug} marked failed"


async def test_a_failure_the_record_cannot_show_is_logged_and_the_run_still_ends(
    time_skipping_env: WorkflowEnvironment, stubs: tuple[StubSystems, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Showing a failure in the record is best effort: a refused write is logged as a warning, and the run ends
    failed as it would have."""
    systems, task_queue = stubs
    systems.failures["apply_flux_resources"] = [REJECTED]

    async def refuse_after_the_claim(call: int) -> None:
        if call > 1:
            raise ApplicationError("the database is read-only", non_retryable=True)

    systems.holds["upsert_project_record"] = refuse_after_the_claim
    spec = make_spec(on_failure=FailurePolicy(timedelta(0), FailureAction.LEAVE))
    with caplog.at_level(logging.WARNING, logger="temporalio.workflow"):
        failure = await run_to_failure(time_skipping_env, task_queue, spec)

    assert failure.type == ErrorType.CLUSTER_REJECTED.value
    assert systems.calls.count("upsert_project_record") == 2 and len(systems.records) == 1
    [warning] = [record for record in caplog.records if record.name == "temporalio.workflow"]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith(f"could not record failed for {spec.slug}: Activity task failed")


async def test_a_run_cancelled_while_recording_a_failure_ends_cancelled() -> None:
    """The best-effort record write swallows a failed write, never the run's cancellation.

    On a test server of its own: the record write it holds in flight while the run is cancelled stalls the shared
    server's time skipping for the tests after it."""
    async with time_skipping_environment() as env, stub_worker(env) as (systems, task_queue):
        systems.failures["apply_flux_resources"] = [REJECTED]
        recording, released = asyncio.Event(), asyncio.Event()

        async def hold_the_failure_record(call: int) -> None:
            if call > 1:
                recording.set()
                await released.wait()

        systems.holds["upsert_project_record"] = hold_the_failure_record
        spec = make_spec(on_failure=FailurePolicy(timedelta(0), FailureAction.LEAVE))
        handle = await start(env, task_queue, spec)

        try:
            await asyncio.wait_for(recording.wait(), timeout=20)
            await handle.cancel()
            with pytest.raises(WorkflowFailureError) as raised:
                await handle.result()
        finally:
            released.set()
        assert isinstance(raised.value.cause, CancelledError)
        assert (await handle.describe()).status is WorkflowExecutionStatus.CANCELED
