"""Removing what a project made, as workflow steps shared by ProjectTeardownWorkflow and the rollback of an aborted
ProjectInitWorkflow: delete the Flux objects and the Namespace, wait until they are gone, delete the repository.

Every step treats "already gone" as done, and the cluster activities delete only objects labelled as this project's.
Waiting is a loop of short checks between durable timers: a deletion waiting on finalizers holds no worker thread.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

from workflows.steps import PollSchedule, StepFailed, StepPolicy, StepRunner, describe_failure, step_policy

with workflow.unsafe.imports_passed_through():
    from provisioner.contracts import (
        DeletionReport,
        ErrorType,
        FluxDeletionRequest,
        FluxDeletionResult,
        RepositoryDeletionRequest,
        RepositoryDeletionResult,
        StepName,
    )

# Activity names (see workflows/project_init.py: the workflows import none of the activities' code).
DELETE_FLUX_RESOURCES = "delete_flux_resources"
CHECK_FLUX_DELETION = "check_flux_deletion"
DELETE_REPOSITORY = "delete_repository"

CLEANUP_POLICIES: dict[StepName, StepPolicy] = {
    StepName.DELETE_FLUX_RESOURCES: step_policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
    # One deletion check: retried by the server a few times; the wait loop itself is the outer retry.
    StepName.AWAIT_DELETION: step_policy(timedelta(seconds=20), 3, timedelta(seconds=2)),
    StepName.DELETE_REPOSITORY: step_policy(timedelta(seconds=30), 8, timedelta(seconds=30)),
}

DELETION_POLL_INITIAL_INTERVAL = timedelta(seconds=1)
DELETION_POLL_MAXIMUM_INTERVAL = timedelta(seconds=10)
DELETION_POLL_BACKOFF = 1.5


async def delete_cluster_resources(steps: StepRunner, slug: str, deletion_timeout: timedelta) -> None:
    """Request the deletion of the project's Kustomization, GitRepository and Namespace, then wait until they are
    gone (StepFailed with DeletionTimedOut if they outlive `deletion_timeout`)."""
    request = FluxDeletionRequest(namespace=slug, name=slug, project=slug)
    await steps.run(
        StepName.DELETE_FLUX_RESOURCES, DELETE_FLUX_RESOURCES, request, FluxDeletionResult, _describe_deletion
    )
    await _await_deletion(steps, request, deletion_timeout)


async def delete_repository(steps: StepRunner, slug: str) -> bool:
    """Delete the project's repository; False when there was none."""
    deleted = await steps.run(
        StepName.DELETE_REPOSITORY,
        DELETE_REPOSITORY,
        RepositoryDeletionRequest(slug=slug),
        RepositoryDeletionResult,
        lambda r: f"deleted repository {r.name}" if r.deleted else "no repository to delete",
    )
    return deleted.deleted


async def _await_deletion(steps: StepRunner, request: FluxDeletionRequest, deletion_timeout: timedelta) -> None:
    step = StepName.AWAIT_DELETION
    schedule = PollSchedule.starting_now(
        deletion_timeout, DELETION_POLL_INITIAL_INTERVAL, DELETION_POLL_MAXIMUM_INTERVAL, DELETION_POLL_BACKOFF
    )
    remaining_objects = "no check has answered yet"
    check = 0
    while True:
        check += 1
        try:
            report = await steps.check(step, check, CHECK_FLUX_DELETION, request, DeletionReport)
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise
            message, error_type, retryable = describe_failure(error)
            if not retryable:
                steps.fail(step, check, message)
                raise StepFailed(step, message, error_type) from None
            # The cluster API being briefly unreachable is as transient as an object still finalizing.
            waiting_on = f"{remaining_objects} (the last check failed: {message})"
        else:
            if report.gone:
                steps.succeed(step, "the Kustomization, GitRepository and Namespace are gone")
                return
            remaining_objects = waiting_on = report.describe()
        if schedule.expired():
            message = f"still present after {deletion_timeout}: {waiting_on}"
            steps.fail(step, check, message)
            raise StepFailed(step, message, ErrorType.DELETION_TIMED_OUT.value)
        steps.note(step, f"waiting: {waiting_on}")
        await schedule.sleep()


def _describe_deletion(result: FluxDeletionResult) -> str:
    if not result.requested:
        return "nothing to delete: " + ", ".join(result.absent) + " already absent"
    message = "deletion requested: " + ", ".join(result.requested)
    return message + (f"; already absent: {', '.join(result.absent)}" if result.absent else "")
