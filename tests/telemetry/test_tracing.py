"""OpenTelemetry tracing of the worker through Temporal's interceptor (the optional `otel` extra): spans of a real
provisioning, in memory and sent over OTLP/HTTP to a real HTTP endpoint; off, with one log line, without an
endpoint."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing needs the otel extra")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="tracing needs the otel extra")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor

from provisioner.client import ProvisionerClient
from provisioner.contracts import ProjectStatus
from provisioner.telemetry import OTEL_ENDPOINT_ENV, WorkerTracing, configure_tracing, tracing_to
from tests.stack import Stack, spec_for, unique_slug
from worker import build_worker


@asynccontextmanager
async def traced_worker(
    stack: Stack, tracing: WorkerTracing, starter: Client | None = None
) -> AsyncIterator[ProvisionerClient]:
    """A worker traced by `tracing`, and a ProvisionerClient starting runs through `starter` (default: untraced)."""
    settings = replace(stack.settings, task_queue=f"traced-{uuid.uuid4().hex[:8]}")
    with ThreadPoolExecutor(max_workers=settings.activity_threads) as executor:
        async with build_worker(stack.temporal, settings, executor, tracing.interceptors):
            yield ProvisionerClient(starter or stack.temporal, settings.task_queue)


def traced_client(stack: Stack, tracing: WorkerTracing) -> Client:
    """What the API or the CLI would be with the same interceptor: its calls carry the trace context."""
    config = stack.temporal.config()
    config["interceptors"] = [i for i in tracing.interceptors if isinstance(i, TracingInterceptor)]
    return Client(**config)


async def test_a_provisioning_started_by_a_traced_client_is_one_trace(stack: Stack) -> None:
    exporter = InMemorySpanExporter()
    tracing = tracing_to(SimpleSpanProcessor(exporter))
    async with traced_worker(stack, tracing, traced_client(stack, tracing)) as provisioner:
        result = await (await provisioner.start(spec_for(unique_slug("traced")))).result()
    tracing.shutdown()
    assert result.status is ProjectStatus.READY

    spans = exporter.get_finished_spans()
    names = {span.name for span in spans}
    assert {"StartWorkflow:ProjectInitWorkflow", "RunWorkflow:ProjectInitWorkflow"} <= names
    for activity in ("validate_template", "push_template", "apply_flux_resources", "check_flux_readiness"):
        assert f"StartActivity:{activity}" in names and f"RunActivity:{activity}" in names
    assert len({span.context.trace_id for span in spans if span.context is not None}) == 1
    assert {span.resource.attributes["service.name"] for span in spans} == {"provisioner-worker"}


async def test_a_run_started_without_trace_context_still_traces_each_activity(stack: Stack) -> None:
    exporter = InMemorySpanExporter()
    tracing = tracing_to(SimpleSpanProcessor(exporter))
    async with traced_worker(stack, tracing) as provisioner:
        result = await (await provisioner.start(spec_for(unique_slug("untraced"), wait_for_ready=False))).result()
    tracing.shutdown()
    assert result.status is ProjectStatus.PROVISIONED

    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert "RunWorkflow:ProjectInitWorkflow" in spans
    # Without a client span each activity is a trace of its own: RunActivity under the workflow's StartActivity.
    started, ran = spans["StartActivity:push_template"], spans["RunActivity:push_template"]
    assert started.context is not None and ran.parent is not None
    assert ran.parent.span_id == started.context.span_id


@dataclass
class OtlpReceiver:
    """An HTTP endpoint that records what OTLP exporters POST to it."""

    requests: list[tuple[str, str, bytes]] = field(default_factory=list)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, self.headers["Content-Type"], body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[str, OtlpReceiver]]:
    receiver = OtlpReceiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), receiver.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", receiver
    finally:
        server.shutdown()
        server.server_close()


async def test_with_an_endpoint_spans_are_sent_over_otlp_http(
    stack: Stack, otlp_receiver: tuple[str, OtlpReceiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, receiver = otlp_receiver
    monkeypatch.setenv(OTEL_ENDPOINT_ENV, endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "provisioner-worker-test")
    tracing = configure_tracing()
    assert len(tracing.interceptors) == 1
    async with traced_worker(stack, tracing) as provisioner:
        result = await (await provisioner.start(spec_for(unique_slug("otlp"), wait_for_ready=False))).result()
    tracing.shutdown()  # flushes the batch
    assert result.status is ProjectStatus.PROVISIONED

    assert receiver.requests, "the exporter sent nothing"
    names: set[str] = set()
    services: set[str] = set()
    for path, content_type, body in receiver.requests:
        assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            services |= {a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"}
            names |= {span.name for scope in resource_spans.scope_spans for span in scope.spans}
    assert services == {"provisioner-worker-test"}
    assert {"RunWorkflow:ProjectInitWorkflow", "RunActivity:create_repository"} <= names


def test_without_an_endpoint_tracing_is_off_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(OTEL_ENDPOINT_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="provisioner.telemetry"):
        tracing = configure_tracing()
    assert tracing.interceptors == ()
    assert [record.getMessage() for record in caplog.records] == [f"tracing off: {OTEL_ENDPOINT_ENV} is not set"]
