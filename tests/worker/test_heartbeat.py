"""Heartbeats (provisioner/heartbeat.py, workflows/steps.py) on the real dev server: a long activity stays alive on
its own heartbeats, and an attempt whose worker went silent is retried after the heartbeat timeout, not after its
start_to_close timeout."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, TimeoutError, TimeoutType
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Interceptor, UnsandboxedWorkflowRunner, Worker

from provisioner.contracts import ProjectOperation, StepName
from provisioner.heartbeat import AutoHeartbeatInterceptor
from workflows.project_init import CREATE_REPOSITORY, STEP_POLICIES
from workflows.steps import StepRunner

SHORT_HEARTBEAT_TIMEOUT = timedelta(seconds=1)
SLOW_ACTIVITY_SECONDS = 4.0  # four heartbeat timeouts without a heartbeat of its own


@workflow.defn(sandboxed=False)
class SlowActivityWorkflow:
    """One attempt of an activity that runs much longer than its heartbeat timeout."""

    @workflow.run
    async def run(self, activity_name: str) -> str:
        result: str = await workflow.execute_activity(
            activity_name,
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=SHORT_HEARTBEAT_TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
        return result


@activity.defn(name="slow_sync")
def slow_sync() -> str:
    time.sleep(SLOW_ACTIVITY_SECONDS)
    return "done"


@activity.defn(name="slow_async")
async def slow_async() -> str:
    await asyncio.sleep(SLOW_ACTIVITY_SECONDS)
    return "done"


async def run_slow_activity(env: WorkflowEnvironment, activity_name: str, interceptors: Sequence[Interceptor]) -> str:
    task_queue = f"heartbeat-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(max_workers=2) as executor:
        async with Worker(
            env.client,
            task_queue=task_queue,
            workflows=[SlowActivityWorkflow],
            activities=[slow_sync, slow_async],
            activity_executor=executor,
            interceptors=interceptors,
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            return await env.client.execute_workflow(
                SlowActivityWorkflow.run, activity_name, id=task_queue, task_queue=task_queue
            )


@pytest.mark.parametrize("activity_name", ["slow_sync", "slow_async"])
async def test_the_interceptor_keeps_a_long_activity_alive(local_env: WorkflowEnvironment, activity_name: str) -> None:
    assert await run_slow_activity(local_env, activity_name, [AutoHeartbeatInterceptor()]) == "done"


async def test_without_the_interceptor_the_same_activity_times_out_on_heartbeat(local_env: WorkflowEnvironment) -> None:
    with pytest.raises(WorkflowFailureError) as raised:
        await run_slow_activity(local_env, "slow_sync", [])
    activity_error = raised.value.cause
    assert isinstance(activity_error, ActivityError)
    assert isinstance(activity_error.cause, TimeoutError)
    assert activity_error.cause.type is TimeoutType.HEARTBEAT


@workflow.defn(sandboxed=False)
class CreateRepositoryStepWorkflow:
    """The create_repository step exactly as ProjectInitWorkflow runs it: its StepRunner and its policy."""

    @workflow.run
    async def run(self, slug: str) -> int:
        steps = StepRunner(slug, [StepName.CREATE_REPOSITORY], STEP_POLICIES, ProjectOperation.CREATE)
        await steps.run(StepName.CREATE_REPOSITORY, CREATE_REPOSITORY, slug, str, lambda name: name)
        return steps.step(StepName.CREATE_REPOSITORY).attempt


class SilentFirstAttempt:
    """The first attempt hangs without heartbeats, as if its worker had been killed; later attempts succeed."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.release = threading.Event()

    def activity(self) -> Callable[..., Any]:
        @activity.defn(name=CREATE_REPOSITORY)
        def create_repository(slug: str) -> str:
            self.started.append(time.monotonic())
            if len(self.started) == 1:
                self.release.wait(120)
            return slug

        return create_repository


async def test_a_silent_attempt_is_retried_after_the_heartbeat_timeout_not_start_to_close(
    local_env: WorkflowEnvironment,
) -> None:
    policy = STEP_POLICIES[StepName.CREATE_REPOSITORY]
    assert policy.heartbeat_timeout * 2 < policy.attempt_timeout  # otherwise this test could not tell them apart
    silent = SilentFirstAttempt()
    task_queue = f"heartbeat-{uuid.uuid4().hex[:8]}"
    # No heartbeat interceptor here: from the server's view, this worker's first attempt is a dead process's.
    with ThreadPoolExecutor(max_workers=2) as executor:
        async with Worker(
            local_env.client,
            task_queue=task_queue,
            workflows=[CreateRepositoryStepWorkflow],
            activities=[silent.activity()],
            activity_executor=executor,
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            try:
                attempts = await local_env.client.execute_workflow(
                    CreateRepositoryStepWorkflow.run, "heartbeat-probe", id=task_queue, task_queue=task_queue
                )
            finally:
                silent.release.set()
    assert attempts == 2
    retried_after = silent.started[1] - silent.started[0]
    heartbeat_timeout = policy.heartbeat_timeout.total_seconds()
    # The heartbeat timeout plus the step's first retry interval (1 s), with room for a loaded machine.
    assert heartbeat_timeout <= retried_after < policy.attempt_timeout.total_seconds() - 5, retried_after
