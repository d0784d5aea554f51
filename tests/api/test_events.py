"""The progress stream through a real uvicorn server on an ephemeral port, read as a browser's EventSource would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from provisioner.api import events
from provisioner.contracts import ProjectStatus, StepName
from tests.api.conftest import TOKEN, Stack, api_app, project_body, unique_slug
from tests.api.helpers import ReceivedEvent, RunningServer, read_events, running_server

STREAM_SECONDS = 30.0


def running_step(event: ReceivedEvent) -> str | None:
    return next((step["name"] for step in event.json()["steps"] if step["state"] == "running"), None)


@pytest.fixture
async def server(stack: Stack) -> AsyncIterator[RunningServer]:
    async with running_server(api_app(stack)) as running:
        yield running


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=STREAM_SECONDS) as client:
        yield client


async def test_the_stream_reports_each_change_in_order_and_ends_at_ready(http: httpx.AsyncClient) -> None:
    slug = unique_slug("streamed")
    assert (await http.post("/projects", json=project_body(slug))).status_code == 202

    events: list[ReceivedEvent] = []
    async with http.stream("GET", f"/projects/{slug}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        events = [event async for event in read_events(response)]

    *changes, end = events
    assert [event.event for event in changes] == ["progress"] * len(changes)
    assert len(changes) >= 3, [event.json()["message"] for event in changes]
    assert [event.id for event in events] == [str(number) for number in range(1, len(events) + 1)]
    progress = [event.json() for event in changes]
    assert all(item["slug"] == slug for item in progress)
    assert len({event.data for event in changes}) == len(changes)  # every event is a change
    percents = [item["percent"] for item in progress]
    assert percents == sorted(percents)
    stamps = [item["updated_at"] for item in progress]
    assert stamps == sorted(stamps)
    assert progress[-1]["status"] == "ready" and progress[-1]["percent"] == 100
    assert all(item["status"] == "provisioning" for item in progress[:-1])
    assert end.event == "end"
    assert end.json() == {"slug": slug, "status": "ready", "message": progress[-1]["message"]}


async def test_the_stream_of_a_finished_run_is_its_final_state(http: httpx.AsyncClient, stack: Stack) -> None:
    slug = unique_slug("finished")
    assert (await http.post("/projects", json=project_body(slug, wait_for_ready=False))).status_code == 202
    await stack.provisioner.wait(slug)
    async with http.stream("GET", f"/projects/{slug}/events") as response:
        events = [event async for event in read_events(response)]
    assert [(event.event, event.id) for event in events] == [("progress", "1"), ("end", "2")]
    assert events[0].json()["status"] == events[1].json()["status"] == ProjectStatus.PROVISIONED.value


async def test_the_stream_of_an_unknown_project_is_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/projects/never-made/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"


async def test_the_server_stops_streaming_when_the_client_disconnects(
    http: httpx.AsyncClient, server: RunningServer, stack: Stack
) -> None:
    slug = unique_slug("abandoned")
    stack.cluster.flux.hold(namespace=slug)
    try:
        assert (await http.post("/projects", json=project_body(slug))).status_code == 202
        async with http.stream("GET", f"/projects/{slug}/events") as response:
            first = await anext(read_events(response))
            assert first.event == "progress"
            assert server.open_requests == 1
        deadline = time.monotonic() + 5
        while server.open_requests:
            assert time.monotonic() < deadline, "the stream kept running after the client left"
            await asyncio.sleep(0.05)
    finally:
        stack.cluster.flux.release(namespace=slug)


async def test_the_stream_ends_when_the_run_is_terminated_midway(
    http: httpx.AsyncClient, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "RUN_CHECK_INTERVAL", timedelta(milliseconds=300))
    slug = unique_slug("terminated")
    stack.cluster.flux.hold(namespace=slug)
    try:
        assert (await http.post("/projects", json=project_body(slug))).status_code == 202
        async with http.stream("GET", f"/projects/{slug}/events") as response:
            received: list[ReceivedEvent] = []
            terminated = False
            async for event in read_events(response):
                received.append(event)
                # Progress may change again (the wait's message) before the stream learns of the termination.
                if not terminated and event.event == "progress" and running_step(event) == StepName.AWAIT_READY:
                    await stack.provisioner.handle(slug).terminate("operator stopped it")
                    terminated = True
    finally:
        stack.cluster.flux.release(namespace=slug)
    end = received[-1]
    assert end.event == "end"
    assert end.json() == {
        "slug": slug,
        "status": "provisioning",
        "message": "the run closed (TERMINATED) before reaching a final status",
    }
