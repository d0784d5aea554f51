"""The provisioner worker: the entry point of the whole story.

worker.py registers the workflows (workflows/) and the activities (activities/, one module per external system)
on one task queue. Activities are synchronous and run on a thread pool whose size is the worker's activity slot
count, so a slot always has a thread; the one asking Temporal itself about runs is async, on the worker's loop.
SIGTERM and SIGINT drain the worker gracefully. Telemetry (provisioner/telemetry.py): Prometheus metrics when
PROVISIONER_METRICS_PORT is set, OpenTelemetry tracing when OTEL_EXPORTER_OTLP_ENDPOINT is.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Interceptor, UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.flux import FluxActivities
from activities.git import GitActivities
from activities.records import RecordActivities
from activities.template import TemplateActivities
from provisioner.db.engine import migrate
from provisioner.heartbeat import AutoHeartbeatInterceptor
from provisioner.settings import Settings
from provisioner.telemetry import AWAITING_READY_RUNS, build_runtime, configure_tracing, runtime_of
from provisioner.temporal import connect
from workflows.project_init import ProjectInitWorkflow
from workflows.project_teardown import ProjectTeardownWorkflow
from workflows.project_update import ProjectPreviewWorkflow, ProjectUpdateWorkflow

log = logging.getLogger("provisioner.worker")

WORKFLOWS: Sequence[type] = [
    ProjectInitWorkflow,
    ProjectUpdateWorkflow,
    ProjectPreviewWorkflow,
    ProjectTeardownWorkflow,
]
# The worker runs the workflows outside Temporal's sandbox: the sandbox re-imports the workflow module for every run
# it keeps cached, 60-100 kB of RSS per run, and a waiting fleet of 1,000 keeps 1,000 runs cached (bench/README.md).
# The sandbox still guards determinism where it costs nothing at run time: the workflow tests and the replay of
# every recorded history run these workflows in DETERMINISM_GUARD_RUNNER, which fails on a clock, random, I/O or
# other restricted call.
WORKFLOW_RUNNER = UnsandboxedWorkflowRunner()
# The workflows' helper modules hold only functions and constants: one copy serves all runs. `mutmut` (make
# test-mutation) puts its trampoline into the workflow modules; it must be the one copy that selects the mutant.
DETERMINISM_GUARD_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows.steps", "workflows.cleanup", "mutmut")
)


def build_activities(settings: Settings) -> list[Callable[..., Any]]:
    templates = TemplateActivities(settings.templates_dir)
    git = GitActivities(settings)
    records = RecordActivities(settings.effective_database_url)
    flux = FluxActivities(settings)
    return [
        templates.validate_template,
        git.create_repository,
        git.push_template,
        git.preview_push,
        git.delete_repository,
        records.read_project_record,
        records.upsert_project_record,
        records.mark_project_record,
        flux.apply_flux_resources,
        flux.check_flux_readiness,
        flux.delete_flux_resources,
        flux.check_flux_deletion,
    ]


def build_worker(
    client: Client, settings: Settings, executor: ThreadPoolExecutor, interceptors: Sequence[Interceptor] = ()
) -> Worker:
    """The worker; every activity heartbeats (provisioner/heartbeat.py), inside whatever `interceptors` wrap."""
    # The workflows' metrics go to the client's runtime by themselves; the process-level gauge is published there too.
    AWAITING_READY_RUNS.publish_to(runtime_of(client))
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        workflow_runner=WORKFLOW_RUNNER,
        activities=build_activities(settings),
        activity_executor=executor,
        # One slot per thread: a slot without a thread would queue activities inside the worker, invisibly.
        max_concurrent_activities=settings.activity_threads,
        graceful_shutdown_timeout=timedelta(seconds=20),
        # Last, so the heartbeats cover the activity function and what the other interceptors wrap around it.
        interceptors=[*interceptors, AutoHeartbeatInterceptor()],
    )


async def run_worker(
    settings: Settings,
    client: Client | None = None,
    stop: asyncio.Event | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> None:
    """Run until `stop` is set, then finish in-flight activities and return."""
    await asyncio.to_thread(migrate, settings.effective_database_url)
    # A given client brings its own runtime (and so its metrics); otherwise the Settings decide.
    client = client or await connect(settings, runtime=build_runtime(settings))
    stop = stop or asyncio.Event()
    tracing = configure_tracing()
    try:
        with ThreadPoolExecutor(max_workers=settings.activity_threads, thread_name_prefix="activity") as executor:
            worker = build_worker(client, settings, executor, [*tracing.interceptors, *interceptors])
            log.info(
                "worker polling task queue %r with %d activity threads",
                settings.task_queue,
                settings.activity_threads,
            )
            async with worker:
                await stop.wait()
                log.info("shutting down: finishing in-flight activities")
    finally:
        await asyncio.to_thread(tracing.shutdown)  # flush the spans still buffered


async def serve(settings: Settings, interceptors: Sequence[Interceptor] = ()) -> None:
    """The worker process: runs until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_worker(settings, stop=stop, interceptors=interceptors)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(Settings.from_env()))


if __name__ == "__main__":
    main()
