"""How quickly the HTTP API answers and how late its progress stream is.

    .venv/bin/python -m bench.api_latency [--runs 5] [--gets 50]

Starts the embedded stack (Temporal dev server, git over HTTP, the sandbox cluster with its Flux simulator, an
in-process worker) on ephemeral ports, a throw-away database on the machine's PostgreSQL, and the API under a real
uvicorn server, then prints:

- the latency of `GET /projects/{slug}` over HTTP (median and p95), for a run still in progress and for a finished
  one (a finished run's `progress` query is answered by replaying its history on the worker);
- the delay from a change of the progress (the workflow's own `Progress.updated_at`, and each step's `finished_at`)
  to the arrival of the Server-Sent Event reporting it, median per run. The first event of a stream reports the
  state found on connecting, not a change, so it is left out.

All clocks are this machine's, so the workflow's timestamps and the arrival times compare directly.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from kubesim.cluster import FluxSimulatorConfig
from provisioner.api import create_app
from provisioner.client import ProvisionerClient
from provisioner.contracts import StepName
from provisioner.settings import Secret, Settings
from provisioner.stack import EmbeddedStack, StackPorts
from tests.api.helpers import ReceivedEvent, read_events, running_server
from tests.postgres import DEFAULT_TEST_DATABASE_URL, temporary_postgres_database

WARM_UP_GETS = 5


@dataclass
class StreamLags:
    """Milliseconds from a change to the event that reported it, for one run."""

    slug: str
    updates: list[float] = field(default_factory=list)  # Progress.updated_at -> event
    steps: dict[str, float] = field(default_factory=dict)  # a step's finished_at -> first event showing it


def milliseconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000


def summary(values: Sequence[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms   (n={len(ordered)})"


def body(slug: str) -> dict[str, object]:
    return {"slug": slug, "display_name": slug, "template": "web-service", "parameters": {"owner": "bench"}}


async def stream_lags(http: httpx.AsyncClient, slug: str) -> StreamLags:
    """Start provisioning SLUG and follow its event stream to the end."""
    response = await http.post("/projects", json=body(slug))
    response.raise_for_status()
    lags = StreamLags(slug)
    received: list[ReceivedEvent] = []
    async with http.stream("GET", f"/projects/{slug}/events") as stream:
        received = [event async for event in read_events(stream) if event.event == "progress"]
    for event in received[1:]:
        progress = event.json()
        lags.updates.append(milliseconds(event.received_at, datetime.fromisoformat(progress["updated_at"])))
        for step in progress["steps"]:
            if step["finished_at"] and step["name"] not in lags.steps:
                lags.steps[step["name"]] = milliseconds(event.received_at, datetime.fromisoformat(step["finished_at"]))
    # Steps already finished on connecting were reported by the first event, which measures no change.
    first = received[0].json() if received else {"steps": []}
    for step in first["steps"]:
        if step["finished_at"]:
            lags.steps.pop(step["name"], None)
    return lags


async def get_latencies(http: httpx.AsyncClient, slug: str, calls: int) -> list[float]:
    for _ in range(WARM_UP_GETS):
        (await http.get(f"/projects/{slug}")).raise_for_status()
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        (await http.get(f"/projects/{slug}")).raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def measure(runs: int, gets: int, admin_database_url: str, data_dir: Path) -> None:
    token = uuid.uuid4().hex
    with temporary_postgres_database(admin_database_url) as database_url:
        settings = Settings(
            data_dir=data_dir,
            database_url=Secret(database_url),
            task_queue=f"bench-api-{uuid.uuid4().hex[:8]}",
            git_token=Secret(uuid.uuid4().hex),
            activity_threads=4,
        )
        flux = FluxSimulatorConfig(source_retry_interval=0.2)
        async with EmbeddedStack(settings, ports=StackPorts.ephemeral(), flux=flux) as stack:
            assert stack.client is not None
            app = create_app(stack.settings, client=stack.client, tokens=frozenset({token}))
            async with (
                running_server(app) as server,
                httpx.AsyncClient(
                    base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
                ) as http,
            ):
                await report_stream_lags(http, runs)
                await report_get_latency(http, stack, gets)


async def report_stream_lags(http: httpx.AsyncClient, runs: int) -> None:
    await stream_lags(http, f"bench-warm-{uuid.uuid4().hex[:6]}")  # first run: worker and caches warm up
    all_updates: list[float] = []
    all_steps: list[float] = []
    print("Progress change -> SSE event (the API polls the progress query every 200 ms):")
    for number in range(runs):
        lags = await stream_lags(http, f"bench-sse-{number}-{uuid.uuid4().hex[:6]}")
        all_updates += lags.updates
        all_steps += lags.steps.values()
        print(f"  run {number + 1}: updated_at -> event {summary(lags.updates)}")
    print(f"  all runs, updated_at  -> event: {summary(all_updates)}")
    print(f"  all runs, finished_at -> event: {summary(all_steps)}")


async def wait_until_running(provisioner: ProvisionerClient, slug: str, step: StepName) -> None:
    while True:
        current = (await provisioner.progress(slug)).current_step
        if current is not None and current.name is step:
            return
        await asyncio.sleep(0.1)


async def report_get_latency(http: httpx.AsyncClient, stack: EmbeddedStack, gets: int) -> None:
    assert stack.client is not None and stack.cluster is not None
    provisioner = ProvisionerClient(stack.client, stack.settings.task_queue)
    print(f"GET /projects/{{slug}} over HTTP ({gets} calls after {WARM_UP_GETS} warm-up calls):")
    running = f"bench-held-{uuid.uuid4().hex[:6]}"
    stack.cluster.flux.hold(namespace=running)
    try:
        (await http.post("/projects", json=body(running))).raise_for_status()
        await wait_until_running(provisioner, running, StepName.AWAIT_READY)
        print(f"  run in progress: {summary(await get_latencies(http, running, gets))}")
    finally:
        stack.cluster.flux.release(namespace=running)
    await provisioner.wait(running)
    print(f"  finished run:    {summary(await get_latencies(http, running, gets))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="provisioning runs whose event streams are measured")
    parser.add_argument("--gets", type=int, default=50, help="GET /projects/{slug} calls per measurement")
    parser.add_argument("--admin-database-url", default=DEFAULT_TEST_DATABASE_URL)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as data_dir:
        asyncio.run(measure(arguments.runs, arguments.gets, arguments.admin_database_url, Path(data_dir)))


if __name__ == "__main__":
    main()
