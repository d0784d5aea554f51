"""The baseline ("option B"): the same activity functions, called directly in one process.

The activities are built by `worker.build_activities` itself, so the objects, clients and pools are the worker's.
The steps, their retries (the workflow's step policies) and the Ready wait (the workflow's poll intervals and
back-off, with `time.sleep` where the workflow has a durable timer) mirror `ProjectInitWorkflow`.

Run as its own long-lived process by the benchmark (`python -m bench.direct`): one JSON job per stdin line naming
the mode (`sequential`, or `pooled` on a thread pool of `threads` workers) and the specs, one JSON result per stdout
line with the batch's wall time, this process's CPU time over the batch, and every run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TextIO

from temporalio.exceptions import ApplicationError

from bench.runs import DIRECT, ProvisionRun, spec_from_json
from provisioner.contracts import (
    ErrorType,
    FluxApplyRequest,
    ProjectRecordUpdate,
    ProjectSpec,
    ProjectStatus,
    PushRequest,
    ReadinessReport,
    ReadinessRequest,
    ReadinessState,
    StepName,
    project_workflow_id,
    validate_spec,
)
from provisioner.settings import Settings
from worker import build_activities
from workflows.project_init import (
    APPLY_FLUX_RESOURCES,
    CHECK_FLUX_READINESS,
    CREATE_REPOSITORY,
    PUSH_TEMPLATE,
    READY_POLL_BACKOFF,
    READY_POLL_INITIAL_INTERVAL,
    STEP_POLICIES,
    UPSERT_PROJECT_RECORD,
    VALIDATE_TEMPLATE,
    flux_revision,
    ready_poll_maximum_interval,
)

ACTIVITY_NAMES = (
    VALIDATE_TEMPLATE,
    CREATE_REPOSITORY,
    PUSH_TEMPLATE,
    UPSERT_PROJECT_RECORD,
    APPLY_FLUX_RESOURCES,
    CHECK_FLUX_READINESS,
)
PERMANENT_ERROR_TYPES = frozenset(error_type.value for error_type in ErrorType)


class StepError(Exception):
    def __init__(self, step: StepName, message: str) -> None:
        super().__init__(f"{step.value} failed: {message}")


class DirectProvisioner:
    """Provisions projects by calling the activities in order, timing each step. Thread-safe like the worker."""

    def __init__(self, settings: Settings) -> None:
        activities = {function.__name__: function for function in build_activities(settings)}
        missing = set(ACTIVITY_NAMES) - set(activities)
        if missing:
            raise RuntimeError(f"worker.build_activities no longer provides {sorted(missing)}")
        self._activities: dict[str, Callable[[Any], Any]] = activities

    def provision(self, spec: ProjectSpec) -> ProvisionRun:
        started = time.perf_counter()
        steps: dict[str, float] = {}
        checks = 0
        try:
            errors = validate_spec(spec)
            if errors:
                raise StepError(StepName.VALIDATE_TEMPLATE, "; ".join(map(str, errors)))
            rendered = self._step(steps, StepName.VALIDATE_TEMPLATE, VALIDATE_TEMPLATE, spec)
            record = _record(spec, ProjectStatus.PROVISIONING, "create started")
            record.parameters, record.claim = dict(rendered.parameters), True
            self._step(steps, StepName.PERSIST_RECORD, UPSERT_PROJECT_RECORD, record)
            repository = self._step(steps, StepName.CREATE_REPOSITORY, CREATE_REPOSITORY, spec)
            pushed = self._step(
                steps, StepName.PUSH_TEMPLATE, PUSH_TEMPLATE, PushRequest(spec=spec, repository=repository)
            )
            token = datetime.now(UTC).isoformat()
            apply = FluxApplyRequest(
                spec=spec,
                repository=repository,
                commit_sha=pushed.commit_sha,
                kustomize_path=rendered.kustomize_path,
                requested_at=token,
            )
            self._step(steps, StepName.APPLY_FLUX_RESOURCES, APPLY_FLUX_RESOURCES, apply)
            status = ProjectStatus.PROVISIONED
            if spec.wait_for_ready:
                wait_started = time.perf_counter()
                report, checks = self._await_ready(spec, flux_revision(pushed), token)
                steps[StepName.AWAIT_READY.value] = time.perf_counter() - wait_started
                status = ProjectStatus.READY if report.state is ReadinessState.READY else ProjectStatus.NOT_READY
            final = ProjectRecordUpdate(
                slug=spec.slug,
                status=status,
                repo_url=repository.clone_url,
                commit_sha=pushed.commit_sha,
                last_message=f"direct: {status.value}",
            )
            self._step(steps, StepName.FINALIZE_RECORD, UPSERT_PROJECT_RECORD, final)
        except StepError as error:
            return ProvisionRun(spec.slug, DIRECT, "failed", time.perf_counter() - started, steps, checks, str(error))
        return ProvisionRun(spec.slug, DIRECT, status.value, time.perf_counter() - started, steps, checks)

    def _step(self, steps: dict[str, float], step: StepName, activity_name: str, argument: Any) -> Any:
        """One step with the workflow's retry policy for it (the workflow's StepRunner drives the same loop)."""
        retry = STEP_POLICIES[step].retry
        interval = retry.initial_interval.total_seconds()
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = self._activities[activity_name](argument)
            except Exception as error:
                permanent = isinstance(error, ApplicationError) and (
                    error.non_retryable or (error.type or "") in PERMANENT_ERROR_TYPES
                )
                if permanent or (retry.maximum_attempts and attempt >= retry.maximum_attempts):
                    raise StepError(step, f"{type(error).__name__}: {error}") from None
                time.sleep(interval)
                maximum = retry.maximum_interval.total_seconds() if retry.maximum_interval else interval
                interval = min(interval * retry.backoff_coefficient, maximum)
                continue
            steps[step.value] = time.perf_counter() - started
            return result

    def _await_ready(self, spec: ProjectSpec, revision: str, token: str) -> tuple[ReadinessReport, int]:
        """The workflow's Ready loop, with a sleeping thread where the workflow has a durable timer."""
        deadline = time.monotonic() + spec.ready_timeout.total_seconds()
        interval = READY_POLL_INITIAL_INTERVAL.total_seconds()
        maximum_interval = ready_poll_maximum_interval(spec.ready_timeout).total_seconds()
        request = ReadinessRequest(namespace=spec.namespace, name=spec.slug, revision=revision, requested_at=token)
        check = 0
        while True:
            check += 1
            try:
                report: ReadinessReport = self._activities[CHECK_FLUX_READINESS](request)
            except Exception as error:
                report = ReadinessReport(ReadinessState.IN_PROGRESS, "CheckFailed", str(error))
            if report.state is ReadinessState.READY:
                return report, check
            if report.state is ReadinessState.FAILED:
                raise StepError(StepName.AWAIT_READY, f"Flux reports Stalled: {report.reason}: {report.message}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return report, check
            time.sleep(min(interval, remaining))
            interval = min(interval * READY_POLL_BACKOFF, maximum_interval)


def _record(spec: ProjectSpec, status: ProjectStatus, message: str) -> ProjectRecordUpdate:
    return ProjectRecordUpdate(
        slug=spec.slug,
        status=status,
        display_name=spec.display_name,
        template=spec.template,
        environment=spec.environment,
        namespace=spec.namespace,
        workflow_id=project_workflow_id(spec.slug),
        last_message=message,
    )


def run_sequential(provisioner: DirectProvisioner, specs: list[ProjectSpec]) -> tuple[list[ProvisionRun], float]:
    started = time.perf_counter()
    runs = [provisioner.provision(spec) for spec in specs]
    return runs, time.perf_counter() - started


def run_pooled(
    provisioner: DirectProvisioner, specs: list[ProjectSpec], threads: int
) -> tuple[list[ProvisionRun], float]:
    """All specs submitted at once to a pool of `threads`: wall time from the first submit to the last result."""

    def job(spec: ProjectSpec, submitted: float) -> ProvisionRun:
        picked_up = time.perf_counter()
        run = provisioner.provision(spec)
        run.queued_seconds = picked_up - submitted
        return run

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="direct") as pool:
        started = time.perf_counter()
        futures = [pool.submit(job, spec, time.perf_counter()) for spec in specs]
        runs = [future.result() for future in futures]
        return runs, time.perf_counter() - started


def cpu_seconds() -> float:
    """This process's CPU so far, its git subprocesses included."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def run_job(provisioner: DirectProvisioner, job: dict[str, Any]) -> dict[str, Any]:
    specs = [spec_from_json(item) for item in job["specs"]]
    cpu_before = cpu_seconds()
    if job["mode"] == "sequential":
        runs, wall = run_sequential(provisioner, specs)
    elif job["mode"] == "pooled":
        runs, wall = run_pooled(provisioner, specs, int(job["threads"]))
    else:
        raise ValueError(f"unknown mode {job['mode']!r}")
    return {"wall_seconds": wall, "cpu_seconds": cpu_seconds() - cpu_before, "runs": [run.to_json() for run in runs]}


def serve(jobs: TextIO, results: TextIO) -> None:
    """One JSON job per input line, one JSON result per output line, until the input ends."""
    provisioner = DirectProvisioner(Settings.from_env())
    results.write(json.dumps({"ready": True}) + "\n")
    results.flush()
    for line in jobs:
        if line.strip():
            results.write(json.dumps(run_job(provisioner, json.loads(line))) + "\n")
            results.flush()


def main() -> int:
    # The worker's logging configuration (to stderr), so both paths pay for the same log lines.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
