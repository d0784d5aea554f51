"""TEST ONLY: the real worker process (worker.serve, same activities, same configuration) that hangs at a chosen step.

`python -m tests.chaos.crashing_worker` with CHAOS_CRASH_STEP=<a StepName value, or `any`> and
CHAOS_CRASH_MARKER=<file>. Once an activity of that step has done its work (its function returned: the side effect
exists, the completion is not reported yet, the worst moment to die), the worker appends a line to the marker file
and blocks that activity for good; the test then kills the process with SIGKILL. The auto-heartbeats keep going
while it blocks, as they would in any live worker, so the server learns of the loss only from the kill.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from provisioner.contracts import ProjectStatus, StepName
from provisioner.settings import Settings
from worker import serve
from workflows.project_init import (
    APPLY_FLUX_RESOURCES,
    CHECK_FLUX_READINESS,
    CREATE_REPOSITORY,
    PUSH_TEMPLATE,
    UPSERT_PROJECT_RECORD,
    VALIDATE_TEMPLATE,
)

CRASH_STEP_ENV = "CHAOS_CRASH_STEP"
CRASH_MARKER_ENV = "CHAOS_CRASH_MARKER"
ANY_STEP = "any"

STEP_OF_ACTIVITY = {
    VALIDATE_TEMPLATE: StepName.VALIDATE_TEMPLATE,
    CREATE_REPOSITORY: StepName.CREATE_REPOSITORY,
    PUSH_TEMPLATE: StepName.PUSH_TEMPLATE,
    APPLY_FLUX_RESOURCES: StepName.APPLY_FLUX_RESOURCES,
    CHECK_FLUX_READINESS: StepName.AWAIT_READY,
}


def step_of(activity_type: str, args: Sequence[Any]) -> StepName | None:
    """The ProjectInitWorkflow step an activity call belongs to; both record steps call upsert_project_record."""
    if activity_type == UPSERT_PROJECT_RECORD:
        # The first write records the run as provisioning; the last one its outcome.
        provisioning = args[0].status == ProjectStatus.PROVISIONING
        return StepName.PERSIST_RECORD if provisioning else StepName.FINALIZE_RECORD
    return STEP_OF_ACTIVITY.get(activity_type)


class HangAfterStep(Interceptor):
    """Hangs every sync activity of `step` (of any step for ANY_STEP) once its function has returned."""

    def __init__(self, step: StepName | None, marker: Path) -> None:
        self.step = step
        self.marker = marker
        self._marker_lock = threading.Lock()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _HangInbound(next, self)

    def hang(self, fn: Callable[..., Any], info: activity.Info) -> Callable[..., Any]:
        def run_then_hang(*args: Any) -> Any:
            fn(*args)
            line = {"pid": os.getpid(), "activity": info.activity_type, "workflow_id": info.workflow_id}
            with self._marker_lock, self.marker.open("a") as marker:
                marker.write(json.dumps(line) + "\n")
            threading.Event().wait()  # until SIGKILL

        return run_then_hang


class _HangInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, hang: HangAfterStep) -> None:
        super().__init__(next)
        self._hang = hang

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        chosen = self._hang.step is None or step_of(info.activity_type, input.args) is self._hang.step
        # Every provisioning activity is sync; an async one (a Temporal query of runs) is no side effect to lose.
        if chosen and not inspect.iscoroutinefunction(input.fn):
            input = dataclasses.replace(input, fn=self._hang.hang(input.fn, info))
        return await self.next.execute_activity(input)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raw_step = os.environ[CRASH_STEP_ENV]
    step = None if raw_step == ANY_STEP else StepName(raw_step)
    hang = HangAfterStep(step, Path(os.environ[CRASH_MARKER_ENV]))
    asyncio.run(serve(Settings.from_env(), interceptors=[hang]))


if __name__ == "__main__":
    main()
