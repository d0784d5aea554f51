"""Automatic activity heartbeats, so that the server notices a dead worker within the heartbeat timeout.

Without heartbeats, an attempt whose worker was killed (kill -9, OOM, a lost node) is only declared lost when its
start_to_close timeout fires: up to minutes for a push. The workflows therefore give every step a short
`heartbeat_timeout` (workflows/steps.py), and this interceptor heartbeats for every running activity while its
function runs, whatever the function does: activities stay free of heartbeat calls.

Sync activities run on the worker's thread pool. A helper thread heartbeats through a copy of the activity thread's
`contextvars` context (where temporalio keeps the activity context): temporalio's heartbeat for a thread-pool
activity hands the call to the worker's event loop (`run_coroutine_threadsafe`), so any thread may make it. Async
activities get an asyncio task instead. Activities without a heartbeat timeout are left alone.

A heartbeating activity can also receive a cancellation (the run cancelled, the worker shutting down past its grace
period): temporalio raises `CancelledError` in the activity's thread; activities are idempotent, so that is safe.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

log = logging.getLogger(__name__)

# Heartbeats per heartbeat timeout: several, so that a late one (a busy event loop, a GIL-bound thread) is harmless.
# The SDK throttles what it sends to the server to at most one per 0.8 x the timeout anyway.
BEATS_PER_TIMEOUT = 4
MINIMUM_INTERVAL = timedelta(milliseconds=100)


def heartbeat_interval(heartbeat_timeout: timedelta) -> timedelta:
    return max(heartbeat_timeout / BEATS_PER_TIMEOUT, MINIMUM_INTERVAL)


class AutoHeartbeatInterceptor(Interceptor):
    """Heartbeats every running activity that has a heartbeat timeout, every `heartbeat_interval` of it."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _AutoHeartbeatInbound(next)


class _AutoHeartbeatInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        timeout = activity.info().heartbeat_timeout
        if not timeout:
            return await self.next.execute_activity(input)
        interval = heartbeat_interval(timeout).total_seconds()
        fn = input.fn
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
        wrapped = _async_with_heartbeats(fn, interval) if is_async else _sync_with_heartbeats(fn, interval)
        return await self.next.execute_activity(dataclasses.replace(input, fn=wrapped))


def _sync_with_heartbeats(fn: Callable[..., Any], interval: float) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        # Runs in the activity's thread, inside the context temporalio set up for it.
        context = contextvars.copy_context()
        done = threading.Event()
        beater = threading.Thread(
            target=_beat_until, args=(context, done, interval), name="activity-heartbeat", daemon=True
        )
        beater.start()
        try:
            return fn(*args)
        finally:
            done.set()  # no join: a heartbeat in flight after completion is ignored by the SDK

    return run


def _beat_until(context: contextvars.Context, done: threading.Event, interval: float) -> None:
    while not done.wait(interval):
        try:
            context.run(activity.heartbeat)
        except Exception:  # a heartbeat that cannot be sent must not end the activity; the next one may get through
            log.warning("activity heartbeat failed", exc_info=True)


def _async_with_heartbeats(fn: Callable[..., Awaitable[Any]], interval: float) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def run(*args: Any) -> Any:
        async def beat() -> None:
            while True:
                await asyncio.sleep(interval)
                activity.heartbeat()

        beater = asyncio.create_task(beat())  # copies this task's context, so the activity's
        try:
            return await fn(*args)
        finally:
            beater.cancel()

    return run
