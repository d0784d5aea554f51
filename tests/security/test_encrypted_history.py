"""Payload encryption on the real stack: a worker and client configured with codec keys provision a project; the
history Temporal stores holds only ciphertext (search attributes aside, which Temporal must index), yet the client
reads the result; the codec endpoint the Temporal UI and CLI use decodes payloads taken from that history, answers
the UI's CORS preflight and refuses callers without the API's token; the real `temporal` CLI shows the decoded
history through it."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import History
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from provisioner.api import create_app
from provisioner.api.app import create_codec_app
from provisioner.api.codec import CODEC_PATH
from provisioner.binaries import bundled_binary
from provisioner.codec import (
    ENCRYPTED_ENCODING,
    KEY_ID_METADATA,
    CodecConfigurationError,
    EncryptionCodec,
    generate_key,
    parse_codec_keys,
)
from provisioner.contracts import ProjectStatus, ProvisioningResult, project_workflow_id
from provisioner.settings import Secret, Settings
from provisioner.temporal import data_converter_for
from tests.api.helpers import running_server
from tests.stack import Stack, running_stack, spec_for, unique_slug

CODEC_KEYS = Secret(f"current:{generate_key()},previous:{generate_key()}")
TOKEN = f"codec-test-{uuid.uuid4().hex}"
UI_ORIGIN = "http://localhost:8233"
BASE_URL = "http://provisioner.test"
SEARCH_ATTRIBUTE_FIELDS = frozenset({"search_attributes"})  # indexed by Temporal: never encoded by a codec


@pytest.fixture(scope="module")
async def encrypted_stack(
    local_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory, templates_dir: Path, database_url: str
) -> AsyncIterator[Stack]:
    """The end-to-end stack whose client and worker encrypt with CODEC_KEYS (as `connect` does with these Settings)."""
    config = local_env.client.config()
    config["data_converter"] = data_converter_for(Settings(codec_keys=CODEC_KEYS))
    data_dir = tmp_path_factory.mktemp("data")
    async with running_stack(Client(**config), data_dir, templates_dir, database_url) as stack:
        yield replace(stack, settings=replace(stack.settings, codec_keys=CODEC_KEYS))


@dataclass
class EncryptedRun:
    slug: str
    marker: str  # travels only in payloads
    result: ProvisioningResult
    history: History


@pytest.fixture(scope="module")
async def encrypted_run(encrypted_stack: Stack) -> EncryptedRun:
    slug, marker = unique_slug("sealed"), f"marker{uuid.uuid4().hex}"
    encrypted_stack.git_server.fail_pushes(1)  # a failed attempt: its failure is in the history too
    handle = await encrypted_stack.provisioner.start(spec_for(slug, display_name=f"Shop {marker}"))
    result = await handle.result()
    history = await encrypted_stack.temporal.get_workflow_handle(handle.id).fetch_history()
    return EncryptedRun(slug, marker, result, History(events=history.events))


@pytest.fixture(scope="module")
async def codec_api(encrypted_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The real API app (codec endpoint mounted since the Settings have keys), in process, without credentials."""
    app = create_app(encrypted_stack.settings, client=encrypted_stack.temporal, tokens=frozenset({TOKEN}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE_URL) as client:
        yield client


def walk(message: Message, path: str = "") -> Iterator[tuple[str, Message]]:
    """Every Payload and Failure inside `message`, with its field path (maps and repeated fields included)."""
    for descriptor, value in message.ListFields():
        field_type = descriptor.message_type
        if field_type is None:  # a scalar
            continue
        where = f"{path}.{descriptor.name}"
        if field_type.GetOptions().map_entry:
            value_is_message = field_type.fields_by_name["value"].message_type is not None
            children = list(value.values()) if value_is_message else []
        elif descriptor.is_repeated:
            children = list(value)
        else:
            children = [value]
        for child in children:
            if isinstance(child, Payload | Failure):
                yield where, child
            if not isinstance(child, Payload):
                yield from walk(child, where)


def history_payloads(history: History) -> list[tuple[str, Payload]]:
    return [
        (where, found)
        for where, found in walk(history)
        if isinstance(found, Payload) and not SEARCH_ATTRIBUTE_FIELDS & set(where.split("."))
    ]


def history_failures(history: History) -> list[Failure]:
    return [found for _, found in walk(history) if isinstance(found, Failure)]


def started_input(history: History) -> Payload:
    return history.events[0].workflow_execution_started_event_attributes.input.payloads[0]


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Namespace": "default", "Origin": UI_ORIGIN}


async def test_history_holds_only_ciphertext_yet_the_client_reads_the_result(
    encrypted_stack: Stack, encrypted_run: EncryptedRun, local_env: WorkflowEnvironment
) -> None:
    assert encrypted_run.result.status is ProjectStatus.READY, encrypted_run.result.message
    assert encrypted_run.result.repo_url.endswith(f"/{encrypted_run.slug}.git")  # decoded by the client
    payloads = history_payloads(encrypted_run.history)
    places = {where for where, _ in payloads}
    # The walk sees the payloads that matter: the input, activity inputs and results, summaries, the result.
    expected_places = {
        ".events.workflow_execution_started_event_attributes.input.payloads",
        ".events.activity_task_scheduled_event_attributes.input.payloads",
        ".events.activity_task_completed_event_attributes.result.payloads",
        ".events.workflow_execution_completed_event_attributes.result.payloads",
        ".events.user_metadata.summary",
    }
    assert expected_places <= places, places
    not_encrypted = sorted({where for where, payload in payloads if payload.metadata["encoding"] != ENCRYPTED_ENCODING})
    assert not_encrypted == []
    assert {payload.metadata[KEY_ID_METADATA] for _, payload in payloads} == {b"current"}
    for _, payload in payloads:
        assert encrypted_run.slug.encode() not in payload.data and encrypted_run.marker.encode() not in payload.data
    failures = history_failures(encrypted_run.history)
    assert failures, "the injected push failure left no failure in the history"
    for failure in failures:  # message and stack trace are sealed in encoded_attributes
        assert encrypted_run.slug not in failure.message + failure.stack_trace
        assert failure.encoded_attributes.metadata["encoding"] == ENCRYPTED_ENCODING
    # The same bytes without the keys: unreadable.
    plain_handle = local_env.client.get_workflow_handle(project_workflow_id(encrypted_run.slug))
    with pytest.raises(Exception, match="encoding"):
        await plain_handle.result()
    decoded = await encrypted_stack.temporal.data_converter.decode([started_input(encrypted_run.history)])
    assert encrypted_run.marker in json.dumps(decoded[0])


async def test_the_codec_endpoint_decodes_a_payload_from_the_history(
    codec_api: httpx.AsyncClient, encrypted_run: EncryptedRun
) -> None:
    encrypted = json_format.MessageToDict(started_input(encrypted_run.history))
    response = await codec_api.post(f"{CODEC_PATH}/decode", json={"payloads": [encrypted]}, headers=auth())
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == UI_ORIGIN
    [decoded] = response.json()["payloads"]
    assert base64.b64decode(decoded["metadata"]["encoding"]) == b"json/plain"
    spec = json.loads(base64.b64decode(decoded["data"]))
    assert (spec["slug"], spec["display_name"]) == (encrypted_run.slug, f"Shop {encrypted_run.marker}")

    encoded = await codec_api.post(f"{CODEC_PATH}/encode", json={"payloads": [decoded]}, headers=auth())
    assert encoded.status_code == 200, encoded.text
    [sealed] = encoded.json()["payloads"]
    assert base64.b64decode(sealed["metadata"]["encoding"]) == ENCRYPTED_ENCODING
    assert base64.b64decode(sealed["metadata"][KEY_ID_METADATA]) == b"current"
    assert encrypted_run.marker.encode() not in base64.b64decode(sealed["data"])
    again = await codec_api.post(f"{CODEC_PATH}/decode", json={"payloads": [sealed]}, headers=auth())
    assert again.json()["payloads"] == [decoded]


async def test_the_ui_preflight_is_answered_for_the_ui_origin_only(codec_api: httpx.AsyncClient) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    allowed = await codec_api.options(f"{CODEC_PATH}/decode", headers={**preflight, "Origin": UI_ORIGIN})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    allowed_headers = {name.strip().lower() for name in allowed.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-namespace"} <= allowed_headers
    assert allowed.headers["access-control-allow-credentials"] == "true"

    foreign = await codec_api.options(f"{CODEC_PATH}/decode", headers={**preflight, "Origin": "https://evil.example"})
    assert foreign.status_code == 400
    assert "access-control-allow-origin" not in foreign.headers


@pytest.mark.parametrize("headers", [{"Origin": UI_ORIGIN}, auth("wrong-token")], ids=["no token", "wrong token"])
async def test_the_codec_endpoint_refuses_callers_without_the_api_token(
    codec_api: httpx.AsyncClient, encrypted_run: EncryptedRun, headers: dict[str, str]
) -> None:
    encrypted = json_format.MessageToDict(started_input(encrypted_run.history))
    for route in ("decode", "encode"):
        response = await codec_api.post(f"{CODEC_PATH}/{route}", json={"payloads": [encrypted]}, headers=headers)
        assert response.status_code == 401
        assert response.headers["access-control-allow-origin"] == UI_ORIGIN  # so the UI can show why
        assert encrypted_run.slug not in response.text


async def test_the_codec_endpoint_names_an_unknown_key_and_refuses_garbage(codec_api: httpx.AsyncClient) -> None:
    [foreign] = await EncryptionCodec(parse_codec_keys(Secret(f"elsewhere:{generate_key()}"))).encode(
        [Payload(metadata={"encoding": b"json/plain"}, data=b'"hello"')]
    )
    response = await codec_api.post(
        f"{CODEC_PATH}/decode", json={"payloads": [json_format.MessageToDict(foreign)]}, headers=auth()
    )
    assert response.status_code == 400
    assert "key id 'elsewhere', which is not configured (configured: current, previous)" in response.json()["detail"]
    garbage = await codec_api.post(f"{CODEC_PATH}/decode", content=b"not json", headers=auth())
    assert garbage.status_code == 400


async def test_without_keys_there_is_no_codec_endpoint(encrypted_stack: Stack) -> None:
    plain = replace(encrypted_stack.settings, codec_keys=Secret(""))
    app = create_app(plain, client=encrypted_stack.temporal, tokens=frozenset({TOKEN}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE_URL) as client:
        response = await client.post(f"{CODEC_PATH}/decode", json={"payloads": []}, headers=auth())
    assert response.status_code == 404
    with pytest.raises(CodecConfigurationError, match="PROVISIONER_CODEC_KEYS is empty"):
        create_codec_app(plain, tokens=frozenset({TOKEN}))


def temporal_cli_show(address: str, workflow_id: str, *codec_options: str) -> bytes:
    """The payload data of `temporal workflow show --output json` (proto JSON: payload data is base64), joined."""
    command = [bundled_binary("temporal"), "workflow", "show", "--address", address, "--namespace", "default"]
    command += ["--workflow-id", workflow_id, "--output", "json", *codec_options]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return b"\n".join(payload_data(json.loads(shown.stdout)))


def payload_data(document: Any) -> Iterator[bytes]:
    if isinstance(document, dict):
        if set(document) == {"metadata", "data"}:
            yield base64.b64decode(document["data"])
        for value in document.values():
            yield from payload_data(value)
    elif isinstance(document, list):
        for item in document:
            yield from payload_data(item)


async def test_the_temporal_cli_shows_the_history_decoded_through_the_codec_server(
    encrypted_stack: Stack, encrypted_run: EncryptedRun, local_env: WorkflowEnvironment
) -> None:
    address = local_env.client.service_client.config.target_host
    workflow_id = project_workflow_id(encrypted_run.slug)
    without_codec = await asyncio.to_thread(temporal_cli_show, address, workflow_id)
    assert without_codec and encrypted_run.marker.encode() not in without_codec
    # `provisioner codec-server`'s app, served for real: the CLI speaks the same protocol as the UI.
    async with running_server(create_codec_app(encrypted_stack.settings, tokens=frozenset({TOKEN}))) as server:
        codec_options = ("--codec-endpoint", f"{server.base_url}{CODEC_PATH}", "--codec-auth", f"Bearer {TOKEN}")
        with_codec = await asyncio.to_thread(temporal_cli_show, address, workflow_id, *codec_options)
    assert encrypted_run.marker.encode() in with_codec
