"""ProjectUpdateWorkflow and ProjectPreviewWorkflow: change a live project, or show what a change would push.

update: read the project's record -> merge the change into its spec -> then the same steps as a create
(workflows/project_init.py): validate and render, persist the record (status `updating`), find the repository,
push a new commit only if the rendered tree changed, apply with a new requestedAt token, await Ready for exactly
that commit, finalize. It runs under the project's workflow id, so it never overlaps a create or a teardown.

preview (a dry run): read the record -> merge -> validate and render -> diff against the branch head. It writes
nothing anywhere, and runs under its own id beside the project's operations.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.project_init import STEP_POLICIES, ProvisioningRun, validate_template
from workflows.steps import StepFailed, StepRunner

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from provisioner.contracts import (
        PREVIEW_STEPS,
        UPDATE_STEPS,
        ErrorType,
        Progress,
        ProjectOperation,
        ProjectSpec,
        ProjectStatus,
        ProjectUpdate,
        ProvisioningResult,
        StepName,
        StoredProject,
        UpdatePreview,
        validate_update,
    )

READ_PROJECT_RECORD = "read_project_record"
PREVIEW_PUSH = "preview_push"


async def read_project(steps: StepRunner, change: ProjectUpdate) -> ProjectSpec:
    """The whole spec the change asks for: the live project's stored identity with `change` applied."""
    field_errors = validate_update(change)
    if field_errors:
        message = "invalid update request: " + "; ".join(map(str, field_errors))
        steps.fail(StepName.READ_PROJECT, 1, message)
        raise StepFailed(StepName.READ_PROJECT, message, ErrorType.INVALID_INPUT.value)
    stored: StoredProject | None = await steps.run(
        StepName.READ_PROJECT,
        READ_PROJECT_RECORD,
        change.slug,
        StoredProject | None,  # type: ignore[arg-type]
        lambda found: (
            f"{found.identity.template} project in {found.identity.environment}, {found.status.value}"
            if found
            else "no project"
        ),
    )
    if stored is None:
        message = f"there is no project {change.slug!r} to update (never created, deleted or rolled back)"
        steps.fail(StepName.READ_PROJECT, 1, message)
        raise StepFailed(StepName.READ_PROJECT, message, ErrorType.NO_SUCH_PROJECT.value)
    return change.applied_to(stored.identity)


# An input the request cannot be built from fails the run at once instead of retrying its first task for ever.
@workflow.defn(name="ProjectUpdateWorkflow", failure_exception_types=[ValidationError])
class ProjectUpdateWorkflow(ProvisioningRun):
    """Update a live project: new parameters (merged), environment or display name; never another template."""

    operation = ProjectOperation.UPDATE
    active_status = ProjectStatus.UPDATING

    @workflow.init
    def __init__(self, change: ProjectUpdate) -> None:
        super().__init__(change.slug, None, UPDATE_STEPS)

    @workflow.run
    async def run(self, change: ProjectUpdate) -> ProvisioningResult:
        steps = self._steps
        steps.set_status(ProjectStatus.UPDATING, f"updating {change.slug}")
        try:
            spec = await read_project(steps, change)
        except StepFailed as failure:  # no project, or a malformed change: nothing was made, nothing to decide
            steps.set_status(ProjectStatus.FAILED, f"{failure.step.value} failed: {failure.message}")
            raise steps.fail_run(failure) from None
        return await self._provision_until_decided(spec)


@workflow.defn(name="ProjectPreviewWorkflow", failure_exception_types=[ValidationError])
class ProjectPreviewWorkflow:
    """What an update would push: the unified diff of the rendered files against the branch head. Changes nothing."""

    @workflow.init
    def __init__(self, change: ProjectUpdate) -> None:
        self._steps = StepRunner(change.slug, PREVIEW_STEPS, STEP_POLICIES, ProjectOperation.UPDATE)

    @workflow.query
    def progress(self) -> Progress:
        return self._steps.progress()

    @workflow.run
    async def run(self, change: ProjectUpdate) -> UpdatePreview:
        steps = self._steps
        steps.set_status(ProjectStatus.UPDATING, f"previewing an update of {change.slug} (dry run)")
        try:
            spec = await read_project(steps, change)
            await validate_template(steps, spec)
            preview = await steps.run(
                StepName.PREVIEW_CHANGES,
                PREVIEW_PUSH,
                spec,
                UpdatePreview,
                lambda p: f"{len(p.changed_files)} files would change" if p.changed_files else "nothing would change",
            )
        except StepFailed as failure:
            steps.set_status(ProjectStatus.FAILED, f"{failure.step.value} failed: {failure.message}")
            raise steps.fail_run(failure) from None
        steps.set_status(ProjectStatus.READY, "dry run: nothing was changed")
        return preview
