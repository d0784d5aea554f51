"""The worker's telemetry: Prometheus metrics served by Temporal's core runtime, and optional OpenTelemetry tracing.

One `/metrics` endpoint carries Temporal's own metrics (`temporal_*`) and the provisioner's (`provisioner_*`): the
workflows record theirs through `workflow.metric_meter()` (workflows/steps.py), which the SDK routes to the runtime
the worker's client was connected with, and which records nothing while a workflow replays. The one exception is
the gauge of runs waiting for Ready, kept here per process (see `AwaitingReadyRuns`).

Workflow code imports this module passed through the sandbox, so `AWAITING_READY_RUNS` is the process's one copy.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from temporalio.client import Client
from temporalio.common import MetricGauge, MetricMeter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Interceptor

from provisioner.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

log = logging.getLogger("provisioner.telemetry")

PROVISIONING_DURATION = "provisioner_provisioning_duration_seconds"
STEP_FAILURES = "provisioner_step_failures_total"
AWAITING_READY = "provisioner_projects_awaiting_ready"

# A provisioning takes seconds without waiting for Ready and up to the 30-minute ready timeout with it.
PROVISIONING_DURATION_BUCKETS: Sequence[float] = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600)

# The `template` label before the catalogue accepted the name: an unvalidated name would make the label unbounded.
UNVALIDATED_TEMPLATE = "unvalidated"

OTEL_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_SERVICE_NAME_ENV = "OTEL_SERVICE_NAME"
DEFAULT_SERVICE_NAME = "provisioner-worker"


def metrics_bind_address(settings: Settings) -> str | None:
    """`host:port` of the worker's /metrics endpoint, or None when metrics are off."""
    if not settings.metrics_port:
        return None
    host = settings.metrics_host
    return f"[{host}]:{settings.metrics_port}" if ":" in host else f"{host}:{settings.metrics_port}"


def build_runtime(settings: Settings) -> Runtime | None:
    """A Temporal runtime serving Prometheus metrics on the configured address; None (the SDK's default runtime,
    without metrics) when metrics are off. Binding the port happens here, so a taken port stops the worker at start.
    """
    bind_address = metrics_bind_address(settings)
    if bind_address is None:
        log.info("metrics off: PROVISIONER_METRICS_PORT is not set")
        return None
    prometheus = PrometheusConfig(
        bind_address=bind_address,
        durations_as_seconds=True,  # Prometheus' convention, for temporal_* latencies and ours alike
        histogram_bucket_overrides={PROVISIONING_DURATION: list(PROVISIONING_DURATION_BUCKETS)},
    )
    runtime = Runtime(telemetry=TelemetryConfig(metrics=prometheus))
    log.info("serving Prometheus metrics at http://%s/metrics", bind_address)
    return runtime


def runtime_of(client: Client) -> Runtime:
    """The runtime the client (and so every worker built on it) records its metrics in."""
    return client.service_client.config.runtime or Runtime.default()


class AwaitingReadyRuns:
    """The provisioning runs held by this worker process that are waiting for Flux's Ready, published as a gauge.

    Not recorded through the workflows' replay-safe meter: a waiting run that moves to another worker (a restart, a
    cache eviction) is replayed there, and replay records nothing, so a count kept from workflow events would drift.
    A set of the run ids each process holds stays right: replay adds the run where it now lives, and leaving the wait
    (or the run being evicted, which cancels it) removes it. Each worker reports its own; sum over workers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: set[str] = set()
        self._gauges: weakref.WeakKeyDictionary[Runtime, MetricGauge] = weakref.WeakKeyDictionary()

    def publish_to(self, runtime: Runtime) -> None:
        """Report the count as a gauge in `runtime`'s metrics (once per runtime; nothing if it has no metrics)."""
        meter = runtime.metric_meter
        if meter is MetricMeter.noop:
            return
        with self._lock:
            if runtime not in self._gauges:
                self._gauges[runtime] = meter.create_gauge(
                    AWAITING_READY, "Provisioning runs of this worker process waiting for Flux to report Ready"
                )
            self._gauges[runtime].set(len(self._runs))

    @contextmanager
    def waiting(self, run_id: str) -> Iterator[None]:
        self._update(lambda runs: runs.add(run_id))
        try:
            yield
        finally:
            self._update(lambda runs: runs.discard(run_id))

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)

    def _update(self, change: Callable[[set[str]], None]) -> None:
        with self._lock:
            change(self._runs)
            for gauge in self._gauges.values():
                gauge.set(len(self._runs))


AWAITING_READY_RUNS = AwaitingReadyRuns()


@dataclass(frozen=True)
class WorkerTracing:
    """The worker interceptors that trace workflows and activities, and how to flush their spans at shutdown."""

    interceptors: Sequence[Interceptor] = ()
    shutdown: Callable[[], None] = field(default=lambda: None)


def tracing_to(span_processor: SpanProcessor, service_name: str = DEFAULT_SERVICE_NAME) -> WorkerTracing:
    """Tracing through Temporal's OpenTelemetry interceptor into `span_processor` (needs the `otel` extra)."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from temporalio.contrib.opentelemetry import TracingInterceptor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(span_processor)
    # Workflows are mostly started by the API or the CLI, which send no trace context: without this the worker
    # would create no workflow spans at all (a replayed run's later spans may then lack their parent).
    interceptor = TracingInterceptor(provider.get_tracer("provisioner.worker"), always_create_workflow_spans=True)
    return WorkerTracing(interceptors=[interceptor], shutdown=provider.shutdown)


def configure_tracing() -> WorkerTracing:
    """OTLP (HTTP/protobuf) tracing when OTEL_EXPORTER_OTLP_ENDPOINT is set and the `otel` extra is installed.

    The exporter reads the standard OTEL_EXPORTER_OTLP_* variables itself (endpoint, headers, timeout...).
    """
    env = os.environ
    if not env.get(OTEL_ENDPOINT_ENV):
        log.info("tracing off: %s is not set", OTEL_ENDPOINT_ENV)
        return WorkerTracing()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        log.warning("tracing off: %s is set but the otel extra is not installed (%s)", OTEL_ENDPOINT_ENV, error)
        return WorkerTracing()
    tracing = tracing_to(
        BatchSpanProcessor(OTLPSpanExporter()), env.get(OTEL_SERVICE_NAME_ENV) or DEFAULT_SERVICE_NAME
    )
    log.info("tracing workflows and activities to %s", env[OTEL_ENDPOINT_ENV])
    return tracing
