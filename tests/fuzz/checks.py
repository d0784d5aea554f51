"""Assertions shared by the fuzz tests: what a clear field-level refusal looks like, and the worker's view of a spec."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from provisioner.contracts import FieldError, ProjectSpec
from provisioner.temporal import DATA_CONVERTER

# Longest error line allowed: an error explains the field, it never echoes a huge value back.
MAX_ERROR_LENGTH = 300


def heads(fields: Iterable[str]) -> set[str]:
    """The top-level fields among dotted field paths (`parameters.port` -> `parameters`)."""
    return {field.split(".", 1)[0] for field in fields}


def error_heads(errors: Iterable[FieldError]) -> set[str]:
    return heads(error.field for error in errors)


def assert_clear(errors: Iterable[FieldError]) -> None:
    """Each error names its field and says why, briefly."""
    for error in errors:
        assert error.field and error.message.strip(), error
        assert str(error).startswith(f"{error.field}: ")
        assert len(str(error)) <= MAX_ERROR_LENGTH, str(error)[:500]


def round_trip(spec: ProjectSpec) -> ProjectSpec:
    """`spec` as a worker receives it: through the payload converter both ways (call from synchronous code)."""
    payloads = asyncio.run(DATA_CONVERTER.encode([spec]))
    decoded = asyncio.run(DATA_CONVERTER.decode(payloads, [ProjectSpec]))[0]
    assert isinstance(decoded, ProjectSpec)
    return decoded


async def activities_and_timers(handle: WorkflowHandle[Any, Any]) -> tuple[list[str], int]:
    """The activity types the run scheduled, in order, and how many timers it started."""
    activities, timers = [], 0
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            activities.append(event.activity_task_scheduled_event_attributes.activity_type.name)
        elif event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            timers += 1
    return activities, timers
