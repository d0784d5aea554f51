"""ProjectTeardownWorkflow: remove one project's cluster resources (and, if asked, its repository), durably.

check that no provisioning run is active -> mark the record deleting -> delete the Kustomization, the GitRepository
and the Namespace -> wait until they are gone -> delete the repository (only if asked) -> mark the record deleted.

Every step is idempotent and treats "already gone" as done, so tearing down a deleted (or never provisioned)
project succeeds and creates nothing. Waiting is a loop of short checks between durable timers, as in
ProjectInitWorkflow: a teardown waiting on finalizers holds no worker thread.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

from workflows.cleanup import CLEANUP_POLICIES, delete_cluster_resources, delete_repository
from workflows.steps import StepFailed, StepPolicy, StepRunner, describe_failure, step_policy

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from provisioner.contracts import (
        TEARDOWN_STEPS,
        ErrorType,
        Progress,
        ProjectRecordUpdate,
        ProjectStatus,
        StepName,
        TeardownResult,
        TeardownSpec,
        provisioning_workflow_id,
        validate_teardown_spec,
    )

# Activity names (see workflows/project_init.py: the workflow imports none of the activities' code).
DESCRIBE_PROVISIONING_RUN = "describe_provisioning_run"
MARK_PROJECT_RECORD = "mark_project_record"  # update-only: never creates a record

STEP_POLICIES: dict[StepName, StepPolicy] = {
    StepName.MARK_DELETING: step_policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
    **CLEANUP_POLICIES,
    StepName.MARK_DELETED: step_policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
}
BUSY_CHECK_POLICY = step_policy(timedelta(seconds=10), 5, timedelta(seconds=5))

RUNNING = "RUNNING"  # temporalio.client.WorkflowExecutionStatus.RUNNING.name


# An input the spec cannot be built from fails the run at once instead of retrying its first task for ever.
@workflow.defn(name="ProjectTeardownWorkflow", failure_exception_types=[ValidationError])
class ProjectTeardownWorkflow:
    @workflow.init
    def __init__(self, spec: TeardownSpec) -> None:
        self._spec = spec
        self._steps = StepRunner(spec.slug, TEARDOWN_STEPS, STEP_POLICIES)
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
        await self._refuse_while_provisioning(slug)

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

    async def _refuse_while_provisioning(self, slug: str) -> None:
        """Fail with ProjectBusy, before anything is touched, while a provisioning run of `slug` is running.

        A provisioning started after this check is not prevented (Temporal has no cross-workflow lock); the
        client refuses to start a teardown during provisioning as well, which narrows that window to a race.
        """
        step = StepName.MARK_DELETING
        try:
            status = await self._steps.run_once(
                DESCRIBE_PROVISIONING_RUN, slug, BUSY_CHECK_POLICY, "Check that no provisioning run is active"
            )
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise
            message, error_type, _ = describe_failure(error)
            message = f"could not check for a running provisioning of {slug}: {message}"
            self._steps.fail(step, 1, message)
            raise StepFailed(step, message, error_type) from None
        if status == RUNNING:
            message = (
                f"project {slug} is being provisioned (workflow {provisioning_workflow_id(slug)} is running); "
                "refusing to tear it down: wait for the provisioning to end, or cancel it, then try again"
            )
            self._steps.fail(step, 1, message)
            raise StepFailed(step, message, ErrorType.PROJECT_BUSY.value)

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
