"""The app as deployed: connecting to Temporal on startup under uvicorn, and the OpenAPI document clients are
generated from."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import pytest

from provisioner.api import create_app
from tests.api.conftest import TOKEN, Stack
from tests.api.helpers import running_server


async def test_the_lifespan_connects_to_temporal_when_no_client_is_given(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_CONFIG_FILE", "TEMPORAL_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    address = stack.temporal.service_client.config.target_host
    settings = replace(stack.settings, temporal_address=address)
    app = create_app(settings, tokens=frozenset({TOKEN}))
    async with running_server(app) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        health = await client.get("/healthz")
        listed = await client.get("/projects", headers={"Authorization": f"Bearer {TOKEN}"})
    assert health.json() == {"status": "ok", "temporal": True, "database": True}
    assert listed.status_code == 200


@pytest.fixture(scope="module")
async def document(api: httpx.AsyncClient) -> dict[str, Any]:
    schema: dict[str, Any] = (await api.get("/openapi.json")).json()
    return schema


def test_operations_have_names_fit_for_generated_clients(document: dict[str, Any]) -> None:
    operation_ids = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert operation_ids == {
        "healthz",
        "create_project",
        "list_projects",
        "get_project",
        "stream_progress",
        "delete_project",
        "update_project",
        "retry_project",
        "abort_project",
    }


def test_responses_are_typed(document: dict[str, Any]) -> None:
    paths, schemas = document["paths"], document["components"]["schemas"]
    create = paths["/projects"]["post"]["responses"]
    assert create["202"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OperationAccepted"}
    assert create["409"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert create["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ValidationErrorResponse"
    }
    assert set(schemas["FieldErrorDetail"]["required"]) == {"loc", "msg", "type", "field"}
    assert schemas["ProjectStatus"]["type"] == "string" and "ready" in schemas["ProjectStatus"]["enum"]
    assert schemas["Progress"]["properties"]["updated_at"]["anyOf"][0] == {"type": "string", "format": "date-time"}
    assert schemas["ProjectRequest"]["properties"]["ready_timeout_seconds"]["maximum"] == 1800


def test_the_event_stream_documents_its_payloads_and_json_errors(document: dict[str, Any]) -> None:
    responses = document["paths"]["/projects/{slug}/events"]["get"]["responses"]
    data = responses["200"]["content"]["text/event-stream"]["itemSchema"]["properties"]["data"]
    assert data["contentSchema"] == {
        "oneOf": [{"$ref": "#/components/schemas/Progress"}, {"$ref": "#/components/schemas/StreamEnd"}]
    }
    assert "StreamEnd" in document["components"]["schemas"]
    assert set(responses["404"]["content"]) == {"application/json"}
    assert set(responses["401"]["content"]) == {"application/json"}
