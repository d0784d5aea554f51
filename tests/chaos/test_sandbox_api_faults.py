"""The Kubernetes API failing 20% of requests: 500s, 429s with Retry-After, or requests held and then timed out.
Every run still ends Ready with exactly one of everything. And a request the server never answers costs an activity
thread the client's request timeout at most, not as long as the server cares to hold it."""

from __future__ import annotations

import asyncio
import time

import pytest

from activities.flux import REQUEST_TIMEOUT, FluxActivities
from provisioner.contracts import ProjectStatus, ReadinessRequest
from tests.chaos.fault_stack import ChaosStack
from tests.chaos.verify import outcomes_of, start_runs, take_inventory, verify_exactly_once
from tests.stack import unique_slug

PROJECTS = 6
FAULT_RATE = 0.2
HELD_REQUEST_SECONDS = 3.0  # the "timeout" fault: the server sits on the request this long, then answers 504


@pytest.mark.parametrize("fault", ["error", "throttle", "timeout"])
async def test_runs_finish_through_a_flaky_api_server(chaos: ChaosStack, fault: str) -> None:
    stack, faults = chaos.stack, chaos.stack.cluster.faults
    before = take_inventory(stack, chaos.database_url)
    injected_before = faults.injected[fault]
    slugs = [unique_slug(f"api-{fault}") for _ in range(PROJECTS)]
    faults.configure(
        **{f"{fault}_rate": FAULT_RATE}, retry_after_seconds=1, timeout_seconds=HELD_REQUEST_SECONDS, seed=20
    )
    try:
        outcomes = await outcomes_of(await start_runs(stack, slugs), within_seconds=120)
    finally:
        faults.reset()
    injected = faults.injected[fault] - injected_before
    assert injected >= 1, f"no {fault} fault was injected; the test proved nothing"

    figures = verify_exactly_once(stack, chaos.database_url, before, outcomes, ProjectStatus.READY)
    print(f"\nCHAOS sandbox api {fault} at {FAULT_RATE:.0%}: {figures}; {injected} requests faulted")


async def test_a_request_the_server_never_answers_ends_at_the_request_timeout(chaos: ChaosStack) -> None:
    """The server holds every request for a minute; the readiness check gives up after the read timeout (10 s), well
    inside its 20 s attempt timeout, instead of blocking its thread for the minute (or, with urllib3's default read
    retries, several times the read timeout)."""
    faults = chaos.stack.cluster.faults
    flux = FluxActivities(chaos.stack.settings)
    faults.configure(timeout_rate=1.0, timeout_seconds=60.0)
    started = time.monotonic()
    try:
        with pytest.raises(Exception, match="Read timed out"):
            request = ReadinessRequest("nobody", "nobody", "main@sha1:" + "a" * 40, "token-1")
            await asyncio.to_thread(flux.check_flux_readiness, request)
    finally:
        faults.reset()
    elapsed = time.monotonic() - started
    connect_timeout, read_timeout = REQUEST_TIMEOUT
    assert read_timeout <= elapsed < read_timeout + connect_timeout, f"the check took {elapsed:.1f} s"
