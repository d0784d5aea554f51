"""The worker's Prometheus endpoint, scraped over HTTP while real provisionings run through a real worker on the
Temporal dev server (tests/stack.py): Temporal's own series and the provisioner's, on one endpoint."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta

import pytest
from temporalio.client import WorkflowFailureError

from provisioner.client import ProvisionerClient
from provisioner.contracts import ErrorType, FailurePolicy, ProjectStatus, StepName, StepState
from provisioner.stack import free_port
from provisioner.telemetry import (
    AWAITING_READY,
    PROVISIONING_DURATION,
    PROVISIONING_DURATION_BUCKETS,
    STEP_FAILURES,
    UNVALIDATED_TEMPLATE,
    build_runtime,
)
from provisioner.temporal import connect
from tests.stack import Stack, spec_for, unique_slug
from tests.telemetry.prometheus import MetricsEndpoint
from worker import build_worker


@dataclass
class MeteredWorker:
    provisioner: ProvisionerClient
    metrics: MetricsEndpoint
    task_queue: str


@pytest.fixture(scope="module")
async def metered(stack: Stack) -> AsyncIterator[MeteredWorker]:
    """The real worker on its own task queue, its client connected with a runtime that serves /metrics."""
    settings = replace(
        stack.settings,
        task_queue=f"metrics-{uuid.uuid4().hex[:8]}",
        temporal_address=stack.temporal.service_client.config.target_host,
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
    )
    runtime = build_runtime(settings)
    assert runtime is not None
    client = await connect(settings, runtime=runtime)
    with ThreadPoolExecutor(max_workers=settings.activity_threads) as executor:
        async with build_worker(client, settings, executor):
            yield MeteredWorker(
                ProvisionerClient(client, settings.task_queue),
                MetricsEndpoint(f"http://127.0.0.1:{settings.metrics_port}/metrics"),
                settings.task_queue,
            )


def test_metrics_are_off_unless_a_port_is_configured(stack: Stack) -> None:
    assert build_runtime(replace(stack.settings, metrics_port=0)) is None


async def test_a_ready_provisioning_shows_temporal_and_provisioner_series(metered: MeteredWorker) -> None:
    handle = await metered.provisioner.start(spec_for(unique_slug("metered")))
    result = await handle.result()
    assert result.status is ProjectStatus.READY, result.message
    description = await handle.describe()
    assert description.close_time is not None
    run_seconds = (description.close_time - description.start_time).total_seconds()

    # Temporal's runtime metrics, from the Rust core, for this worker's task queue.
    completed = await metered.metrics.wait_for(
        "temporal_workflow_completed",
        lambda value: value is not None and value >= 1,
        workflow_type="ProjectInitWorkflow",
        task_queue=metered.task_queue,
    )
    assert completed is not None and completed >= 1
    latency = await metered.metrics.value(
        "temporal_activity_execution_latency_count", activity_type="push_template", task_queue=metered.task_queue
    )
    assert latency is not None and latency >= 1

    # The provisioner's histogram: one observation, in seconds, no longer than the run itself, in our buckets.
    labels = {"template": "web-service", "outcome": "ready", "task_queue": metered.task_queue}
    assert await metered.metrics.value(f"{PROVISIONING_DURATION}_count", **labels) == 1
    observed = await metered.metrics.value(f"{PROVISIONING_DURATION}_sum", **labels)
    assert observed is not None and 0 < observed <= run_seconds + 1
    buckets = [
        sample.labels["le"]
        for sample in await metered.metrics.scrape()
        if sample.name == f"{PROVISIONING_DURATION}_bucket" and labels.items() <= sample.labels.items()
    ]
    assert buckets == [f"{bound:g}" for bound in PROVISIONING_DURATION_BUCKETS] + ["+Inf"]


async def test_a_failed_step_is_counted_by_step_and_error_type(metered: MeteredWorker) -> None:
    labels = {"step": StepName.VALIDATE_TEMPLATE.value, "error_type": ErrorType.KUSTOMIZE_PATH_MISSING.value}
    before = await metered.metrics.value(STEP_FAILURES, **labels) or 0

    spec = spec_for(unique_slug("broken"), template="no-overlay", on_failure=FailurePolicy(timedelta(0)))
    handle = await metered.provisioner.start(spec)
    with pytest.raises(WorkflowFailureError):
        await handle.result()

    assert await metered.metrics.value(STEP_FAILURES, **labels) == before + 1
    # The template never passed validation, so its name stays out of the labels.
    failed = await metered.metrics.value(
        f"{PROVISIONING_DURATION}_count", template=UNVALIDATED_TEMPLATE, outcome="failed"
    )
    assert failed is not None and failed >= 1


async def test_the_gauge_counts_the_runs_waiting_for_ready(stack: Stack, metered: MeteredWorker) -> None:
    slug = unique_slug("waiting")
    ready = {"template": "web-service", "outcome": "ready"}
    ready_before = await metered.metrics.value(f"{PROVISIONING_DURATION}_count", **ready) or 0
    stack.cluster.flux.hold(namespace=slug)
    try:
        handle = await metered.provisioner.start(spec_for(slug, ready_timeout=timedelta(minutes=2)))
        async for progress in metered.provisioner.watch(slug):
            if {s.name: s for s in progress.steps}[StepName.AWAIT_READY].state is StepState.RUNNING:
                break
        assert await metered.metrics.value(AWAITING_READY) == 1
    finally:
        stack.cluster.flux.release(namespace=slug)
    result = await handle.result()
    assert result.status is ProjectStatus.READY, result.message
    assert await metered.metrics.value(AWAITING_READY) == 0
    assert await metered.metrics.value(f"{PROVISIONING_DURATION}_count", **ready) == ready_before + 1
