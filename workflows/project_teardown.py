"""ProjectTeardownWorkflow: remove one project's cluster resources (and, if asked, its repository), durably.

mark the record deleting -> delete the Kustomization, the GitRepository and the Namespace -> wait until they are
gone -> delete the repository (only if asked) -> mark the record deleted.

It runs under the project's workflow id (`project-<slug>`), shared with create and update: Temporal refuses to start
it while the project is being created or updated, and refuses those while it runs.

Every step is idempotent and treats "already gone" as done, so tearing down a deleted (or never provisioned)
project succeeds and creates nothing. Waiting is a loop of short checks between durable timers, as in
ProjectInitWorkflow: a teardown waiting on finalizers holds no worker thread.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

from workflows.cleanup import CLEANUP_POLICIES, delete_cluster_resources, delete_repository
from workflows.steps import StepFailed, StepPolicy, StepRunner, step_policy

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from provisioner.contracts import (
        TEARDOWN_STEPS,
        ErrorType,
        Progress,
        ProjectOperation,
        ProjectRecordUpdate,
        ProjectStatus,
        StepName,
        TeardownResult,
        TeardownSpec,
        validate_teardown_spec,
    )

# Activity names (see workflows/project_init.py: the workflow imports none of the activities' code).
MARK_PROJECT_RECORD = "mark_project_record"  # update-only: never creates a record

STEP_POLICIES: dict[StepName, StepPolicy] = {
    StepName.MARK_DELETING: step_policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
    **CLEANUP_POLICIES,
    StepName.MARK_DELETED: step_policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
}


# An input the spec cannot be built from fails the run at once instead of retrying its first task for ever.
@workflow.defn(name="ProjectTeardownWorkflow", failure_exception_types=[ValidationError])
class ProjectTeardownWorkflow:
    @workflow.init
    def __init__(self, spec: TeardownSpec) -> None:
        self._spec = spec
        self._steps = StepRunner(spec.slug, TEARDOWN_STEPS, STEP_POLICIES, ProjectOperation.TEARDOWN)
        self._record_exists = False

    @workflow.query
    def progress(self) -> Progress:
        return self._steps.progress()

    @workflow.run
    async def run(self, spec: TeardownSpec) -> TeardownResult:
        try:
            return await self._teardown(spec)
        except StepFailed as failure:
            await self._record_failure(failure)
            raise self._steps.fail_run(failure) from None

    async def _teardown(self, spec: TeardownSpec) -> TeardownResult:
        steps, slug = self._steps, spec.slug
        field_errors = validate_teardown_spec(spec)
        if field_errors:
            message = "invalid teardown request: " + "; ".join(map(str, field_errors))
            steps.fail(StepName.MARK_DELETING, 1, message)
            raise StepFailed(StepName.MARK_DELETING, message, ErrorType.INVALID_INPUT.value)

        steps.set_status(ProjectStatus.DELETING, f"tearing down {slug}")
        marked = await steps.run(
            StepName.MARK_DELETING,
            MARK_PROJECT_RECORD,
            ProjectRecordUpdate(
                slug=slug,
                status=ProjectStatus.DELETING,
                workflow_id=workflow.info().workflow_id,
                last_message="teardown started: deleting the cluster resources",
                written_at=workflow.now(),
            ),
            object,
            lambda r: f"record {slug} marked deleting" if r is not None else "no record: nothing to mark",
        )
        self._record_exists = marked is not None

        await delete_cluster_resources(steps, slug, spec.deletion_timeout)

        repository_deleted = False
        if spec.delete_repository:
            repository_deleted = await delete_repository(steps, slug)
            repository = "repository deleted" if repository_deleted else "no repository to delete"
        else:
            steps.skip(StepName.DELETE_REPOSITORY, "kept: the repository stays (deletion not requested)")
            repository = "repository kept"
        message = f"cluster resources deleted; {repository}"

        await steps.run(
            StepName.MARK_DELETED,
            MARK_PROJECT_RECORD,
            ProjectRecordUpdate(
                slug=slug, status=ProjectStatus.DELETED, last_message=message, written_at=workflow.now()
            ),
            object,
            lambda r: f"record {slug} marked deleted" if r is not None else "no record: nothing to mark",
        )
        steps.set_status(ProjectStatus.DELETED, message)
        return TeardownResult(
            slug=slug,
            status=ProjectStatus.DELETED,
            message=message,
            repository_deleted=repository_deleted,
            progress=self.progress(),
        )

    async def _record_failure(self, failure: StepFailed) -> None:
        """Mirror the failure in the record, but only when this teardown found one and started changing it."""
        steps, spec = self._steps, self._spec
        steps.set_status(ProjectStatus.FAILED, f"{failure.step.value} failed: {failure.message}")
        if not self._record_exists:
            return
        update = ProjectRecordUpdate(
            slug=spec.slug,
            status=ProjectStatus.FAILED,
            last_message=f"teardown failed: {steps.message}",
            written_at=workflow.now(),
        )
        try:
            await steps.run_once(
                MARK_PROJECT_RECORD, update, STEP_POLICIES[StepName.MARK_DELETED], "Record the failure"
            )
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise
            workflow.logger.warning("could not record the failed teardown of %s: %s", spec.slug, error)
