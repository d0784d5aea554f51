"""PostgreSQL unreachable for 20 s: the worker's pooled connections are dropped and new ones vanish into a black
hole. The runs wait on persist_record, retrying visibly, and every one finishes once the database is back."""

from __future__ import annotations

import asyncio
import time

from provisioner.contracts import ProjectStatus, StepName
from provisioner.db import engine_for
from tests.chaos.fault_stack import ChaosStack
from tests.chaos.faultproxy import ProxyMode
from tests.chaos.verify import outcomes_of, start_runs, take_inventory, verify_exactly_once
from tests.stack import Stack, unique_slug

PROJECTS = 8
OUTAGE_SECONDS = 20.0
# Long enough for every run to reach persist_record and fail it once, even on a loaded machine.
RETRY_SEEN_WITHIN_SECONDS = 60.0


async def test_runs_wait_out_a_database_outage_and_finish(chaos: ChaosStack) -> None:
    stack, proxy = chaos.stack, chaos.database_proxy
    before = take_inventory(stack, chaos.database_url)
    # The worker's engine holds live pooled connections, which the cut must kill under it.
    worker_engine = engine_for(stack.settings.effective_database_url)
    connections = [worker_engine.connect() for _ in range(3)]
    for connection in connections:
        connection.close()
    assert proxy.relayed_count >= 1

    slugs = [unique_slug("dbcut") for _ in range(PROJECTS)]
    proxy.cut(ProxyMode.BLACKHOLE)
    cut_at = time.monotonic()
    try:
        handles = await start_runs(stack, slugs)
        retried = await _persist_record_retries(stack, slugs, RETRY_SEEN_WITHIN_SECONDS)
        # Nothing was written meanwhile: the database was out of reach.
        assert take_inventory(stack, chaos.database_url).minus(before).records == {}
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))
    finally:
        proxy.restore()
    outage = time.monotonic() - cut_at
    assert proxy.dropped >= 1 and proxy.blackholed >= PROJECTS

    outcomes = await outcomes_of(handles, within_seconds=90)
    figures = verify_exactly_once(stack, chaos.database_url, before, outcomes, ProjectStatus.READY)
    for slug, outcome in outcomes.items():
        assert outcome.result is not None
        persist = next(s for s in outcome.result.progress.steps if s.name is StepName.PERSIST_RECORD)
        assert persist.attempt >= 2, f"{slug} persisted at attempt {persist.attempt} despite the outage"
    sample = next(iter(retried.values()))
    print(f"\nCHAOS database outage {outage:.0f}s: {figures}; a retry as progress showed it: {sample}")


async def _persist_record_retries(stack: Stack, slugs: list[str], within: float) -> dict[str, str]:
    """Wait until every run's progress shows a failed persist_record attempt; returns one such message per run."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + within
    while len(seen) < len(slugs):
        assert time.monotonic() < deadline, f"no persist_record retry seen for {sorted(set(slugs) - set(seen))}"
        for slug in set(slugs) - set(seen):
            progress = await stack.provisioner.progress(slug)
            step = next(s for s in progress.steps if s.name is StepName.PERSIST_RECORD)
            if step.message.startswith("attempt ") and " failed: " in step.message:
                seen[slug] = step.message
        await asyncio.sleep(0.5)
    return seen
