"""An unsafe template render is refused before anything is written or pushed: on the end-to-end stack, a run whose
template escapes the tree through a parameter, holds a symlink or is made to allocate without bound fails at the
validate_template step, and no repository, database row, namespace or Flux object exists afterwards."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from provisioner.contracts import (
    ErrorType,
    FailureAction,
    FailurePolicy,
    ParameterValue,
    ProjectSpec,
    ProjectStatus,
)
from tests.catalogue import catalogue_with_broken_template
from tests.fuzz.checks import activities_and_timers
from tests.fuzz.footprint import footprint, project_footprint
from tests.stack import Stack, unique_slug
from tests.templating.test_templating import write_template

RUN_SECONDS = 120
# A refused render is final either way; deciding at once keeps the run from awaiting an operator.
LEAVE_AT_ONCE = FailurePolicy(decision_timeout=timedelta(0), default_action=FailureAction.LEAVE)


@pytest.fixture(scope="module")
def templates_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stack's catalogue, plus templates that a tenant's parameters (or their author) make unsafe."""
    directory = catalogue_with_broken_template(tmp_path_factory.mktemp("templates"))
    write_template(
        directory, "escape", {"{{ params.dir }}/x.txt": "x\n"}, parameters={"dir": {"type": "string", "default": "src"}}
    )
    write_template(
        directory,
        "pad",
        {"pad.txt": "{{ '-' * params.width }}\n"},
        parameters={"width": {"type": "integer", "default": 3}},
    )
    linked = write_template(directory, "linked", {})
    outside = tmp_path_factory.mktemp("outside") / "secret.txt"
    outside.write_text("secret\n")
    os.symlink(outside, linked / "files" / "secret.txt")
    return directory


def spec(template: str, parameters: dict[str, ParameterValue]) -> ProjectSpec:
    return ProjectSpec(
        unique_slug("unsafe"),
        "Unsafe",
        template,
        parameters,
        wait_for_ready=False,
        on_failure=LEAVE_AT_ONCE,
    )


@pytest.mark.parametrize(
    ("template", "parameters", "reason"),
    [
        ("escape", {"dir": "../../etc"}, "file name '{{ params.dir }}/x.txt' renders to '../../etc/x.txt'"),
        ("escape", {"dir": "/etc"}, "renders to '/etc/x.txt', which is absolute: refused"),
        ("linked", {}, "template 'linked' contains a symlink at 'secret.txt': refused"),
        ("pad", {"width": 10**12}, "SecurityError: repeating 1 items 1000000000000 times"),
    ],
    ids=["parent-directory", "absolute", "symlink", "unbounded-repeat"],
)
async def test_an_unsafe_render_fails_at_validation_and_nothing_is_written_or_pushed(
    stack: Stack, template: str, parameters: dict[str, ParameterValue], reason: str
) -> None:
    unsafe = spec(template, parameters)
    before = footprint(stack)

    handle = await stack.provisioner.start(unsafe)
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), RUN_SECONDS)

    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == ErrorType.TEMPLATE_RENDER_FAILED.value
    assert reason in cause.message
    assert (await activities_and_timers(handle))[0] == ["validate_template"]
    assert footprint(stack) == before


async def test_the_same_template_with_a_safe_parameter_is_provisioned(stack: Stack) -> None:
    safe = spec("escape", {"dir": "nested/src"})
    before = footprint(stack)

    await stack.provisioner.start(safe)
    result = await asyncio.wait_for(stack.provisioner.wait(safe.slug), RUN_SECONDS)

    assert result.status is ProjectStatus.PROVISIONED
    assert footprint(stack).added_since(before) == project_footprint(safe.slug)
