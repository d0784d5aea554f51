"""The worker's secrets (the Git push token, the database password inside its URL) never reach Temporal, the API's
view of a run, or the logs.

Real stack: Temporal dev server, the real worker, git over HTTP requiring the token, PostgreSQL reached through a URL
with a password (the server trusts local connections, so any password connects, and the run only succeeds if the
worker really used that URL). Four runs: a successful provisioning whose first push fails (so a git error travels
through the history), its teardown, a run failing at validation and a run failing after every step used a secret
(Flux stalls, the policy aborts at once, the rollback writes the record). Then every place a secret could land is
read back as bytes and searched, in the forms a leak would take (raw, the HTTP Basic credentials git sends).
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from google.protobuf import json_format
from sqlalchemy.engine import make_url
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from provisioner.contracts import (
    ErrorType,
    FailurePolicy,
    ProjectStatus,
    project_workflow_id,
)
from provisioner.db import dispose_engine
from provisioner.db.projects import get_project
from tests.catalogue import BROKEN_TEMPLATE
from tests.stack import Stack, running_stack, spec_for, unique_slug

DATABASE_PASSWORD = f"dbpassword{uuid.uuid4().hex}"
METADATA_QUERY = "__temporal_workflow_metadata"  # what the UI reads the current details from
AT_ONCE = FailurePolicy(decision_timeout=timedelta(0))


@pytest.fixture(scope="module")
async def secret_stack(
    local_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory, templates_dir: Path, database_url: str
) -> AsyncIterator[Stack]:
    """The end-to-end stack whose worker reaches PostgreSQL with DATABASE_PASSWORD in its URL."""
    url_with_password = make_url(database_url).set(password=DATABASE_PASSWORD).render_as_string(hide_password=False)
    try:
        async with running_stack(
            local_env.client,
            tmp_path_factory.mktemp("data"),
            templates_dir,
            database_url,
            worker_database_url=url_with_password,
        ) as stack:
            yield stack
    finally:
        dispose_engine(url_with_password)


@dataclass
class Haystack:
    """Everything read back, as bytes, by where it came from."""

    places: dict[str, bytes] = field(default_factory=dict)

    def add(self, place: str, content: bytes | str) -> None:
        data = content.encode("utf-8", errors="backslashreplace") if isinstance(content, str) else content
        self.places[place] = self.places.get(place, b"") + data + b"\n"

    def places_holding(self, needle: str | bytes) -> list[str]:
        wanted = needle.encode() if isinstance(needle, str) else needle
        return [place for place, data in self.places.items() if wanted in data]


def secret_forms(stack: Stack) -> dict[str, bytes]:
    token = stack.settings.git_token.reveal()
    basic = base64.b64encode(f"{stack.settings.git_username}:{token}".encode())
    return {
        "git token": token.encode(),
        "git Basic credentials": basic,
        "database password": DATABASE_PASSWORD.encode(),
    }


async def read_back_run(client: Client, workflow_id: str, run_id: str | None, run: str, haystack: Haystack) -> None:
    """The run's full history (raw events: payloads, failures, search attributes, user metadata), its description,
    its visibility record, its queries and its result or failure."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    history = await handle.fetch_history()
    haystack.add(f"{run}: history events", b"".join(event.SerializeToString() for event in history.events))
    haystack.add(f"{run}: history JSON", history.to_json())
    description = await handle.describe()
    haystack.add(f"{run}: describe", description.raw_description.SerializeToString())
    haystack.add(f"{run}: describe", f"{await description.static_summary()} {await description.static_details()}")
    haystack.add(f"{run}: describe", repr(description.typed_search_attributes))
    async for execution in client.list_workflows(f"WorkflowId = '{workflow_id}' AND RunId = '{description.run_id}'"):
        haystack.add(f"{run}: visibility (search attributes, memo)", execution.raw_info.SerializeToString())
    metadata = await handle.query(METADATA_QUERY, result_type=WorkflowMetadata)
    haystack.add(f"{run}: current details", json_format.MessageToJson(metadata))
    haystack.add(f"{run}: progress query", repr(await handle.query("progress")))
    try:
        haystack.add(f"{run}: result", repr(await handle.result()))
    except WorkflowFailureError as failure:
        chain: list[str] = []
        error: BaseException | None = failure
        while error is not None:
            chain.append(f"{type(error).__name__}: {error} {getattr(error, 'details', '')!r}")
            error = error.__cause__
        haystack.add(f"{run}: result", "\n".join(chain))


def read_back_logs(records: list[logging.LogRecord], haystack: Haystack) -> None:
    formatter = logging.Formatter()
    for record in records:
        text = f"{record.name} {record.getMessage()} {record.__dict__!r}"
        if record.exc_info:
            text += formatter.formatException(record.exc_info)
        haystack.add("logs", text)


def record_status(stack: Stack, slug: str) -> str | None:
    record = get_project(stack.settings.effective_database_url, slug)
    return None if record is None else str(record.status)


async def test_no_secret_reaches_temporal_or_the_logs(
    secret_stack: Stack, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    stack = secret_stack
    caplog.set_level(logging.DEBUG)  # every logger: the worker's, the activities', temporalio's, git's, the clients'
    assert DATABASE_PASSWORD in stack.settings.effective_database_url and stack.settings.git_token
    temporal, marker = stack.temporal, f"marker{uuid.uuid4().hex}"  # the marker travels only inside payloads

    ready_slug = unique_slug("leak-ok")
    stack.git_server.fail_pushes(1)  # the first push fails: git's error message goes through the history
    ready_handle = await stack.provisioner.start(spec_for(ready_slug, display_name=f"Shop {marker}"))
    ready = await ready_handle.result()
    assert ready.status is ProjectStatus.READY, ready.message
    assert stack.git_server.failed_pushes == 1
    teardown_handle = await stack.provisioner.teardown(ready_slug, delete_repository=True)
    torn_down = await teardown_handle.result()
    assert torn_down.status is ProjectStatus.DELETED, torn_down.message

    invalid_slug = unique_slug("leak-bad")
    invalid = await stack.provisioner.start(spec_for(invalid_slug, template=BROKEN_TEMPLATE, on_failure=AT_ONCE))
    with pytest.raises(WorkflowFailureError):
        await invalid.result()

    stalled_slug = unique_slug("leak-stall")
    stack.cluster.flux.stall(stalled_slug, stalled_slug, reason="InvalidCELExpression", message="bad expression")
    try:
        stalled = await stack.provisioner.start(spec_for(stalled_slug, on_failure=AT_ONCE))
        with pytest.raises(WorkflowFailureError):
            await stalled.result()
    finally:
        stack.cluster.flux.unstall(stalled_slug, stalled_slug)
    assert record_status(stack, stalled_slug) == ProjectStatus.ROLLED_BACK.value  # the rollback used the database

    haystack = Haystack()
    # The create and the teardown of one project are two runs of its one workflow id.
    runs = {
        "ready": (project_workflow_id(ready_slug), ready_handle.result_run_id),
        "teardown": (project_workflow_id(ready_slug), teardown_handle.result_run_id),
        "invalid": (project_workflow_id(invalid_slug), None),
        "stalled": (project_workflow_id(stalled_slug), None),
    }
    for run, (workflow_id, run_id) in runs.items():
        await read_back_run(temporal, workflow_id, run_id, run, haystack)
    read_back_logs(caplog.records, haystack)
    captured = capfd.readouterr()  # the process's own stdout/stderr: Temporal core's logs, any subprocess's output
    haystack.add("stdout/stderr", captured.out + captured.err)

    # The search sees what it must: payload text, failures and git's error, descriptions, logs.
    assert "ready: history events" in haystack.places_holding(marker)
    assert "ready: history events" in haystack.places_holding("returned error: 503")
    assert "invalid: history events" in haystack.places_holding(ErrorType.KUSTOMIZE_PATH_MISSING.value)
    assert "stalled: history events" in haystack.places_holding("bad expression")
    assert "stalled: result" in haystack.places_holding("InvalidCELExpression")
    for run, (workflow_id, _) in runs.items():
        slug = workflow_id.removeprefix("project-")
        for place in ("describe", "visibility (search attributes, memo)", "progress query"):
            assert f"{run}: {place}" in haystack.places_holding(slug)
        assert f"{run}: current details" in haystack.places_holding("currentDetails")
    assert "logs" in haystack.places_holding(f"created repository {ready_slug}.git")
    assert "logs" in haystack.places_holding("temporalio")

    leaks = {name: haystack.places_holding(form) for name, form in secret_forms(stack).items()}
    assert leaks == {name: [] for name in leaks}
