"""What every project workflow shares: step policies, retried step execution and the progress it reports.

Retries are driven here, in the workflow, rather than by the server, so that the `progress` query can show every
attempt and the error that caused it while it happens: that visibility is the point of this product. Each activity
call is therefore a single attempt; the step's RetryPolicy is applied by `StepRunner.run`.

The workflows' metrics are recorded here too, through `workflow.metric_meter()`: the SDK records nothing while a
workflow replays, so each is counted once, and they are served with Temporal's own (provisioner/telemetry.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from provisioner.contracts import (
        SEARCH_ATTRIBUTE_STATUS,
        STEP_TITLES,
        ErrorType,
        PendingDecision,
        Progress,
        ProjectOperation,
        ProjectStatus,
        StepName,
        StepProgress,
        StepState,
    )
    from provisioner.telemetry import PROVISIONING_DURATION, STEP_FAILURES, UNVALIDATED_TEMPLATE

ResultT = TypeVar("ResultT")

PERMANENT_ERROR_TYPES = [error_type.value for error_type in ErrorType]


# The worker heartbeats every running activity (provisioner/heartbeat.py): an attempt whose worker died is retried
# after this long, not after its whole attempt timeout.
DEFAULT_HEARTBEAT_TIMEOUT = timedelta(seconds=10)


@dataclass(frozen=True)
class StepPolicy:
    """How long one attempt of a step may take, how long its worker may stay silent and how it is retried."""

    attempt_timeout: timedelta
    retry: RetryPolicy
    heartbeat_timeout: timedelta = DEFAULT_HEARTBEAT_TIMEOUT


def step_policy(
    attempt_timeout: timedelta,
    maximum_attempts: int,
    maximum_interval: timedelta,
    heartbeat_timeout: timedelta = DEFAULT_HEARTBEAT_TIMEOUT,
) -> StepPolicy:
    return StepPolicy(
        attempt_timeout=attempt_timeout,
        heartbeat_timeout=heartbeat_timeout,
        retry=RetryPolicy(
            initial_interval=timedelta(seconds=1),
            backoff_coefficient=2.0,
            maximum_interval=maximum_interval,
            maximum_attempts=maximum_attempts,
            non_retryable_error_types=PERMANENT_ERROR_TYPES,
        ),
    )


@dataclass
class PollSchedule:
    """A bounded wait in workflow time: checks at growing intervals until a deadline."""

    deadline: datetime
    interval: timedelta
    maximum_interval: timedelta
    backoff: float

    @classmethod
    def starting_now(cls, bound: timedelta, initial: timedelta, maximum: timedelta, backoff: float) -> PollSchedule:
        return cls(workflow.now() + bound, initial, maximum, backoff)

    def expired(self) -> bool:
        return workflow.now() >= self.deadline

    async def sleep(self) -> None:
        """A durable timer until the next check (never past the deadline); no worker thread waits."""
        await workflow.sleep(min(self.interval, self.deadline - workflow.now()))
        self.interval = min(self.interval * self.backoff, self.maximum_interval)


class StepFailed(Exception):
    """A step ran out of attempts or hit a permanent error; carries the failure to report."""

    def __init__(self, step: StepName, message: str, error_type: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        self.error_type = error_type

    def to_application_error(self, progress: Progress) -> ApplicationError:
        return ApplicationError(
            f"{self.step.value} failed: {self.message}",
            {"step": self.step.value, "progress": progress},
            type=self.error_type,
            non_retryable=True,
        )


def describe_failure(error: ActivityError) -> tuple[str, str, bool]:
    """The root message, the error type and whether a retry can help."""
    cause = error.cause
    if isinstance(cause, ApplicationError):
        error_type = cause.type or "ActivityFailed"
        retryable = not cause.non_retryable and error_type not in PERMANENT_ERROR_TYPES
        return cause.message, error_type, retryable
    if cause is not None:
        return f"{type(cause).__name__}: {cause}", type(cause).__name__, True
    return str(error), "ActivityFailed", True


class StepRunner:
    """Runs a workflow's steps with their policies and keeps the progress that the `progress` query returns.

    Every status change is also upserted as the `ProjectStatus` search attribute and shown as the run's current
    details, so the Temporal UI tells the same story as the query.
    """

    def __init__(
        self,
        slug: str,
        steps: Sequence[StepName],
        policies: Mapping[StepName, StepPolicy],
        operation: ProjectOperation,
    ) -> None:
        self.slug = slug
        self.operation = operation
        self.commit_sha = ""  # once pushed
        self.applied_revision = ""  # once Flux reported Ready for exactly that commit
        self.status = ProjectStatus.PENDING
        self.message = "waiting to start"
        self._steps = {name: StepProgress(name=name, title=STEP_TITLES[name]) for name in steps}
        self._policies = policies
        self.decision: PendingDecision | None = None
        self._updated_at = workflow.now()

    def step(self, name: StepName) -> StepProgress:
        return self._steps[name]

    def progress(self) -> Progress:
        steps = list(self._steps.values())
        done = sum(step.state in (StepState.SUCCEEDED, StepState.SKIPPED) for step in steps)
        return Progress(
            slug=self.slug,
            workflow_id=workflow.info().workflow_id,
            status=self.status,
            percent=done * 100 // len(steps),
            steps=steps,
            message=self.message,
            updated_at=self._updated_at,
            decision=self.decision,
            operation=self.operation,
            commit_sha=self.commit_sha,
            applied_revision=self.applied_revision,
        )

    def add_steps(self, names: Sequence[StepName]) -> None:
        """Append steps the run turned out to need (e.g. the rollback of an aborted provisioning)."""
        for name in names:
            self._steps.setdefault(name, StepProgress(name=name, title=STEP_TITLES[name]))
        self._touch()

    def reset(self, step: StepName, message: str) -> None:
        """Make a failed step pending again, so that it runs anew (an operator's retry)."""
        self._steps[step] = StepProgress(name=step, title=STEP_TITLES[step], message=message)
        self._touch()

    def set_status(self, status: ProjectStatus, message: str) -> None:
        if status is not self.status:
            workflow.upsert_search_attributes([SEARCH_ATTRIBUTE_STATUS.value_set(status.value)])
        self.status = status
        self.message = message
        self._touch()
        workflow.set_current_details(f"**{status.value}** ({self.operation.value}): {message}")

    async def run(
        self,
        step: StepName,
        activity_name: str,
        argument: Any,
        result_type: type[ResultT],
        describe: Callable[[ResultT], str],
    ) -> ResultT:
        """Run one step's activity until it succeeds, fails permanently or runs out of attempts."""
        policy = self._policies[step]
        retry = policy.retry
        interval = retry.initial_interval
        attempt = 0
        while True:
            attempt += 1
            self.start(step, attempt)
            try:
                result: ResultT = await workflow.execute_activity(
                    activity_name,
                    argument,
                    result_type=result_type,
                    start_to_close_timeout=policy.attempt_timeout,
                    heartbeat_timeout=policy.heartbeat_timeout,
                    retry_policy=RetryPolicy(maximum_attempts=1),  # this loop owns the retries
                    summary=STEP_TITLES[step],
                )
            except ActivityError as error:
                if is_cancelled_exception(error):
                    raise
                message, error_type, retryable = describe_failure(error)
                if not retryable or (retry.maximum_attempts and attempt >= retry.maximum_attempts):
                    self.fail(step, attempt, message)
                    raise StepFailed(step, message, error_type) from None
                self._steps[step].message = f"attempt {attempt} failed: {message}; retrying in {interval}"
                self._touch()
                await workflow.sleep(interval)
                interval = min(interval * retry.backoff_coefficient, retry.maximum_interval or interval)
                continue
            self.succeed(step, describe(result))
            return result

    async def check(
        self, step: StepName, check: int, activity_name: str, argument: Any, result_type: type[ResultT]
    ) -> ResultT:
        """One check of a polling step (e.g. the Ready wait), retried briefly by the server per the step's policy."""
        policy = self._policies[step]
        self.start(step, check)
        result: ResultT = await workflow.execute_activity(
            activity_name,
            argument,
            result_type=result_type,
            start_to_close_timeout=policy.attempt_timeout,
            heartbeat_timeout=policy.heartbeat_timeout,
            retry_policy=policy.retry,
            summary=STEP_TITLES[step],
        )
        return result

    async def run_once(self, activity_name: str, argument: Any, policy: StepPolicy, summary: str) -> Any:
        """An activity outside the step list (e.g. recording a failure), with the server applying the retries."""
        return await workflow.execute_activity(
            activity_name,
            argument,
            start_to_close_timeout=policy.attempt_timeout,
            heartbeat_timeout=policy.heartbeat_timeout,
            retry_policy=policy.retry,
            summary=summary,
        )

    def start(self, step: StepName, attempt: int) -> None:
        progress = self._steps[step]
        if progress.state is not StepState.RUNNING:
            progress.state = StepState.RUNNING
            progress.started_at = workflow.now()
            progress.message = ""
        progress.attempt = attempt
        self.message = STEP_TITLES[step]
        self._touch()
        workflow.set_current_details(
            f"**{self.status.value}** ({self.operation.value}): {STEP_TITLES[step]} (attempt {attempt})"
        )

    def note(self, step: StepName, message: str) -> None:
        """Update a running step's message (e.g. what it is waiting for)."""
        self._steps[step].message = message
        self._touch()

    def succeed(self, step: StepName, message: str) -> None:
        self._finish(step, StepState.SUCCEEDED, message)

    def skip(self, step: StepName, message: str) -> None:
        self._finish(step, StepState.SKIPPED, message)

    def fail_run(self, failure: StepFailed) -> ApplicationError:
        """The error that fails the run because of `failure`, which is counted in `provisioner_step_failures_total`."""
        workflow.metric_meter().create_counter(STEP_FAILURES, "Steps that failed a run, by step and error type").add(
            1, {"step": failure.step.value, "error_type": failure.error_type}
        )
        return failure.to_application_error(self.progress())

    def record_provisioning(self, template: str, outcome: ProjectStatus) -> None:
        """Record the run's duration so far under its outcome, in `provisioner_provisioning_duration_seconds`."""
        validated = self._steps[StepName.VALIDATE_TEMPLATE].state is StepState.SUCCEEDED
        duration = workflow.now() - workflow.info().workflow_start_time
        workflow.metric_meter().create_histogram_timedelta(
            PROVISIONING_DURATION, "Duration of provisioning runs, by template and outcome", "s"
        ).record(duration, {"template": template if validated else UNVALIDATED_TEMPLATE, "outcome": outcome.value})

    def fail(self, step: StepName, attempt: int, message: str) -> None:
        progress = self._steps[step]
        progress.attempt = max(progress.attempt, attempt)
        if progress.started_at is None:
            progress.started_at = workflow.now()
        self._finish(step, StepState.FAILED, message)
        self.message = message

    def _finish(self, step: StepName, state: StepState, message: str) -> None:
        progress = self._steps[step]
        progress.state = state
        progress.message = message
        progress.finished_at = workflow.now()
        self._touch()

    def _touch(self) -> None:
        self._updated_at = workflow.now()
