"""The progress stream behind `GET /projects/{slug}/events`: one Server-Sent Event per change of the progress.

The `progress` query is polled through `ProvisionerClient.watch`, which ends at a terminal status. A run that
closes without reaching one (terminated, cancelled, timed out) would leave the watch polling an unchanging
progress forever, so while no change arrives the run itself is looked at every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import timedelta
from typing import Any

from fastapi.sse import ServerSentEvent
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle

from provisioner.api.schemas import PROGRESS_JSON, StreamEnd
from provisioner.client import ProvisionerClient
from provisioner.contracts import TERMINAL_STATUSES, Progress

POLL_INTERVAL = timedelta(milliseconds=200)
RUN_CHECK_INTERVAL = timedelta(seconds=5)
# Asks EventSource clients to wait this long before reconnecting after a dropped connection.
RECONNECT_DELAY_MS = 2000


async def progress_events(
    provisioner: ProvisionerClient,
    slug: str,
    *,
    poll_interval: timedelta | None = None,
    run_check_interval: timedelta | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """`progress` events (ids 1, 2, ...) while the progress changes, then one `end` event."""
    poll_interval = poll_interval or POLL_INTERVAL
    run_check_interval = run_check_interval or RUN_CHECK_INTERVAL
    sequence = 0
    last: Progress | None = None
    handle = provisioner.handle(slug)
    async for progress in _changes_until_closed(provisioner, handle, slug, poll_interval, run_check_interval):
        sequence += 1
        last = progress
        yield ServerSentEvent(
            raw_data=PROGRESS_JSON.dump_json(progress).decode(),
            event="progress",
            id=str(sequence),
            retry=RECONNECT_DELAY_MS if sequence == 1 else None,
        )
    if last is not None and last.status in TERMINAL_STATUSES:
        end = StreamEnd(slug=slug, status=last.status, message=last.message)
    else:
        run_status = (await handle.describe()).status
        closed_as = run_status.name if run_status is not None else "UNKNOWN"
        end = StreamEnd(
            slug=slug,
            status=last.status if last is not None else None,
            message=f"the run closed ({closed_as}) before reaching a final status",
        )
    yield ServerSentEvent(raw_data=end.model_dump_json(), event="end", id=str(sequence + 1))


async def _changes_until_closed(
    provisioner: ProvisionerClient,
    handle: WorkflowHandle[Any, Any],
    slug: str,
    poll_interval: timedelta,
    run_check_interval: timedelta,
) -> AsyncIterator[Progress]:
    changes = provisioner.watch(slug, poll_interval)
    next_change: asyncio.Future[Progress] = asyncio.ensure_future(anext(changes))
    try:
        while True:
            # asyncio.wait leaves the pending poll running: cancelling it would finalise the watch generator.
            done, _ = await asyncio.wait({next_change}, timeout=run_check_interval.total_seconds())
            if not done:
                description = await handle.describe()
                if description.status != WorkflowExecutionStatus.RUNNING:
                    return
                continue
            try:
                progress = next_change.result()
            except StopAsyncIteration:
                return
            yield progress
            next_change = asyncio.ensure_future(anext(changes))
    finally:
        if not next_change.done():
            next_change.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await next_change
        if isinstance(changes, AsyncGenerator):
            await changes.aclose()
