"""The API under test, on the end-to-end stack of tests/e2e (its fixtures are composed here): the Temporal dev server
(`local_env`), the real worker, git over HTTP, the sandbox cluster with its Flux simulator, and a throw-away
PostgreSQL database. Each test module gets its own stack."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from provisioner.api import create_app
from tests.stack import Stack, unique_slug

__all__ = ["Stack", "unique_slug"]  # re-exported for the test modules

TOKEN = f"api-test-{uuid.uuid4().hex}"
API_BASE_URL = "http://provisioner.test"


def api_app(stack: Stack, tokens: frozenset[str] = frozenset({TOKEN})) -> FastAPI:
    return create_app(stack.settings, client=stack.temporal, tokens=tokens)


@pytest.fixture(scope="module")
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An authenticated client of the real app, in process."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    transport = httpx.ASGITransport(api_app(stack))
    async with httpx.AsyncClient(transport=transport, base_url=API_BASE_URL, headers=headers) as client:
        yield client


@pytest.fixture
async def anonymous(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(api_app(stack)), base_url=API_BASE_URL) as client:
        yield client


def project_body(slug: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "slug": slug,
        "display_name": f"Project {slug}",
        "template": "web-service",
        "parameters": {"owner": "payments"},
        "ready_timeout_seconds": 60,
    }
    body.update(overrides)
    return body
