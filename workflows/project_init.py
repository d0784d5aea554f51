"""ProjectInitWorkflow: create one project, step by step, durably; and what an update shares with it.

validate and render the template -> persist the record (a create claims the slug here) -> create the repository
-> push the template -> apply the Flux resources -> await Ready for exactly the pushed commit (optional)
-> finalize the record.

Every operation of a project (create, update, teardown) runs under one workflow id, `project-<slug>`, so Temporal
refuses a second run of the project while one is running: the operations exclude each other atomically.

Each step is an activity with its own timeout and retry policy (workflows/steps.py). Waiting for Ready is a loop
of short activities between durable timers, so a waiting project holds no worker thread. Ready means Flux applied
the commit this run pushed: each apply writes a `reconcile.fluxcd.io/requestedAt` token decided here, once per
apply (a provisioning, an update, an operator's retry), and the readiness check waits until the Kustomization
handled that token and applied `<branch>@sha1:<commit>` (activities/flux.py).

When a step fails for good, the run records the failure and waits (bounded by the spec's FailurePolicy) for an
operator's decision, sent as the `decide` update: retry resumes at the failed step (a retried Ready wait applies
again, with a new token, so Flux reconciles again); abort rolls a creation back in reverse order
(workflows/cleanup.py) and ends the run failed; leave ends it failed and keeps what was made. No decision within the
bound applies the policy's default.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

from workflows.cleanup import CLEANUP_POLICIES, delete_cluster_resources, delete_repository
from workflows.steps import PollSchedule, StepFailed, StepPolicy, StepRunner, describe_failure, step_policy

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from provisioner.contracts import (
        DEFAULT_DELETION_TIMEOUT,
        PROVISIONING_STEPS,
        ErrorType,
        FailureAction,
        FluxApplyRequest,
        FluxApplyResult,
        OperatorDecision,
        PendingDecision,
        Progress,
        ProjectOperation,
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
    StepName.READ_PROJECT: step_policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
    StepName.VALIDATE_TEMPLATE: step_policy(timedelta(seconds=30), 3, timedelta(seconds=5)),
    StepName.CREATE_REPOSITORY: step_policy(timedelta(seconds=30), 8, timedelta(seconds=30)),
    StepName.PUSH_TEMPLATE: step_policy(timedelta(minutes=2), 8, timedelta(seconds=30)),
    StepName.PERSIST_RECORD: step_policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
    StepName.APPLY_FLUX_RESOURCES: step_policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
    # One readiness check: retried by the server a few times; the wait loop itself is the outer retry.
    StepName.AWAIT_READY: step_policy(timedelta(seconds=20), 3, timedelta(seconds=2)),
    StepName.FINALIZE_RECORD: step_policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
    # The rollback of an aborted run
    **CLEANUP_POLICIES,
    StepName.MARK_FAILED: step_policy(timedelta(seconds=30), 12, timedelta(seconds=30)),
    # An update's dry run
    StepName.PREVIEW_CHANGES: step_policy(timedelta(minutes=2), 8, timedelta(seconds=30)),
}
ROLLBACK_DELETION_TIMEOUT = DEFAULT_DELETION_TIMEOUT
# `ApplicationError.type` of a decision sent to a run that is not awaiting one.
NOT_AWAITING_DECISION = "NotAwaitingDecision"
# Failures no decision can change: the request itself is wrong, and nothing was made.
FINAL_ERROR_TYPES = frozenset(
    {ErrorType.INVALID_INPUT.value, ErrorType.PROJECT_CONFLICT.value, ErrorType.NO_SUCH_PROJECT.value}
)

READY_POLL_INITIAL_INTERVAL = timedelta(seconds=1)
READY_POLL_BACKOFF = 1.5
# The interval stops growing at a tenth of the run's Ready bound, kept within these limits. Each check costs the
# Temporal server an activity, a timer and two workflow tasks: a 10 s ceiling for every run made 1,000 waiting runs
# ~100 checks/s, more than a 2-core dev server sustained (bench/README.md). Runs that become Ready within ~30 s are
# seen as soon as before; a slower one, at most a tenth of its bound later.
READY_POLL_MAXIMUM_INTERVAL_LIMITS = (timedelta(seconds=10), timedelta(seconds=60))


def ready_poll_maximum_interval(ready_timeout: timedelta) -> timedelta:
    """The longest pause between two readiness checks of a run bounded by `ready_timeout` (5 min: 30 s)."""
    lowest, highest = READY_POLL_MAXIMUM_INTERVAL_LIMITS
    return min(max(ready_timeout / 10, lowest), highest)


async def validate_template(steps: StepRunner, spec: ProjectSpec) -> RenderSummary:
    """The step that checks `spec` against its template and renders it once (the files stay on the worker)."""
    rendered: RenderSummary = await steps.run(
        StepName.VALIDATE_TEMPLATE,
        VALIDATE_TEMPLATE,
        spec,
        RenderSummary,
        lambda r: f"{r.file_count} files render; kustomization found at {r.kustomize_path}",
    )
    return rendered


def flux_revision(pushed: PushResult) -> str:
    """The revision Flux reports for the pushed commit (source-controller's `<branch>@sha1:<commit>`)."""
    return f"{pushed.branch}@sha1:{pushed.commit_sha}"


class ProvisioningRun:
    """What creating and updating a project share: the steps from the template to Ready, the progress they report,
    and the operator's decision when one fails for good. The workflow classes say what the run is for."""

    operation = ProjectOperation.CREATE
    active_status = ProjectStatus.PROVISIONING

    def __init__(self, slug: str, spec: ProjectSpec | None, steps: Sequence[StepName]) -> None:
        self._spec = spec  # None until an update has read the project
        self._steps = StepRunner(slug, steps, STEP_POLICIES, self.operation)
        # What the completed steps produced: a retry resumes at the failed step and never re-runs these.
        self._rendered: RenderSummary | None = None
        self._repository: RepositoryInfo | None = None
        self._pushed: PushResult | None = None
        self._record_written = False
        # The requestedAt token of the apply that was made; None: the next pass applies (with a new token).
        self._applied_token: str | None = None
        self._decision: OperatorDecision | None = None

    @workflow.query
    def progress(self) -> Progress:
        return self._steps.progress()

    @workflow.update
    def decide(self, decision: OperatorDecision) -> str:
        """An operator's retry, abort or leave for a run awaiting a decision (see FailurePolicy)."""
        if self._steps.decision is None or self._decision is not None:
            # A second decision that passed validation together with the first one.
            raise ApplicationError(f"{self._steps.slug} has already been decided", type=NOT_AWAITING_DECISION)
        self._decision = decision
        return f"{decision.action.value} accepted for {self._steps.slug}"

    @decide.validator
    def _accepts_decision(self, decision: OperatorDecision) -> None:
        """Rejected updates leave no trace in the history."""
        if self._steps.decision is None or self._decision is not None:
            raise ApplicationError(
                f"{self._steps.slug} is not awaiting a decision (it is {self._steps.status.value})",
                type=NOT_AWAITING_DECISION,
            )

    async def _provision_until_decided(self, spec: ProjectSpec) -> ProvisioningResult:
        """Provision `spec`; a step that fails for good awaits an operator's decision, retried or ended by it."""
        steps = self._steps
        self._spec = spec
        while True:
            try:
                result = await self._provision(spec)
            except StepFailed as failure:
                decision = await self._await_decision(failure)
                if decision.action is FailureAction.RETRY:
                    steps.reset(failure.step, _decided("retry requested", decision))
                    if failure.step is StepName.AWAIT_READY:
                        self._applied_token = None  # apply again, with a new token: Flux is asked to reconcile
                        steps.reset(StepName.APPLY_FLUX_RESOURCES, _decided("applied again for the retry", decision))
                    steps.set_status(self.active_status, f"retrying {failure.step.value}")
                    continue
                if decision.action is FailureAction.ABORT:
                    failure = await self._roll_back(failure, decision)
                else:
                    await self._mirror_in_record(ProjectStatus.FAILED, _decided(failure.message, decision))
                steps.record_provisioning(spec.template, ProjectStatus.FAILED)
                raise steps.fail_run(failure) from None
            steps.record_provisioning(spec.template, result.status)
            return result

    async def _provision(self, spec: ProjectSpec) -> ProvisioningResult:
        steps = self._steps
        field_errors = validate_spec(spec)
        if field_errors:
            message = "invalid project request: " + "; ".join(map(str, field_errors))
            steps.fail(StepName.VALIDATE_TEMPLATE, 1, message)
            raise StepFailed(StepName.VALIDATE_TEMPLATE, message, ErrorType.INVALID_INPUT.value)

        if self._rendered is None:
            self._rendered = await validate_template(steps, spec)
        rendered = self._rendered
        if not self._record_written:
            # A create claims the slug with this write: refused (ProjectConflict) while another project holds it.
            record = self._record(self.active_status, f"{self.operation.value} started from template {spec.template}")
            await steps.run(
                StepName.PERSIST_RECORD,
                UPSERT_PROJECT_RECORD,
                record,
                object,
                lambda _: f"record {spec.slug} saved as {self.active_status.value}",
            )
            self._record_written = True
        if self._repository is None:
            self._repository = await steps.run(
                StepName.CREATE_REPOSITORY,
                CREATE_REPOSITORY,
                spec,
                RepositoryInfo,
                lambda r: f"{'created' if r.created else 'already present'}: {r.clone_url}",
            )
        repository = self._repository
        if self._pushed is None:
            self._pushed = await steps.run(
                StepName.PUSH_TEMPLATE,
                PUSH_TEMPLATE,
                PushRequest(spec=spec, repository=repository),
                PushResult,
                lambda r: f"{'pushed' if r.pushed else 'already up to date at'} {r.branch}@{r.commit_sha[:12]}",
            )
            steps.commit_sha = self._pushed.commit_sha
        pushed = self._pushed
        if self._applied_token is None:
            # Decided once per apply, here in workflow time: the activity's retries send the same token.
            token = workflow.now().isoformat()
            await steps.run(
                StepName.APPLY_FLUX_RESOURCES,
                APPLY_FLUX_RESOURCES,
                FluxApplyRequest(
                    spec=spec,
                    repository=repository,
                    commit_sha=pushed.commit_sha,
                    kustomize_path=rendered.kustomize_path,
                    requested_at=token,
                ),
                FluxApplyResult,
                lambda r: "applied " + ", ".join(f"{o.kind}/{o.name}" for o in r.objects),
            )
            self._applied_token = token

        readiness: ReadinessReport | None = None
        if spec.wait_for_ready:
            with AWAITING_READY_RUNS.waiting(workflow.info().run_id):
                readiness = await self._await_ready(spec, flux_revision(pushed), self._applied_token)
            status = ProjectStatus.READY if readiness.state is ReadinessState.READY else ProjectStatus.NOT_READY
        else:
            steps.skip(StepName.AWAIT_READY, "not requested")
            status = ProjectStatus.PROVISIONED
        # Only a Ready verdict about exactly this commit names a revision; anything else names none.
        applied_revision = readiness.revision if status is ProjectStatus.READY and readiness else ""
        message = _outcome_message(status, readiness, pushed)

        finalized = self._record(status, message)
        finalized.applied_revision = applied_revision or None
        await steps.run(
            StepName.FINALIZE_RECORD,
            UPSERT_PROJECT_RECORD,
            finalized,
            object,
            lambda _: f"record {spec.slug} marked {status.value}",
        )
        steps.applied_revision = applied_revision
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
            operation=self.operation,
            applied_revision=applied_revision,
        )

    async def _await_ready(self, spec: ProjectSpec, revision: str, token: str) -> ReadinessReport:
        step, steps = StepName.AWAIT_READY, self._steps
        schedule = PollSchedule.starting_now(
            spec.ready_timeout,
            READY_POLL_INITIAL_INTERVAL,
            ready_poll_maximum_interval(spec.ready_timeout),
            READY_POLL_BACKOFF,
        )
        request = ReadinessRequest(namespace=spec.namespace, name=spec.slug, revision=revision, requested_at=token)
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
                report = ReadinessReport(
                    state=ReadinessState.IN_PROGRESS, reason="CheckFailed", message=message, expected_revision=revision
                )
            if report.state is ReadinessState.READY and report.revision == revision:
                steps.succeed(step, f"Ready: {report.message}")
                return report
            if report.state is ReadinessState.FAILED:
                suspended = report.reason == "Suspended"
                error_type = ErrorType.FLUX_SUSPENDED if suspended else ErrorType.FLUX_STALLED
                verdict = "Flux will not apply" if suspended else "Flux reports Stalled for"
                message = f"{verdict} {revision}: {report.reason}: {report.message}"
                steps.fail(step, check, message)
                raise StepFailed(step, message, error_type.value)
            if schedule.expired():
                steps.fail(step, check, f"not Ready after {spec.ready_timeout}: {report.reason}: {report.message}")
                return report
            steps.note(step, f"waiting for {revision}: {report.reason}: {report.message}")
            await schedule.sleep()

    async def _await_decision(self, failure: StepFailed) -> OperatorDecision:
        """Record the failure and wait, bounded by the failure policy, for an operator's decision.

        Invalid input, a conflict with another project and an update of no project are final: nothing was made,
        and no decision can change the request.
        """
        steps = self._steps
        summary = f"{failure.step.value} failed: {failure.message}"
        if failure.error_type in FINAL_ERROR_TYPES:
            steps.set_status(ProjectStatus.FAILED, summary)
            return OperatorDecision(FailureAction.LEAVE, "the request cannot succeed: nothing was made")
        assert self._spec is not None  # an update fails before its spec is known only with a final error
        policy = self._spec.on_failure
        if policy.decision_timeout <= timedelta(0):
            return OperatorDecision(policy.default_action, "the failure policy decides at once")
        deadline = workflow.now() + policy.decision_timeout
        message = (
            f"{summary}; awaiting an operator's decision (retry or abort) until "
            f"{deadline:%Y-%m-%d %H:%M:%S} UTC, then {policy.default_action.value}"
        )
        # The record first: whoever sees "awaiting decision" in the progress finds it in the record too.
        await self._mirror_in_record(ProjectStatus.AWAITING_DECISION, message)
        steps.decision = PendingDecision(
            step=failure.step,
            error_type=failure.error_type,
            message=failure.message,
            deadline=deadline,
            default_action=policy.default_action,
        )
        steps.set_status(ProjectStatus.AWAITING_DECISION, message)
        try:
            await workflow.wait_condition(
                lambda: self._decision is not None,
                timeout=max(deadline - workflow.now(), timedelta(milliseconds=1)),
                timeout_summary="Await an operator's decision",
            )
            decision = self._decision
        except TimeoutError:
            decision = None
        if decision is None:
            decision = OperatorDecision(
                policy.default_action, f"no decision within {policy.decision_timeout}: the policy's default"
            )
        steps.decision, self._decision = None, None
        return decision

    async def _roll_back(self, failure: StepFailed, decision: OperatorDecision) -> StepFailed:
        """Undo the completed steps of a creation in reverse order: the cluster objects (if the apply began), the
        record (then `rolled_back`: the slug is free again), and the repository (if the policy says so). Returns the
        failure the run ends with. An update changes a live project: its abort only records the failure."""
        steps, spec = self._steps, self._spec
        assert spec is not None
        policy = spec.on_failure
        creating = self.operation is ProjectOperation.CREATE
        apply_began = creating and steps.step(StepName.APPLY_FLUX_RESOURCES).state is not StepState.PENDING
        has_repository = creating and self._repository is not None
        rollback = [StepName.DELETE_FLUX_RESOURCES, StepName.AWAIT_DELETION] if apply_began else []
        if self._record_written:
            rollback.append(StepName.MARK_FAILED)
        if has_repository:
            rollback.append(StepName.DELETE_REPOSITORY)
        steps.add_steps(rollback)
        steps.set_status(ProjectStatus.ROLLING_BACK, _decided(f"aborted after {failure.step.value} failed", decision))
        if not creating:
            outcome = "update aborted: the project keeps its resources and its repository"
        else:
            repository = "the repository is deleted" if policy.delete_repository_on_abort else "the repository is kept"
            outcome = "rolled back: " + ("cluster resources removed; " if apply_began else "") + repository
        try:
            if apply_began:
                await delete_cluster_resources(steps, spec.slug, ROLLBACK_DELETION_TIMEOUT)
            if StepName.MARK_FAILED in rollback:
                message = _decided(f"{failure.step.value} failed: {failure.message}; {outcome}", decision)
                final = ProjectStatus.ROLLED_BACK if creating else ProjectStatus.FAILED
                await steps.run(
                    StepName.MARK_FAILED,
                    UPSERT_PROJECT_RECORD,
                    self._record(final, message),
                    object,
                    lambda _: f"record {spec.slug} marked {final.value}",
                )
            if has_repository and policy.delete_repository_on_abort:
                await delete_repository(steps, spec.slug)
            elif has_repository:
                steps.skip(StepName.DELETE_REPOSITORY, "kept, as the failure policy says")
        except StepFailed as rollback_failure:
            outcome = f"rollback failed at {rollback_failure.step.value}: {rollback_failure.message}"
            summary = f"{failure.step.value} failed: {failure.message}; {outcome}"
            await self._mirror_in_record(ProjectStatus.FAILED, summary)
        aborted = StepFailed(failure.step, f"{failure.message} (aborted; {outcome})", failure.error_type)
        steps.set_status(ProjectStatus.FAILED, f"{failure.step.value} failed: {aborted.message}")
        return aborted

    async def _mirror_in_record(self, status: ProjectStatus, message: str) -> None:
        """Best effort: show a failure in the database, once this run has written (or claimed) the record."""
        if not self._record_written:
            return
        try:
            await self._steps.run_once(
                UPSERT_PROJECT_RECORD,
                self._record(status, message),
                STEP_POLICIES[StepName.FINALIZE_RECORD],
                f"Record the status {status.value}",
            )
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise
            workflow.logger.warning("could not record %s for %s: %s", status.value, self._steps.slug, error)

    def _record(self, status: ProjectStatus, message: str) -> ProjectRecordUpdate:
        """The whole record as this run knows it: either write may be the first to create the row."""
        spec = self._spec
        assert spec is not None
        rendered = self._rendered
        return ProjectRecordUpdate(
            slug=spec.slug,
            status=status,
            display_name=spec.display_name,
            template=spec.template,
            environment=spec.environment,
            namespace=spec.namespace,
            workflow_id=workflow.info().workflow_id,
            repo_url=self._repository.clone_url if self._repository else None,
            commit_sha=self._pushed.commit_sha if self._pushed else None,
            operation=self.operation.value,
            last_message=message,
            parameters=dict(rendered.parameters) if rendered else None,
            claim=self.operation is ProjectOperation.CREATE and not self._record_written,
            written_at=workflow.now(),
        )


# An input the spec cannot be built from fails the run at once instead of retrying its first task for ever.
@workflow.defn(name="ProjectInitWorkflow", failure_exception_types=[ValidationError])
class ProjectInitWorkflow(ProvisioningRun):
    """Create a project: refused (ProjectConflict) when the slug holds a live project of another identity."""

    @workflow.init
    def __init__(self, spec: ProjectSpec) -> None:
        super().__init__(spec.slug, spec, PROVISIONING_STEPS)

    @workflow.run
    async def run(self, spec: ProjectSpec) -> ProvisioningResult:
        self._steps.set_status(ProjectStatus.PROVISIONING, f"provisioning {spec.slug} from template {spec.template}")
        return await self._provision_until_decided(spec)


def _decided(message: str, decision: OperatorDecision) -> str:
    return f"{message} ({decision.action.value}: {decision.reason})" if decision.reason else message


def _outcome_message(status: ProjectStatus, readiness: ReadinessReport | None, pushed: PushResult) -> str:
    if status is ProjectStatus.READY and readiness is not None:
        return f"Flux reports Ready: applied {readiness.revision}"
    commit = f"{pushed.branch}@{pushed.commit_sha[:12]}"
    if status is ProjectStatus.NOT_READY and readiness is not None:
        return f"{commit} pushed, but Flux is not Ready for it: {readiness.reason}: {readiness.message}"
    return f"{commit} pushed and the resources exist; readiness was not awaited"
