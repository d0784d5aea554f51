"""ProjectInitWorkflow: provision one project, step by step, durably.

validate and render the template -> create the repository -> push the template -> persist the record
-> apply the Flux resources -> await Ready (optional) -> finalize the record.

Each step is an activity with its own timeout and retry policy. Retries are driven here, in the workflow, rather
than by the server, so that the `progress` query can show every attempt and the error that caused it while it
happens: that visibility is the point of this product. Waiting for Ready is a loop of short activities between
durable timers, so a waiting project holds no worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from provisioner.contracts import (
        STEP_TITLES,
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
        StepProgress,
        StepState,
        validate_spec,
    )

ResultT = TypeVar("ResultT")

# Activity names: the workflow refers to activities by name so that it imports none of their (side-effecting) code.
VALIDATE_TEMPLATE = "validate_template"
CREATE_REPOSITORY = "create_repository"
PUSH_TEMPLATE = "push_template"
UPSERT_PROJECT_RECORD = "upsert_project_record"
APPLY_FLUX_RESOURCES = "apply_flux_resources"
CHECK_FLUX_READINESS = "check_flux_readiness"

PERMANENT_ERROR_TYPES = [error_type.value for error_type in ErrorType]


@dataclass(frozen=True)
class StepPolicy:
    """How long one attempt of a step may take and how it is retried."""

    attempt_timeout: timedelta
    retry: RetryPolicy


def _policy(attempt_timeout: timedelta, maximum_attempts: int, maximum_interval: timedelta) -> StepPolicy:
    return StepPolicy(
        attempt_timeout=attempt_timeout,
        retry=RetryPolicy(
            initial_interval=timedelta(seconds=1),
            backoff_coefficient=2.0,
            maximum_interval=maximum_interval,
            maximum_attempts=maximum_attempts,
            non_retryable_error_types=PERMANENT_ERROR_TYPES,
        ),
    )


STEP_POLICIES: dict[StepName, StepPolicy] = {
    StepName.VALIDATE_TEMPLATE: _policy(timedelta(seconds=30), 3, timedelta(seconds=5)),
    StepName.CREATE_REPOSITORY: _policy(timedelta(seconds=30), 8, timedelta(seconds=30)),
    StepName.PUSH_TEMPLATE: _policy(timedelta(minutes=2), 8, timedelta(seconds=30)),
    StepName.PERSIST_RECORD: _policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
    StepName.APPLY_FLUX_RESOURCES: _policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
    StepName.AWAIT_READY: _policy(timedelta(seconds=20), 1, timedelta(seconds=1)),  # one poll; the loop retries
    StepName.FINALIZE_RECORD: _policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
}

READY_POLL_INITIAL_INTERVAL = timedelta(seconds=1)
READY_POLL_MAXIMUM_INTERVAL = timedelta(seconds=10)
READY_POLL_BACKOFF = 1.5


class StepFailed(Exception):
    """A step ran out of attempts or hit a permanent error; carries the failure to report."""

    def __init__(self, step: StepName, message: str, error_type: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        self.error_type = error_type


@workflow.defn(name="ProjectInitWorkflow")
class ProjectInitWorkflow:
    @workflow.init
    def __init__(self, spec: ProjectSpec) -> None:
        self._spec = spec
        self._status = ProjectStatus.PENDING
        self._message = "waiting to start"
        self._steps = {name: StepProgress(name=name, title=STEP_TITLES[name]) for name in StepName}
        self._updated_at = workflow.now()
        self._record_written = False

    @workflow.query
    def progress(self) -> Progress:
        steps = list(self._steps.values())
        done = sum(step.state in (StepState.SUCCEEDED, StepState.SKIPPED) for step in steps)
        return Progress(
            slug=self._spec.slug,
            workflow_id=workflow.info().workflow_id,
            status=self._status,
            percent=done * 100 // len(steps),
            steps=steps,
            message=self._message,
            updated_at=self._updated_at,
        )

    @workflow.run
    async def run(self, spec: ProjectSpec) -> ProvisioningResult:
        self._set_status(ProjectStatus.PROVISIONING, f"provisioning {spec.slug} from template {spec.template}")
        try:
            return await self._provision(spec)
        except StepFailed as failure:
            await self._record_failure(failure)
            raise ApplicationError(
                f"{failure.step.value} failed: {failure.message}",
                {"step": failure.step.value, "progress": self.progress()},
                type=failure.error_type,
                non_retryable=True,
            ) from None

    async def _provision(self, spec: ProjectSpec) -> ProvisioningResult:
        field_errors = validate_spec(spec)
        if field_errors:
            self._fail_step(
                StepName.VALIDATE_TEMPLATE, 1, "invalid project request: " + "; ".join(map(str, field_errors))
            )
            raise StepFailed(StepName.VALIDATE_TEMPLATE, self._message, ErrorType.INVALID_INPUT.value)

        rendered = await self._run_step(
            StepName.VALIDATE_TEMPLATE,
            VALIDATE_TEMPLATE,
            spec,
            RenderSummary,
            lambda r: f"{r.file_count} files render; kustomization found at {r.kustomize_path}",
        )
        repository = await self._run_step(
            StepName.CREATE_REPOSITORY,
            CREATE_REPOSITORY,
            spec,
            RepositoryInfo,
            lambda r: f"{'created' if r.created else 'already present'}: {r.clone_url}",
        )
        pushed = await self._run_step(
            StepName.PUSH_TEMPLATE,
            PUSH_TEMPLATE,
            PushRequest(spec=spec, repository=repository),
            PushResult,
            lambda r: f"{'pushed' if r.pushed else 'already up to date at'} {r.branch}@{r.commit_sha[:12]}",
        )
        record = ProjectRecordUpdate(
            slug=spec.slug,
            status=ProjectStatus.PROVISIONING,
            display_name=spec.display_name,
            template=spec.template,
            environment=spec.environment,
            namespace=spec.namespace,
            workflow_id=workflow.info().workflow_id,
            repo_url=repository.clone_url,
            commit_sha=pushed.commit_sha,
            last_message="template pushed; applying Flux resources",
        )
        await self._run_step(
            StepName.PERSIST_RECORD,
            UPSERT_PROJECT_RECORD,
            record,
            object,
            lambda _: f"record {spec.slug} saved as {ProjectStatus.PROVISIONING.value}",
        )
        self._record_written = True
        await self._run_step(
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
            readiness = await self._await_ready(spec)
            status = ProjectStatus.READY if readiness.state is ReadinessState.READY else ProjectStatus.NOT_READY
        else:
            self._skip_step(StepName.AWAIT_READY, "not requested")
            status = ProjectStatus.PROVISIONED
        message = _outcome_message(status, readiness)

        await self._run_step(
            StepName.FINALIZE_RECORD,
            UPSERT_PROJECT_RECORD,
            ProjectRecordUpdate(slug=spec.slug, status=status, last_message=message),
            object,
            lambda _: f"record {spec.slug} marked {status.value}",
        )
        self._set_status(status, message)
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

    async def _run_step(
        self,
        step: StepName,
        activity_name: str,
        argument: Any,
        result_type: type[ResultT],
        describe: Callable[[ResultT], str],
    ) -> ResultT:
        """Run one step's activity until it succeeds, fails permanently or runs out of attempts."""
        policy = STEP_POLICIES[step]
        retry = policy.retry
        maximum_attempts = retry.maximum_attempts
        interval = retry.initial_interval
        attempt = 0
        while True:
            attempt += 1
            self._start_step(step, attempt)
            try:
                result: ResultT = await workflow.execute_activity(
                    activity_name,
                    argument,
                    result_type=result_type,
                    start_to_close_timeout=policy.attempt_timeout,
                    # One attempt per activity call: this loop owns the retries (see the module docstring).
                    retry_policy=RetryPolicy(maximum_attempts=1),
                    summary=STEP_TITLES[step],
                )
            except ActivityError as error:
                if is_cancelled_exception(error):
                    raise
                message, error_type, retryable = _describe_failure(error)
                if not retryable or (maximum_attempts and attempt >= maximum_attempts):
                    self._fail_step(step, attempt, message)
                    raise StepFailed(step, message, error_type) from None
                self._steps[step].message = f"attempt {attempt} failed: {message}; retrying in {interval}"
                self._touch()
                await workflow.sleep(interval)
                interval = min(interval * retry.backoff_coefficient, retry.maximum_interval or interval)
                continue
            self._succeed_step(step, describe(result))
            return result

    async def _await_ready(self, spec: ProjectSpec) -> ReadinessReport:
        step = StepName.AWAIT_READY
        policy = STEP_POLICIES[step]
        deadline = workflow.now() + spec.ready_timeout
        interval = READY_POLL_INITIAL_INTERVAL
        request = ReadinessRequest(namespace=spec.namespace, name=spec.slug)
        report = ReadinessReport(
            state=ReadinessState.IN_PROGRESS, reason="NotChecked", message="readiness not yet checked"
        )
        poll = 0
        while True:
            poll += 1
            self._start_step(step, poll)
            try:
                report = await workflow.execute_activity(
                    CHECK_FLUX_READINESS,
                    request,
                    result_type=ReadinessReport,
                    start_to_close_timeout=policy.attempt_timeout,
                    retry_policy=policy.retry,
                    summary=STEP_TITLES[step],
                )
            except ActivityError as error:
                if is_cancelled_exception(error):
                    raise
                # The cluster API being briefly unreachable is as transient as a reconciling object.
                message, _, _ = _describe_failure(error)
                report = ReadinessReport(state=ReadinessState.IN_PROGRESS, reason="CheckFailed", message=message)
            if report.state is ReadinessState.READY:
                self._succeed_step(step, f"Ready: {report.message}")
                return report
            if report.state is ReadinessState.FAILED:
                message = f"Flux reports Stalled: {report.reason}: {report.message}"
                self._fail_step(step, poll, message)
                raise StepFailed(step, message, ErrorType.FLUX_STALLED.value)
            remaining = deadline - workflow.now()
            if remaining <= timedelta(0):
                self._fail_step(
                    step,
                    poll,
                    f"not Ready after {spec.ready_timeout}: {report.reason}: {report.message}",
                )
                return report
            self._steps[step].message = f"waiting: {report.reason}: {report.message}"
            self._touch()
            await workflow.sleep(min(interval, remaining))
            interval = min(interval * READY_POLL_BACKOFF, READY_POLL_MAXIMUM_INTERVAL)

    async def _record_failure(self, failure: StepFailed) -> None:
        """Mirror the failure in the database, but only when something external exists to describe."""
        self._set_status(ProjectStatus.FAILED, f"{failure.step.value} failed: {failure.message}")
        repository_created = self._steps[StepName.CREATE_REPOSITORY].state is StepState.SUCCEEDED
        if not (self._record_written or repository_created):
            return
        spec = self._spec
        update = ProjectRecordUpdate(
            slug=spec.slug,
            status=ProjectStatus.FAILED,
            display_name=spec.display_name,
            template=spec.template,
            environment=spec.environment,
            namespace=spec.namespace,
            workflow_id=workflow.info().workflow_id,
            last_message=self._message,
        )
        policy = STEP_POLICIES[StepName.FINALIZE_RECORD]
        try:
            await workflow.execute_activity(
                UPSERT_PROJECT_RECORD,
                update,
                start_to_close_timeout=policy.attempt_timeout,
                retry_policy=policy.retry,
                summary="Record the failure",
            )
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise
            workflow.logger.warning("could not record the failure of %s: %s", spec.slug, error)

    # ---- progress bookkeeping -----------------------------------------------------------------------------

    def _touch(self) -> None:
        self._updated_at = workflow.now()

    def _set_status(self, status: ProjectStatus, message: str) -> None:
        self._status = status
        self._message = message
        self._touch()
        workflow.set_current_details(f"**{status.value}**: {message}")

    def _start_step(self, step: StepName, attempt: int) -> None:
        progress = self._steps[step]
        if progress.state is not StepState.RUNNING:
            progress.state = StepState.RUNNING
            progress.started_at = workflow.now()
            progress.message = ""
        progress.attempt = attempt
        self._message = STEP_TITLES[step]
        self._touch()
        workflow.set_current_details(f"**{self._status.value}**: {STEP_TITLES[step]} (attempt {attempt})")

    def _succeed_step(self, step: StepName, message: str) -> None:
        self._finish_step(step, StepState.SUCCEEDED, message)

    def _skip_step(self, step: StepName, message: str) -> None:
        self._finish_step(step, StepState.SKIPPED, message)

    def _fail_step(self, step: StepName, attempt: int, message: str) -> None:
        self._steps[step].attempt = max(self._steps[step].attempt, attempt)
        if self._steps[step].started_at is None:
            self._steps[step].started_at = workflow.now()
        self._finish_step(step, StepState.FAILED, message)
        self._message = message

    def _finish_step(self, step: StepName, state: StepState, message: str) -> None:
        progress = self._steps[step]
        progress.state = state
        progress.message = message
        progress.finished_at = workflow.now()
        self._touch()


def _describe_failure(error: ActivityError) -> tuple[str, str, bool]:
    """The root message, the error type and whether a retry can help."""
    cause = error.cause
    if isinstance(cause, ApplicationError):
        error_type = cause.type or "ActivityFailed"
        retryable = not cause.non_retryable and error_type not in PERMANENT_ERROR_TYPES
        return cause.message, error_type, retryable
    if cause is not None:
        return f"{type(cause).__name__}: {cause}", type(cause).__name__, True
    return str(error), "ActivityFailed", True


def _outcome_message(status: ProjectStatus, readiness: ReadinessReport | None) -> str:
    if status is ProjectStatus.READY and readiness is not None:
        return f"Flux reports Ready: {readiness.message}"
    if status is ProjectStatus.NOT_READY and readiness is not None:
        return f"resources exist but Flux is not Ready: {readiness.reason}: {readiness.message}"
    return "resources exist; readiness was not awaited"
