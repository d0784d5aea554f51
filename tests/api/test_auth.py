"""Bearer-token authentication, the open health and documentation routes, and the refusal to run unprotected."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from provisioner.api import InsecureConfiguration, create_app
from provisioner.api.auth import INSECURE_ENV, TOKENS_ENV, TOKENS_FILE_ENV, TokenSet, tokens_from_env
from provisioner.settings import Secret
from provisioner.stack import free_port
from tests.api.conftest import API_BASE_URL, TOKEN, Stack, api_app

PROTECTED_ROUTES = [
    ("GET", "/projects"),
    ("POST", "/projects"),
    ("GET", "/projects/some-project"),
    ("GET", "/projects/some-project/events"),
    ("DELETE", "/projects/some-project"),
    ("POST", "/projects/some-project/retry"),
    ("POST", "/projects/some-project/abort"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED_ROUTES)
async def test_every_project_route_refuses_a_missing_token(
    anonymous: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await anonymous.request(method, path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="provisioner"'
    assert response.json() == {"detail": "missing bearer token"}


@pytest.mark.parametrize(
    "authorization", ["Bearer wrong-token", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", "Bearer"]
)
async def test_a_wrong_token_or_scheme_is_refused(anonymous: httpx.AsyncClient, authorization: str) -> None:
    response = await anonymous.get("/projects", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_the_right_token_is_accepted(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/projects", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert "items" in response.json()


async def test_health_and_documentation_need_no_token(anonymous: httpx.AsyncClient) -> None:
    health = await anonymous.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "temporal": True, "database": True}
    docs = await anonymous.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = (await anonymous.get("/openapi.json")).json()
    scheme = schema["components"]["securitySchemes"]["BearerToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert schema["paths"]["/projects"]["post"]["security"] == [{"BearerToken": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


async def test_health_reports_an_unreachable_database(stack: Stack) -> None:
    unreachable = Secret(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing")
    app = create_app(
        replace(stack.settings, database_url=unreachable), client=stack.temporal, tokens=frozenset({TOKEN})
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=API_BASE_URL) as client:
        response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "temporal": True, "database": False}


def test_tokens_come_from_the_variable_and_the_file(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# the CI token\nfrom-file\n\n  spaced  \n")
    env = {TOKENS_ENV: " first, second ,,", TOKENS_FILE_ENV: str(token_file)}
    assert tokens_from_env(env) == {"first", "second", "from-file", "spaced"}
    assert tokens_from_env({}) == frozenset()


def test_a_token_set_accepts_exactly_its_tokens() -> None:
    tokens = TokenSet(["alpha", "beta"])
    assert tokens.accepts("alpha") and tokens.accepts("beta")
    assert not any(tokens.accepts(other) for other in ("", "alph", "alphaa", "ALPHA", "gamma"))


async def test_the_app_reads_its_tokens_from_the_environment(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKENS_ENV, "env-token-1,env-token-2")
    monkeypatch.delenv(TOKENS_FILE_ENV, raising=False)
    app = create_app(stack.settings, client=stack.temporal)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=API_BASE_URL) as client:
        assert (await client.get("/projects", headers={"Authorization": "Bearer env-token-2"})).status_code == 200
        assert (await client.get("/projects", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 401


async def test_without_tokens_the_app_refuses_to_start_unless_explicitly_insecure(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (TOKENS_ENV, TOKENS_FILE_ENV, INSECURE_ENV):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InsecureConfiguration, match=INSECURE_ENV):
        create_app(stack.settings, client=stack.temporal)
    monkeypatch.setenv(INSECURE_ENV, "true")  # only "1" counts
    with pytest.raises(InsecureConfiguration):
        create_app(stack.settings, client=stack.temporal, tokens=frozenset())

    monkeypatch.setenv(INSECURE_ENV, "1")
    app = create_app(stack.settings, client=stack.temporal)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=API_BASE_URL) as client:
        assert (await client.get("/projects")).status_code == 200


async def test_tokens_never_reach_the_logs(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = api_app(stack)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=API_BASE_URL) as client:
        await client.get("/projects", headers={"Authorization": f"Bearer {TOKEN}"})
        await client.get("/projects", headers={"Authorization": "Bearer guessed-token"})
    assert "accepts 1 bearer token" in caplog.text
    assert TOKEN not in caplog.text and "guessed-token" not in caplog.text
