"""ProjectInitWorkflow: provision one project, step by step, durably.

validate and render the template -> create the repository -> push the template -> persist the record
-> apply the Flux resources -> await Ready (optional) -> finalize the record.

Each step is an activity with its own timeout and retry policy (workflows/steps.py). Waiting for Ready is a loop
of short activities between durable timers, so a waiting project holds no worker thread.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

from workflows.steps import PollSchedule, StepFailed, StepPolicy, StepRunner, describe_failure, step_policy

with workflow.unsafe.imports_passed_through():
    from provisioner.contracts import (
        PROVISIONING_STEPS,
        ErrorType,
        FluxApplyRequest,
        FluxApplyResult,
        Progress,
        ProjectRecordUpdate,
        ProjectSpec,
        ProjectStatus,
        ProvisioningResult,
        PushRequest,
        PushResult,
        ReadinessReport,
        ReadinessRequest,
        ReadinessState,
        RenderSummary,
        RepositoryInfo,
        StepName,
        StepState,
        validate_spec,
    )
    from provisioner.telemetry import AWAITING_READY_RUNS

# Activity names: the workflow refers to activities by name so that it imports none of their (side-effecting) code.
VALIDATE_TEMPLATE = "validate_template"
CREATE_REPOSITORY = "create_repository"
PUSH_TEMPLATE = "push_template"
UPSERT_PROJECT_RECORD = "upsert_project_record"
APPLY_FLUX_RESOURCES = "apply_flux_resources"
CHECK_FLUX_READINESS = "check_flux_readiness"

STEP_POLICIES: dict[StepName, StepPolicy] = {
    StepName.VALIDATE_TEMPLATE: step_policy(timedelta(seconds=30), 3, timedelta(seconds=5)),
    StepName.CREATE_REPOSITORY: step_policy(timedelta(seconds=30), 8, timedelta(seconds=30)),
    StepName.PUSH_TEMPLATE: step_policy(timedelta(minutes=2), 8, timedelta(seconds=30)),
    StepName.PERSIST_RECORD: step_policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
    StepName.APPLY_FLUX_RESOURCES: step_policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
    # One readiness check: retried by the server a few times; the wait loop itself is the outer retry.
    StepName.AWAIT_READY: step_policy(timedelta(seconds=20), 3, timedelta(seconds=2)),
    StepName.FINALIZE_RECORD: step_policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
}

READY_POLL_INITIAL_INTERVAL = timedelta(seconds=1)
READY_POLL_MAXIMUM_INTERVAL = timedelta(seconds=10)
READY_POLL_BACKOFF = 1.5


@workflow.defn(name="ProjectInitWorkflow")
class ProjectInitWorkflow:
    @workflow.init
    def __init__(self, spec: ProjectSpec) -> None:
        self._spec = spec
        self._steps = StepRunner(spec.slug, PROVISIONING_STEPS, STEP_POLICIES)
        self._record_written = False

    @workflow.query
    def progress(self) -> Progress:
        return self._steps.progress()

    @workflow.run
    async def run(self, spec: ProjectSpec) -> ProvisioningResult:
        self._steps.set_status(ProjectStatus.PROVISIONING, f"provisioning {spec.slug} from template {spec.template}")
        try:
            result = await self._provision(spec)
        except StepFailed as failure:
            await self._record_failure(failure)
            self._steps.record_provisioning(spec.template, ProjectStatus.FAILED)
            raise self._steps.fail_run(failure) from None
        self._steps.record_provisioning(spec.template, result.status)
        return result

    async def _provision(self, spec: ProjectSpec) -> ProvisioningResult:
        steps = self._steps
        field_errors = validate_spec(spec)
        if field_errors:
            message = "invalid project request: " + "; ".join(map(str, field_errors))
            steps.fail(StepName.VALIDATE_TEMPLATE, 1, message)
            raise StepFailed(StepName.VALIDATE_TEMPLATE, message, ErrorType.INVALID_INPUT.value)

        rendered = await steps.run(
            StepName.VALIDATE_TEMPLATE,
            VALIDATE_TEMPLATE,
            spec,
            RenderSummary,
            lambda r: f"{r.file_count} files render; kustomization found at {r.kustomize_path}",
        )
        repository = await steps.run(
            StepName.CREATE_REPOSITORY,
            CREATE_REPOSITORY,
            spec,
            RepositoryInfo,
            lambda r: f"{'created' if r.created else 'already present'}: {r.clone_url}",
        )
        pushed = await steps.run(
            StepName.PUSH_TEMPLATE,
            PUSH_TEMPLATE,
            PushRequest(spec=spec, repository=repository),
            PushResult,
            lambda r: f"{'pushed' if r.pushed else 'already up to date at'} {r.branch}@{r.commit_sha[:12]}",
        )
        record = self._record(ProjectStatus.PROVISIONING, "template pushed; applying Flux resources")
        record.repo_url, record.commit_sha = repository.clone_url, pushed.commit_sha
        await steps.run(
            StepName.PERSIST_RECORD,
            UPSERT_PROJECT_RECORD,
            record,
            object,
            lambda _: f"record {spec.slug} saved as {ProjectStatus.PROVISIONING.value}",
        )
        self._record_written = True
        await steps.run(
            StepName.APPLY_FLUX_RESOURCES,
            APPLY_FLUX_RESOURCES,
            FluxApplyRequest(
                spec=spec, repository=repository, commit_sha=pushed.commit_sha, kustomize_path=rendered.kustomize_path
            ),
            FluxApplyResult,
            lambda r: "applied " + ", ".join(f"{o.kind}/{o.name}" for o in r.objects),
        )

        readiness: ReadinessReport | None = None
        if spec.wait_for_ready:
            with AWAITING_READY_RUNS.waiting(workflow.info().run_id):
                readiness = await self._await_ready(spec)
            status = ProjectStatus.READY if readiness.state is ReadinessState.READY else ProjectStatus.NOT_READY
        else:
            steps.skip(StepName.AWAIT_READY, "not requested")
            status = ProjectStatus.PROVISIONED
        message = _outcome_message(status, readiness)

        await steps.run(
            StepName.FINALIZE_RECORD,
            UPSERT_PROJECT_RECORD,
            ProjectRecordUpdate(slug=spec.slug, status=status, last_message=message),
            object,
            lambda _: f"record {spec.slug} marked {status.value}",
        )
        steps.set_status(status, message)
        return ProvisioningResult(
            slug=spec.slug,
            status=status,
            message=message,
            repo_url=repository.clone_url,
            commit_sha=pushed.commit_sha,
            namespace=spec.namespace,
            readiness=readiness,
            progress=self.progress(),
        )

    async def _await_ready(self, spec: ProjectSpec) -> ReadinessReport:
        step, steps = StepName.AWAIT_READY, self._steps
        schedule = PollSchedule.starting_now(
            spec.ready_timeout, READY_POLL_INITIAL_INTERVAL, READY_POLL_MAXIMUM_INTERVAL, READY_POLL_BACKOFF
        )
        request = ReadinessRequest(namespace=spec.namespace, name=spec.slug)
        check = 0
        while True:
            check += 1
            try:
                report = await steps.check(step, check, CHECK_FLUX_READINESS, request, ReadinessReport)
            except ActivityError as error:
                if is_cancelled_exception(error):
                    raise
                # The cluster API being briefly unreachable is as transient as a reconciling object.
                message, _, _ = describe_failure(error)
                report = ReadinessReport(state=ReadinessState.IN_PROGRESS, reason="CheckFailed", message=message)
            if report.state is ReadinessState.READY:
                steps.succeed(step, f"Ready: {report.message}")
                return report
            if report.state is ReadinessState.FAILED:
                message = f"Flux reports Stalled: {report.reason}: {report.message}"
                steps.fail(step, check, message)
                raise StepFailed(step, message, ErrorType.FLUX_STALLED.value)
            if schedule.expired():
                steps.fail(step, check, f"not Ready after {spec.ready_timeout}: {report.reason}: {report.message}")
                return report
            steps.note(step, f"waiting: {report.reason}: {report.message}")
            await schedule.sleep()

    async def _record_failure(self, failure: StepFailed) -> None:
        """Mirror the failure in the database, but only when something external exists to describe."""
        steps, spec = self._steps, self._spec
        steps.set_status(ProjectStatus.FAILED, f"{failure.step.value} failed: {failure.message}")
        repository_created = steps.step(StepName.CREATE_REPOSITORY).state is StepState.SUCCEEDED
        if not (self._record_written or repository_created):
            return
        try:
            await steps.run_once(
                UPSERT_PROJECT_RECORD,
                self._record(ProjectStatus.FAILED, steps.message),
                STEP_POLICIES[StepName.FINALIZE_RECORD],
                "Record the failure",
            )
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise
            workflow.logger.warning("could not record the failure of %s: %s", spec.slug, error)

    def _record(self, status: ProjectStatus, message: str) -> ProjectRecordUpdate:
        """The whole record as this run knows it: either write may be the first to create the row."""
        spec = self._spec
        return ProjectRecordUpdate(
            slug=spec.slug,
            status=status,
            display_name=spec.display_name,
            template=spec.template,
            environment=spec.environment,
            namespace=spec.namespace,
            workflow_id=workflow.info().workflow_id,
            last_message=message,
        )


def _outcome_message(status: ProjectStatus, readiness: ReadinessReport | None) -> str:
    if status is ProjectStatus.READY and readiness is not None:
        return f"Flux reports Ready: {readiness.message}"
    if status is ProjectStatus.NOT_READY and readiness is not None:
        return f"resources exist but Flux is not Ready: {readiness.reason}: {readiness.message}"
    return "resources exist; readiness was not awaited"
