"""422 answers: field-level errors in FastAPI's standard shape, from the request model, the contract's rules and the
template's own parameter declarations; nothing is started for an invalid request."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from temporalio.service import RPCError, RPCStatusCode

from provisioner.contracts import project_workflow_id
from tests.api.conftest import Stack, project_body, unique_slug


def field_errors(response: httpx.Response) -> dict[str, str]:
    """field -> message, after checking every item has FastAPI's shape plus `field`."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail and all(set(item) == {"loc", "msg", "type", "field"} for item in detail)
    return {item["field"]: item["msg"] for item in detail}


INVALID_REQUESTS: list[tuple[str, dict[str, Any], str, str]] = [
    ("bad slug", {"slug": "Bad_Slug"}, "slug", "lower case letters"),
    ("short slug", {"slug": "ab"}, "slug", "3 to 40 characters"),
    ("unknown template", {"template": "no-such-template"}, "template", "unknown template 'no-such-template'"),
    ("parameter type", {"parameters": {"owner": "payments", "replicas": "three"}}, "parameters.replicas", "integer"),
    ("parameter bound", {"parameters": {"owner": "payments", "port": 80}}, "parameters.port", "at least 1024"),
    ("required parameter", {"parameters": {}}, "parameters.owner", "is required"),
    ("undeclared parameter", {"parameters": {"owner": "x", "colour": "red"}}, "parameters.colour", "not a parameter"),
    ("unknown environment", {"environment": "staging"}, "environment", "no environment 'staging'"),
    ("timeout above the bound", {"ready_timeout_seconds": 1801}, "ready_timeout_seconds", "1800"),
    ("timeout below the bound", {"ready_timeout_seconds": 0}, "ready_timeout_seconds", "1"),
    ("unknown field", {"ready_timeout": 30}, "ready_timeout", "not permitted"),
    ("display name type", {"display_name": 42}, "display_name", "string"),
]


@pytest.mark.parametrize(
    ("overrides", "field", "message_part"),
    [case[1:] for case in INVALID_REQUESTS],
    ids=[case[0] for case in INVALID_REQUESTS],
)
async def test_an_invalid_request_gets_a_field_error_and_starts_nothing(
    api: httpx.AsyncClient, stack: Stack, overrides: dict[str, Any], field: str, message_part: str
) -> None:
    body = {**project_body(unique_slug("invalid")), **overrides}
    response = await api.post("/projects", json=body)
    errors = field_errors(response)
    assert field in errors, errors
    assert message_part in errors[field]
    item = next(item for item in response.json()["detail"] if item["field"] == field)
    assert item["loc"] == ["body", *field.split(".")]
    with pytest.raises(RPCError) as raised:
        await stack.temporal.get_workflow_handle(project_workflow_id(str(body["slug"]))).describe()
    assert raised.value.status == RPCStatusCode.NOT_FOUND


async def test_every_invalid_field_is_reported_at_once(api: httpx.AsyncClient) -> None:
    body = project_body("Not A Slug", display_name=" ", parameters={"owner": "UPPER", "public": "yes"})
    errors = field_errors(await api.post("/projects", json=body))
    assert set(errors) == {"slug", "display_name", "parameters.owner", "parameters.public"}


async def test_a_missing_body_field_is_located(api: httpx.AsyncClient) -> None:
    errors = field_errors(await api.post("/projects", json={"slug": "lonely-project"}))
    assert set(errors) == {"display_name", "template"}


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=bogus", "status"), ("limit=0", "limit"), ("limit=501", "limit"), ("offset=-1", "offset")],
)
async def test_an_invalid_list_query_gets_a_field_error(api: httpx.AsyncClient, query: str, field: str) -> None:
    response = await api.get(f"/projects?{query}")
    assert field in field_errors(response)
    assert response.json()["detail"][0]["loc"] == ["query", field]
