"""The two crash windows inside the repository activities, hit exactly by a worker process held there and killed.

`create_repository` builds the repository in `.creating-<slug>` and renames it into place; `delete_repository`
renames the repository into `.deleting-<slug>` and removes it. A worker started with PROVISIONER_TEST_HOLD_AT
(provisioner/testhold.py) stops inside the activity between those two moves, and is killed with SIGKILL there; a
fresh worker takes the retried attempt over. The retry must finish the job from what the killed attempt left, and
afterwards the Git host's directory holds exactly one `<slug>.git` per live project and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from provisioner.contracts import ProjectStatus, StepName, StepState
from provisioner.testhold import HOLD_AT_ENV, HOLD_MARKER_ENV
from tests.chaos.verify import outcomes_of, start_runs, take_inventory, verify_exactly_once
from tests.chaos.worker_process import WorkerProcess
from tests.stack import Stack, running_stack, unique_slug

pytestmark = pytest.mark.chaos

READY_TIMEOUT = timedelta(minutes=5)
RUN_TIMEOUT_SECONDS = 240.0
HOLD_TIMEOUT_SECONDS = 120.0


@pytest.fixture
async def window_stack(
    local_env: WorkflowEnvironment, tmp_path: Path, templates_dir: Path, database_url: str
) -> AsyncIterator[Stack]:
    """A stack of its own per test, so that its Git directory holds this test's repositories only."""
    async with running_stack(
        local_env.client, tmp_path / "data", templates_dir, database_url, in_process_worker=False
    ) as stack:
        yield stack


def temporal_address(stack: Stack) -> str:
    return stack.temporal.service_client.config.target_host


def held_worker(stack: Stack, log_dir: Path, point: str) -> tuple[WorkerProcess, Path]:
    """A production worker process that stops for good inside the activity that reaches `point`."""
    marker = log_dir / "held"
    env = {HOLD_AT_ENV: point, HOLD_MARKER_ENV: str(marker)}
    return WorkerProcess(stack.settings, temporal_address(stack), log_dir / "held.log", env=env), marker


def held_at(marker: Path) -> str:
    """The point the hook's marker file names once its line is complete; "" before."""
    text = marker.read_text() if marker.exists() else ""
    return text.split()[0] if text.endswith("\n") else ""


async def wait_until_held(worker: WorkerProcess, marker: Path, point: str) -> None:
    deadline = time.monotonic() + HOLD_TIMEOUT_SECONDS
    while not held_at(marker):
        assert worker.process.poll() is None, f"the worker exited:\n{worker.output()}"
        assert time.monotonic() < deadline, f"no activity reached {point}:\n{worker.output()}"
        await asyncio.sleep(0.1)
    assert held_at(marker) == point


def assert_only_live_repositories(stack: Stack, live: Iterable[str]) -> None:
    """Exactly one `<slug>.git` per live project and nothing else: no scratch directory, hidden or not."""
    assert sorted(os.listdir(stack.settings.git_repos_dir)) == sorted(f"{slug}.git" for slug in live)


async def test_a_worker_killed_while_the_repository_is_staged_leaves_nothing_behind(
    window_stack: Stack, database_url: str, tmp_path: Path
) -> None:
    stack, slug = window_stack, unique_slug("window-create")
    repos_dir = stack.settings.git_repos_dir
    before = take_inventory(stack, database_url)
    held, marker = held_worker(stack, tmp_path, "create_repository.staged")
    with held:
        await held.start()
        handles = await start_runs(stack, [slug], ready_timeout=READY_TIMEOUT)
        await wait_until_held(held, marker, "create_repository.staged")
        # The window: a complete, marked repository in the staging directory, nothing served yet.
        assert sorted(os.listdir(repos_dir)) == [f".creating-{slug}"]
        assert (repos_dir / f".creating-{slug}" / "config").is_file()
        held.kill()

    with WorkerProcess(stack.settings, temporal_address(stack), tmp_path / "recovery.log") as recovery:
        await recovery.start()
        outcomes = await outcomes_of(handles, RUN_TIMEOUT_SECONDS)

    verify_exactly_once(stack, database_url, before, outcomes, ProjectStatus.READY)
    result = outcomes[slug].result
    assert result is not None
    create = next(s for s in result.progress.steps if s.name is StepName.CREATE_REPOSITORY)
    # The killed attempt never renamed its repository into place: the retry built it (again) and created it.
    assert (create.state, create.attempt) == (StepState.SUCCEEDED, 2), create
    assert create.message.startswith("created:"), create
    assert_only_live_repositories(stack, [slug])


async def test_a_worker_killed_while_deleting_the_repository_leaves_nothing_behind(
    window_stack: Stack, database_url: str, tmp_path: Path
) -> None:
    stack, slug, kept = window_stack, unique_slug("window-delete"), unique_slug("window-kept")
    repos_dir = stack.settings.git_repos_dir
    held, marker = held_worker(stack, tmp_path, "delete_repository.renamed")
    with held:
        await held.start()
        # The held worker provisions normally: only a deletion reaches the point it stops at.
        outcomes = await outcomes_of(await start_runs(stack, [slug, kept]), RUN_TIMEOUT_SECONDS)
        assert {o.status for o in outcomes.values()} == {ProjectStatus.READY}, outcomes
        assert_only_live_repositories(stack, [slug, kept])

        teardown = await stack.provisioner.teardown(slug, delete_repository=True)
        await wait_until_held(held, marker, "delete_repository.renamed")
        # The window: the repository is out of the served name, half way to being removed.
        assert sorted(os.listdir(repos_dir)) == [f".deleting-{slug}", f"{kept}.git"]
        assert (repos_dir / f".deleting-{slug}" / "repository" / "config").is_file()
        held.kill()

    with WorkerProcess(stack.settings, temporal_address(stack), tmp_path / "recovery.log") as recovery:
        await recovery.start()
        result = await asyncio.wait_for(teardown.result(), RUN_TIMEOUT_SECONDS)

    assert result.status is ProjectStatus.DELETED, result
    # The retry finished the killed attempt's deletion, and says so.
    assert result.repository_deleted, result
    assert result.message == "cluster resources deleted; repository deleted", result
    delete = next(s for s in result.progress.steps if s.name is StepName.DELETE_REPOSITORY)
    assert (delete.state, delete.attempt, delete.message) == (
        StepState.SUCCEEDED,
        2,
        f"deleted repository {slug}",
    ), delete
    assert_only_live_repositories(stack, [kept])
