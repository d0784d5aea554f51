"""Flux itself failing, for several projects at once. tests/e2e/test_provision_end_to_end.py proves each case for
one project (test_flux_never_ready_ends_not_ready_with_the_reason, test_stalled_flux_fails_the_run_at_once_with_the_
reason); here they run concurrently, Flux's reason must reach the record and the progress too, and nothing may be
left twice or orphaned."""

from __future__ import annotations

from datetime import timedelta

from temporalio.exceptions import ApplicationError

from provisioner.contracts import ErrorType, FailureAction, FailurePolicy, ProjectStatus, StepName, StepState
from provisioner.db.projects import get_project
from tests.chaos.fault_stack import ChaosStack
from tests.chaos.verify import outcomes_of, start_runs, take_inventory, verify_exactly_once
from tests.stack import unique_slug
from workflows.project_init import ProjectInitWorkflow

PROJECTS = 5
READY_TIMEOUT = timedelta(seconds=4)
STALL_REASON, STALL_MESSAGE = "InvalidCELExpression", "healthCheckExprs is invalid"


async def test_flux_never_ready_ends_not_ready_with_the_reason(chaos: ChaosStack) -> None:
    stack, flux = chaos.stack, chaos.stack.cluster.flux
    before = take_inventory(stack, chaos.database_url)
    slugs = [unique_slug("held") for _ in range(PROJECTS)]
    for slug in slugs:
        flux.hold(namespace=slug)
    try:
        outcomes = await outcomes_of(await start_runs(stack, slugs, ready_timeout=READY_TIMEOUT), within_seconds=60)
    finally:
        for slug in slugs:
            flux.release(namespace=slug)

    figures = verify_exactly_once(stack, chaos.database_url, before, outcomes, ProjectStatus.NOT_READY)
    for slug, outcome in outcomes.items():
        result = outcome.result
        assert result is not None and result.readiness is not None
        reason = result.readiness.reason
        assert reason and reason != "CheckFailed", f"{slug}: not Flux's reason: {result.readiness}"
        assert reason in result.message
        await_ready = next(s for s in result.progress.steps if s.name is StepName.AWAIT_READY)
        assert await_ready.state is StepState.FAILED and reason in await_ready.message
        record = get_project(chaos.database_url, slug)
        assert record is not None and reason in record.last_message
    print(f"\nCHAOS flux never Ready (bound {READY_TIMEOUT}): {figures}")


async def test_stalled_flux_fails_each_run_at_once_with_the_reason(chaos: ChaosStack) -> None:
    stack, flux = chaos.stack, chaos.stack.cluster.flux
    before = take_inventory(stack, chaos.database_url)
    slugs = [unique_slug("stalled") for _ in range(PROJECTS)]
    for slug in slugs:
        flux.stall(slug, slug, reason=STALL_REASON, message=STALL_MESSAGE)
    # No operator is asked: the run ends at once and keeps what it made, so the exactly-once check sees it all.
    leave_at_once = FailurePolicy(decision_timeout=timedelta(0), default_action=FailureAction.LEAVE)
    try:
        handles = await start_runs(stack, slugs, ready_timeout=timedelta(minutes=5), on_failure=leave_at_once)
        outcomes = await outcomes_of(handles, within_seconds=60)
    finally:
        for slug in slugs:
            flux.unstall(slug, slug)

    figures = verify_exactly_once(stack, chaos.database_url, before, outcomes, ProjectStatus.FAILED)
    for slug, outcome in outcomes.items():
        assert outcome.failure is not None
        cause = outcome.failure.cause
        assert isinstance(cause, ApplicationError) and cause.type == ErrorType.FLUX_STALLED.value
        assert STALL_REASON in cause.message and STALL_MESSAGE in cause.message
        description = await handles[slug].describe()
        assert description.close_time is not None
        # "At once": far inside the 5 minute bound (a loaded machine may take a while to get there at all).
        assert description.close_time - description.start_time < timedelta(seconds=45)
        # The step itself: failed on Flux's first verdict, not at the bound.
        progress = await handles[slug].query(ProjectInitWorkflow.progress)
        await_ready = next(s for s in progress.steps if s.name is StepName.AWAIT_READY)
        assert await_ready.state is StepState.FAILED and STALL_REASON in await_ready.message
        assert await_ready.started_at is not None and await_ready.finished_at is not None
        assert await_ready.finished_at - await_ready.started_at < timedelta(seconds=20)
        record = get_project(chaos.database_url, slug)
        assert record is not None and STALL_REASON in record.last_message
    print(f"\nCHAOS flux Stalled=True: {figures}")
