"""Client-side helpers for the API tests and bench/api_latency.py: a real uvicorn server on an ephemeral port and a
Server-Sent Events reader that stamps each event with its arrival time."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from provisioner.api import api_server

SERVER_START_SECONDS = 10.0


@dataclass
class RunningServer:
    server: uvicorn.Server
    base_url: str

    @property
    def open_requests(self) -> int:
        """Requests the server is still handling (each is an asyncio task until its response has ended)."""
        return sum(not task.done() for task in self.server.server_state.tasks)


@asynccontextmanager
async def running_server(app: FastAPI) -> AsyncIterator[RunningServer]:
    server = api_server(app, "127.0.0.1", 0)
    serving = asyncio.create_task(server.serve())
    deadline = time.monotonic() + SERVER_START_SECONDS
    while not server.started:
        if serving.done() or time.monotonic() > deadline:
            serving.result()
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(server, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await serving


@dataclass
class ReceivedEvent:
    event: str
    id: str
    data: str
    received_at: datetime  # wall clock (UTC), comparable with the workflow's timestamps on this machine

    def json(self) -> Any:
        return json.loads(self.data)


async def read_events(response: httpx.Response) -> AsyncIterator[ReceivedEvent]:
    """Parse a text/event-stream body (comments skipped, multi-line data joined)."""
    fields: dict[str, list[str]] = {}
    async for line in response.aiter_lines():
        if not line:
            if "data" in fields or "event" in fields:
                yield ReceivedEvent(
                    event="".join(fields.get("event", ["message"])),
                    id="".join(fields.get("id", [""])),
                    data="\n".join(fields.get("data", [])),
                    received_at=datetime.now(UTC),
                )
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value.removeprefix(" "))
