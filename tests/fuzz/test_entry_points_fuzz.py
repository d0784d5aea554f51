"""Fuzzing the three entry points on the end-to-end stack (Temporal dev server, real worker, git over HTTP, sandbox
cluster with its Flux simulator, PostgreSQL): the Python client, the HTTP API and the workflow started directly.

Every invalid request is refused with field-level errors and leaves no trace: no workflow started by the client or
the API, and, for every path, no repository, no database row, no namespace and no Flux object. A workflow started
directly with a malformed request fails with InvalidInput before scheduling any activity or timer (no operator
decision is awaited); one the template refuses fails at the side-effect-free validate_template step. Valid generated
requests are provisioned end to end, by the client and by the API.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError

from provisioner.api import create_app
from provisioner.client import InvalidRequest, ProvisionerClient
from provisioner.contracts import (
    MAX_READY_TIMEOUT,
    MIN_READY_TIMEOUT,
    ErrorType,
    ProjectSpec,
    ProjectStatus,
    ProvisioningResult,
)
from provisioner.db.projects import get_project
from tests.fuzz.checks import MAX_ERROR_LENGTH, activities_and_timers, assert_clear, error_heads, heads
from tests.fuzz.footprint import Footprint, footprint, project_footprint
from tests.fuzz.strategies import (
    SPEC_FIELDS,
    TEMPLATE_REFUSALS,
    Corrupted,
    Refused,
    parameter_names,
    shape_corrupted_specs,
    template_rejected_specs,
    unique,
    valid_specs,
)
from tests.stack import Stack
from workflows.project_init import ProjectInitWorkflow

# Cheap checks (refused before any RPC) take more examples than those running workflows on the stack.
REFUSED_AT_THE_DOOR = settings(
    max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
RUNS_ON_THE_STACK = settings(REFUSED_AT_THE_DOOR, max_examples=12)
RUN_SECONDS = 120  # generous: the machine is shared
READY_WITHIN = timedelta(seconds=60)  # the Flux simulator reports Ready within seconds
# A workflow input stays under Temporal's payload size limit (2 MB by default) when sent directly.
DIRECT_INPUT_MAX_STRING = 64 * 1024
TOKEN = f"fuzz-{uuid.uuid4().hex}"
API_FIELD_NAMES = {"ready_timeout": "ready_timeout_seconds"}  # the API spells this contract field differently


# ---- What exists: workflows started, and everything a run could create ---------------------------------------


class StartRecorder(Interceptor):
    """Records the id of every workflow its client starts."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _RecordingOutbound(next, self.started)


class _RecordingOutbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, started: list[str]) -> None:
        super().__init__(next)
        self._started = started

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        self._started.append(input.id)
        return await super().start_workflow(input)


@dataclass
class EntryPoints:
    stack: Stack
    recorder: StartRecorder
    client: ProvisionerClient  # on a recording Temporal client
    api: httpx.AsyncClient  # the real app in process, on the same recording client

    def snapshot(self) -> Footprint:
        self.recorder.started.clear()
        return footprint(self.stack)

    def assert_nothing_started_or_created(self, before: Footprint) -> None:
        assert self.recorder.started == []
        assert footprint(self.stack) == before


@pytest.fixture(scope="module")
async def entry_points(stack: Stack) -> AsyncIterator[EntryPoints]:
    recorder = StartRecorder()
    config = stack.temporal.config()
    config["interceptors"] = [*config["interceptors"], recorder]
    temporal = Client(**config)
    app = create_app(stack.settings, client=temporal, tokens=frozenset({TOKEN}))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://provisioner.test", headers=headers
    ) as api:
        yield EntryPoints(stack, recorder, ProvisionerClient(temporal, stack.settings.task_queue), api)


def api_body(spec: ProjectSpec) -> dict[str, Any]:
    return {
        "slug": spec.slug,
        "display_name": spec.display_name,
        "template": spec.template,
        "parameters": spec.parameters,
        "environment": spec.environment,
        "wait_for_ready": spec.wait_for_ready,
        "ready_timeout_seconds": whole_seconds(spec.ready_timeout),
    }


async def post_json(api: httpx.AsyncClient, body: dict[str, Any] | str) -> httpx.Response:
    """POST /projects with `body` as JSON; NaN and Infinity included, as Python's (and FastAPI's) JSON reads them."""
    content = body if isinstance(body, str) else json.dumps(body)
    return await api.post("/projects", content=content, headers={"content-type": "application/json"})


def whole_seconds(timeout: timedelta) -> int:
    return min(max(math.ceil(timeout.total_seconds()), 1), int(MAX_READY_TIMEOUT.total_seconds()))


async def run_failure(handle: WorkflowHandle[Any, ProvisioningResult]) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), RUN_SECONDS)
    assert isinstance(failed.value.cause, ApplicationError), failed.value.cause
    return failed.value.cause


# ---- The Python client ---------------------------------------------------------------------------------------


@REFUSED_AT_THE_DOOR
@given(corrupted=shape_corrupted_specs())
async def test_the_client_refuses_malformed_requests_before_starting_or_creating_anything(
    entry_points: EntryPoints, corrupted: Corrupted
) -> None:
    before = entry_points.snapshot()

    with pytest.raises(InvalidRequest) as refused:
        await entry_points.client.start(corrupted.spec)

    assert error_heads(refused.value.errors) == corrupted.fields
    assert_clear(refused.value.errors)
    assert all(f"{error.field}: " in str(refused.value) for error in refused.value.errors)
    entry_points.assert_nothing_started_or_created(before)


# ---- The HTTP API --------------------------------------------------------------------------------------------

WRONG_JSON_TYPES: list[Any] = [None, 42, 1.5, True, [], {}, ["a"]]


@st.composite
def invalid_bodies(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A JSON body with exactly one field wrong, and that field's (top-level) name in the API."""
    kind = draw(st.sampled_from(["contract", "template", "json_type", "timeout", "unknown_field"]))
    if kind == "contract":  # well-typed JSON the contract refuses (the timeout has its own case: whole seconds)
        corrupted = draw(
            shape_corrupted_specs(
                encodable_only=True, fields_from=tuple(f for f in SPEC_FIELDS if f != "ready_timeout"), max_fields=1
            )
        )
        (field,) = corrupted.fields
        return api_body(corrupted.spec), field
    if kind == "template":
        refused: Refused = draw(template_rejected_specs())
        return api_body(refused.spec), refused.field.split(".", 1)[0]
    body = api_body(draw(valid_specs()))
    if kind == "json_type":
        field = draw(st.sampled_from(sorted(body)))
        wrong = st.sampled_from(WRONG_JSON_TYPES).filter(lambda value: type(value) is not type(body[field]))
        if field == "wait_for_ready":  # pydantic reads 0/1 and "yes"/"no" as booleans: only these are wrong
            wrong = st.sampled_from([None, 2, 1.5, [], {}, "maybe"])
        if field == "parameters":  # a mapping whose value is no scalar
            wrong = st.one_of(wrong, st.sampled_from([None, [], {}, ["a"]]).map(lambda value: {"owner": value}))
        if field == "ready_timeout_seconds":
            wrong = st.sampled_from([None, 1.5, [], {}, "sixty"])  # (pydantic reads true as 1)
        body[field] = draw(wrong)
        return body, field
    if kind == "timeout":
        body["ready_timeout_seconds"] = draw(
            st.one_of(
                st.integers(max_value=int(MIN_READY_TIMEOUT.total_seconds()) - 1),
                st.integers(min_value=int(MAX_READY_TIMEOUT.total_seconds()) + 1),
                st.floats().filter(lambda value: not value.is_integer()),
            )
        )
        return body, "ready_timeout_seconds"
    name = draw(parameter_names().filter(lambda name: name not in body))
    body[name] = draw(st.sampled_from(["x", 1, None]))
    return body, name


@REFUSED_AT_THE_DOOR
@given(invalid=invalid_bodies())
async def test_the_api_answers_422_naming_the_invalid_field_and_starts_or_creates_nothing(
    entry_points: EntryPoints, invalid: tuple[dict[str, Any], str]
) -> None:
    body, field = invalid
    before = entry_points.snapshot()

    response = await post_json(entry_points.api, body)

    assert response.status_code == 422, response.text[:500]
    detail = response.json()["detail"]
    assert detail and all(item["field"] and item["msg"] for item in detail)
    assert heads(item["field"] for item in detail) == {field}, detail
    assert all(len(f"{item['field']}: {item['msg']}") <= MAX_ERROR_LENGTH for item in detail)
    entry_points.assert_nothing_started_or_created(before)


async def test_an_integer_beyond_what_python_parses_is_refused_as_a_bad_body(entry_points: EntryPoints) -> None:
    body = api_body(replace(ProjectSpec("huge-int", "Huge", "web-service"), parameters={"owner": "x", "replicas": 1}))
    raw = json.dumps(body)
    assert '"replicas": 1}' in raw
    before = entry_points.snapshot()

    response = await post_json(entry_points.api, raw.replace('"replicas": 1}', '"replicas": 1' + "0" * 5000 + "}"))

    # FastAPI's own body parsing refuses it (Python reads at most 4300 digits): a 400, not a field error.
    assert response.status_code == 400, response.text[:500]
    entry_points.assert_nothing_started_or_created(before)


# ---- The workflow, started directly ------------------------------------------------------------------------


@RUNS_ON_THE_STACK
@given(corrupted=shape_corrupted_specs(encodable_only=True, max_size=DIRECT_INPUT_MAX_STRING))
async def test_a_workflow_started_directly_with_a_malformed_request_fails_before_any_activity(
    entry_points: EntryPoints, corrupted: Corrupted
) -> None:
    stack = entry_points.stack
    before = entry_points.snapshot()

    handle = await stack.temporal.start_workflow(  # not through ProvisionerClient: no client-side validation
        ProjectInitWorkflow.run,
        corrupted.spec,
        id=f"fuzz-direct-{uuid.uuid4().hex}",
        task_queue=stack.settings.task_queue,
    )
    failure = await run_failure(handle)

    assert failure.type == ErrorType.INVALID_INPUT.value
    assert failure.non_retryable
    assert "invalid project request: " in failure.message
    assert all(f"{field}" in failure.message for field in corrupted.fields), failure.message
    assert await activities_and_timers(handle) == ([], 0)  # no step ran, no decision was awaited
    assert footprint(stack) == before


@RUNS_ON_THE_STACK
@given(refused=template_rejected_specs(refusals=tuple(r for r in TEMPLATE_REFUSALS if r != "unknown_template")))
async def test_a_request_only_the_template_refuses_fails_at_validation_before_any_side_effect(
    entry_points: EntryPoints, refused: Refused
) -> None:
    spec = replace(refused.spec, slug=unique(refused.spec.slug, uuid.uuid4().hex))
    stack = entry_points.stack
    before = entry_points.snapshot()

    handle = await entry_points.client.start(spec)  # the client checks only the shape: the run finds the rest
    failure = await run_failure(handle)

    assert failure.type == ErrorType.INVALID_INPUT.value
    assert f"{refused.field}: " in failure.message
    activities, timers = await activities_and_timers(handle)
    assert (activities, timers) == (["validate_template"], 0)
    assert entry_points.recorder.started == [spec.workflow_id]
    assert footprint(stack) == before


# ---- Valid requests ------------------------------------------------------------------------------------------


@settings(RUNS_ON_THE_STACK, max_examples=10)
@given(spec=valid_specs(), via_api=st.booleans())
async def test_valid_generated_requests_are_provisioned_end_to_end(
    entry_points: EntryPoints, spec: ProjectSpec, via_api: bool
) -> None:
    stack = entry_points.stack
    spec = replace(spec, slug=unique(spec.slug, uuid.uuid4().hex))
    if spec.wait_for_ready:
        spec = replace(spec, ready_timeout=max(spec.ready_timeout, READY_WITHIN))
    if via_api:
        spec = replace(spec, ready_timeout=timedelta(seconds=whole_seconds(spec.ready_timeout)))
    before = entry_points.snapshot()

    if via_api:
        response = await post_json(entry_points.api, api_body(spec))
        assert response.status_code == 202, response.text
    else:
        await entry_points.client.start(spec)
    result = await asyncio.wait_for(stack.provisioner.wait(spec.slug), RUN_SECONDS)

    assert result.status is (ProjectStatus.READY if spec.wait_for_ready else ProjectStatus.PROVISIONED), result
    assert entry_points.recorder.started == [spec.workflow_id]
    assert footprint(stack).added_since(before) == project_footprint(spec.slug)
    record = get_project(stack.settings.effective_database_url, spec.slug)
    assert record is not None
    assert (record.display_name, record.template, record.environment) == (
        spec.display_name,
        spec.template,
        spec.environment,
    )
