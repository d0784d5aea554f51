"""Record the workflow histories that tests/histories/test_replay.py replays: the determinism guard.

    .venv/bin/python -m tests.histories.record

Builds the real stack (Temporal dev server, the worker, git over HTTP, the sandbox cluster with its Flux simulator,
a throw-away PostgreSQL database), drives one run per scenario down the path the scenario names, checks that it
really took that path, and (re)writes `tests/histories/<scenario>.json` (`WorkflowHistory.to_json()`, unedited).

The files stand for the runs a deployment may have to resume: re-record to add a scenario, or once the runs they
stand for can no longer be in flight, never to silence a replay failure (README: "Changing a workflow safely").

The worker reaches PostgreSQL through a URL holding a password (the server trusts local connections) and pushes with
a token; neither may reach a history, and the recorder checks every file for both before writing any.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from provisioner.binaries import bundled_binary
from provisioner.contracts import (
    ErrorType,
    FailureAction,
    FailurePolicy,
    OperatorDecision,
    ProjectStatus,
    ProjectUpdate,
    StepName,
    dry_run_workflow_id,
    project_workflow_id,
)
from provisioner.db import dispose_engine
from provisioner.db.projects import get_project
from provisioner.temporal import DATA_CONVERTER, register_search_attributes
from tests.catalogue import SHIPPED_TEMPLATES
from tests.postgres import DEFAULT_TEST_DATABASE_URL, TEST_DATABASE_URL_ENV, temporary_postgres_database
from tests.stack import Stack, running_stack, spec_for
from workflows.project_init import ProjectInitWorkflow
from workflows.project_update import ProjectPreviewWorkflow, ProjectUpdateWorkflow

HISTORIES_DIR = Path(__file__).resolve().parent
WAIT_FOR_AN_OPERATOR = FailurePolicy(decision_timeout=timedelta(hours=1))
SHORT_DECISION_BOUND = timedelta(seconds=3)
SHORT_READY_BOUND = timedelta(seconds=3)
RUN_BOUND_SECONDS = 120.0  # no scenario takes more than a few seconds; this only stops a hung recorder

log = logging.getLogger("tests.histories.record")


@dataclass(frozen=True)
class Scenario:
    """One path through a workflow: `drive` takes the run of `workflow_id` to its end and checks its outcome."""

    name: str
    workflow_id: str
    drive: Callable[[Stack], Awaitable[None]]
    # Uses a fault knob of the whole stack (not of one project), so it runs alone.
    exclusive: bool = False

    @property
    def path(self) -> Path:
        return HISTORIES_DIR / f"{self.name}.json"


# ---- ProjectInitWorkflow --------------------------------------------------------------------------------------


async def provision_ready(stack: Stack) -> None:
    result = await (await stack.provisioner.start(spec_for("hist-ready"))).result()
    assert result.status is ProjectStatus.READY, result.message


async def provision_without_waiting(stack: Stack) -> None:
    result = await (await stack.provisioner.start(spec_for("hist-provisioned", wait_for_ready=False))).result()
    assert result.status is ProjectStatus.PROVISIONED, result.message


async def provision_not_ready(stack: Stack) -> None:
    slug = "hist-not-ready"
    stack.cluster.flux.hold(namespace=slug)
    try:
        result = await (await stack.provisioner.start(spec_for(slug, ready_timeout=SHORT_READY_BOUND))).result()
    finally:
        stack.cluster.flux.release(slug)
    assert result.status is ProjectStatus.NOT_READY, result.message


async def provision_after_a_failed_push(stack: Stack) -> None:
    slug = "hist-push-retried"
    failed_before = stack.git_server.failed_pushes
    stack.git_server.fail_pushes(1)
    result = await (await stack.provisioner.start(spec_for(slug, wait_for_ready=False))).result()
    assert stack.git_server.failed_pushes == failed_before + 1, "the push fault was not hit"
    push = next(step for step in result.progress.steps if step.name is StepName.PUSH_TEMPLATE)
    assert result.status is ProjectStatus.PROVISIONED and push.attempt == 2, (result.message, push)


async def stall_until_awaiting_decision(stack: Stack, slug: str, policy: FailurePolicy) -> WorkflowHandle[Any, Any]:
    stack.cluster.flux.stall(slug, slug, reason="BuildFailed", message="kustomize build failed: missing resource")
    handle = await stack.provisioner.start(spec_for(slug, on_failure=policy))
    status = ProjectStatus.PENDING
    async for progress in stack.provisioner.watch(slug, stop_at=frozenset({ProjectStatus.AWAITING_DECISION})):
        status = progress.status
    assert status is ProjectStatus.AWAITING_DECISION, status
    return handle


async def operator_retries(stack: Stack) -> None:
    slug = "hist-decision-retry"
    await stall_until_awaiting_decision(stack, slug, WAIT_FOR_AN_OPERATOR)
    await stack.unstall(slug)
    await stack.provisioner.decide(slug, OperatorDecision(FailureAction.RETRY, "fixed the overlay"))
    result = await stack.provisioner.wait(slug)
    assert result.status is ProjectStatus.READY, result.message


async def operator_aborts(stack: Stack) -> None:
    slug = "hist-decision-abort"
    policy = FailurePolicy(decision_timeout=timedelta(hours=1), delete_repository_on_abort=True)
    handle = await stall_until_awaiting_decision(stack, slug, policy)
    await stack.provisioner.decide(slug, OperatorDecision(FailureAction.ABORT, "wrong template"))
    failure = await run_failure(handle)
    stack.cluster.flux.unstall(slug, slug)
    assert failure.type == ErrorType.FLUX_STALLED.value and "aborted" in failure.message, failure.message
    assert not stack.namespace_exists(slug) and not (stack.settings.git_repos_dir / f"{slug}.git").exists()


async def nobody_decides(stack: Stack) -> None:
    slug = "hist-decision-timeout"
    policy = FailurePolicy(decision_timeout=SHORT_DECISION_BOUND, default_action=FailureAction.ABORT)
    handle = await stall_until_awaiting_decision(stack, slug, policy)
    failure = await run_failure(handle)
    stack.cluster.flux.unstall(slug, slug)
    assert "aborted" in failure.message and not stack.namespace_exists(slug), failure.message
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None and "no decision within" in record.last_message, record


async def invalid_request(stack: Stack) -> None:
    """The client refuses such a request; the workflow refuses it too when started some other way."""
    spec = spec_for("hist-invalid-input", ready_timeout=timedelta(0))
    handle = await stack.temporal.start_workflow(
        ProjectInitWorkflow.run, spec, id=spec.workflow_id, task_queue=stack.settings.task_queue
    )
    failure = await run_failure(handle)
    assert failure.type == ErrorType.INVALID_INPUT.value, failure.type


async def undecodable_request(stack: Stack) -> None:
    """An input no ProjectSpec can be built from fails the run at its first task (`failure_exception_types`)."""
    handle = await stack.temporal.start_workflow(
        "ProjectInitWorkflow",
        {"slug": "hist-undecodable-input"},
        id=project_workflow_id("hist-undecodable-input"),
        task_queue=stack.settings.task_queue,
    )
    failure = await run_failure(handle)
    assert "validation error" in failure.message, failure.message


# ---- ProjectTeardownWorkflow ----------------------------------------------------------------------------------


async def teardown(stack: Stack, slug: str, *, delete_repository: bool) -> None:
    provisioned = await (await stack.provisioner.start(spec_for(slug, wait_for_ready=False))).result()
    assert provisioned.status is ProjectStatus.PROVISIONED, provisioned.message
    result = await (await stack.provisioner.teardown(slug, delete_repository=delete_repository)).result()
    assert result.status is ProjectStatus.DELETED and result.repository_deleted is delete_repository, result.message
    assert not stack.namespace_exists(slug)


async def teardown_keeping_repository(stack: Stack) -> None:
    await teardown(stack, "hist-teardown-keep", delete_repository=False)


async def teardown_deleting_repository(stack: Stack) -> None:
    await teardown(stack, "hist-teardown-delete", delete_repository=True)


# ---- ProjectUpdateWorkflow and ProjectPreviewWorkflow -----------------------------------------------------------


async def update_to_a_new_commit(stack: Stack) -> None:
    slug = "hist-update"
    created = await (await stack.provisioner.start(spec_for(slug))).result()
    updated = await (await stack.provisioner.update(ProjectUpdate(slug=slug, parameters={"replicas": 3}))).result()
    assert updated.status is ProjectStatus.READY and updated.commit_sha != created.commit_sha, updated.message
    assert updated.applied_revision == f"main@sha1:{updated.commit_sha}", updated.applied_revision


async def update_changing_nothing(stack: Stack) -> None:
    slug = "hist-update-unchanged"
    created = await (await stack.provisioner.start(spec_for(slug, wait_for_ready=False))).result()
    updated = await (await stack.provisioner.update(ProjectUpdate(slug=slug, wait_for_ready=False))).result()
    assert updated.commit_sha == created.commit_sha, (updated.commit_sha, created.commit_sha)


async def update_of_no_project(stack: Stack) -> None:
    """The client refuses it (NoSuchProject); the workflow refuses it too when started some other way."""
    slug = "hist-update-missing"
    handle = await stack.temporal.start_workflow(
        ProjectUpdateWorkflow.run,
        ProjectUpdate(slug=slug),
        id=project_workflow_id(slug),
        task_queue=stack.settings.task_queue,
    )
    failure = await run_failure(handle)
    assert failure.type == ErrorType.NO_SUCH_PROJECT.value, failure.message


async def create_conflicting_with_the_live_project(stack: Stack) -> None:
    """The client refuses it (ProjectConflict); the record's claim refuses it when started some other way."""
    slug = "hist-conflict"
    await (await stack.provisioner.start(spec_for(slug, wait_for_ready=False))).result()
    handle = await stack.temporal.start_workflow(
        ProjectInitWorkflow.run,
        spec_for(slug, environment="production"),
        id=project_workflow_id(slug),
        task_queue=stack.settings.task_queue,
    )
    failure = await run_failure(handle)
    assert failure.type == ErrorType.PROJECT_CONFLICT.value and "environment" in failure.message, failure.message


async def dry_run_of_an_update(stack: Stack) -> None:
    slug = "hist-preview"
    await (await stack.provisioner.start(spec_for(slug, wait_for_ready=False))).result()
    preview = await stack.temporal.execute_workflow(
        ProjectPreviewWorkflow.run,
        ProjectUpdate(slug=slug, parameters={"replicas": 4}, dry_run=True),
        id=dry_run_workflow_id(slug),
        task_queue=stack.settings.task_queue,
    )
    assert preview.changed_files and preview.diff, preview


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("init_ready", project_workflow_id("hist-ready"), provision_ready),
    Scenario("init_provisioned", project_workflow_id("hist-provisioned"), provision_without_waiting),
    Scenario("init_not_ready", project_workflow_id("hist-not-ready"), provision_not_ready),
    Scenario(
        "init_push_retried",
        project_workflow_id("hist-push-retried"),
        provision_after_a_failed_push,
        exclusive=True,
    ),
    Scenario("init_decision_retry", project_workflow_id("hist-decision-retry"), operator_retries),
    Scenario("init_decision_abort", project_workflow_id("hist-decision-abort"), operator_aborts),
    Scenario("init_decision_timeout", project_workflow_id("hist-decision-timeout"), nobody_decides),
    Scenario("init_invalid_input", project_workflow_id("hist-invalid-input"), invalid_request),
    Scenario("init_undecodable_input", project_workflow_id("hist-undecodable-input"), undecodable_request),
    Scenario("teardown_keep_repository", project_workflow_id("hist-teardown-keep"), teardown_keeping_repository),
    Scenario("teardown_delete_repository", project_workflow_id("hist-teardown-delete"), teardown_deleting_repository),
    Scenario("init_conflict", project_workflow_id("hist-conflict"), create_conflicting_with_the_live_project),
    Scenario("update_ready", project_workflow_id("hist-update"), update_to_a_new_commit),
    Scenario("update_unchanged", project_workflow_id("hist-update-unchanged"), update_changing_nothing),
    Scenario("update_no_such_project", project_workflow_id("hist-update-missing"), update_of_no_project),
    Scenario("preview", dry_run_workflow_id("hist-preview"), dry_run_of_an_update),
)
SCENARIO_NAMES = frozenset(scenario.name for scenario in SCENARIOS)


async def run_failure(handle: WorkflowHandle[Any, Any]) -> ApplicationError:
    """The ApplicationError a run ended with; an AssertionError if it succeeded."""
    try:
        result = await handle.result()
    except WorkflowFailureError as failed:
        assert isinstance(failed.cause, ApplicationError), repr(failed.cause)
        return failed.cause
    raise AssertionError(f"{handle.id} was expected to fail but returned {result!r}")


# ---- Histories as files, and what must never be in them ----------------------------------------------------------


def load_history(path: Path) -> WorkflowHistory:
    """A history file, with the workflow id its first event recorded."""
    parsed = json.loads(path.read_text())
    workflow_id = parsed["events"][0]["workflowExecutionStartedEventAttributes"]["workflowId"]
    return WorkflowHistory.from_json(workflow_id, parsed)


def readable_forms(history_json: str) -> Iterator[bytes]:
    """The file as written, and every payload's bytes (base64 in the JSON), where a leaked value would be."""
    yield history_json.encode()
    history = WorkflowHistory.from_json("", history_json)
    yield b"".join(event.SerializeToString() for event in history.events)


def leaked_secrets(history_json: str, secrets: dict[str, str]) -> list[str]:
    """The names of the `secrets` found in a history, in any form."""
    return [
        name for name, value in secrets.items() if any(value.encode() in form for form in readable_forms(history_json))
    ]


def stack_secrets(stack: Stack, database_password: str) -> dict[str, str]:
    token = stack.settings.git_token.reveal()
    basic = base64.b64encode(f"{stack.settings.git_username}:{token}".encode()).decode()
    return {
        "git token": token,
        "git Basic credentials": basic,
        "database URL": stack.settings.effective_database_url,
        "database password": database_password,
    }


# ---- The recorder -----------------------------------------------------------------------------------------------


async def record_scenario(stack: Stack, scenario: Scenario) -> str:
    started = time.monotonic()
    try:
        await asyncio.wait_for(scenario.drive(stack), RUN_BOUND_SECONDS)
    except TimeoutError:
        raise AssertionError(f"{scenario.name} did not end within {RUN_BOUND_SECONDS} s") from None
    history = await stack.temporal.get_workflow_handle(scenario.workflow_id).fetch_history()
    log.info("%s: %d events in %.1f s", scenario.name, len(history.events), time.monotonic() - started)
    return history.to_json() + "\n"


async def record_all(stack: Stack) -> dict[Scenario, str]:
    """Every scenario's history; those using a stack-wide knob first, one at a time, then the others together."""
    recorded = {scenario: await record_scenario(stack, scenario) for scenario in SCENARIOS if scenario.exclusive}
    async with asyncio.TaskGroup() as group:  # one failing scenario cancels the others
        tasks = {
            scenario: group.create_task(record_scenario(stack, scenario))
            for scenario in SCENARIOS
            if not scenario.exclusive
        }
    recorded.update({scenario: task.result() for scenario, task in tasks.items()})
    return {scenario: recorded[scenario] for scenario in SCENARIOS}


async def record(admin_database_url: str) -> None:
    database_password = f"dbpassword{uuid.uuid4().hex}"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=bundled_binary("temporal"),
        data_converter=DATA_CONVERTER,
        dev_server_extra_args=["--headless"],
    )
    try:
        await register_search_attributes(env.client, "default")
        with (
            tempfile.TemporaryDirectory(prefix="histories-") as data_dir,
            temporary_postgres_database(admin_database_url) as database_url,
        ):
            worker_url = make_url(database_url).set(password=database_password).render_as_string(hide_password=False)
            try:
                async with running_stack(
                    env.client, Path(data_dir), SHIPPED_TEMPLATES, database_url, worker_database_url=worker_url
                ) as stack:
                    recorded = await record_all(stack)
                    secrets = stack_secrets(stack, database_password)
            finally:
                dispose_engine(worker_url)
    finally:
        await env.shutdown()

    leaks = {scenario.name: leaked_secrets(text, secrets) for scenario, text in recorded.items()}
    leaks = {name: found for name, found in leaks.items() if found}
    if leaks:
        raise AssertionError(f"secrets in the recorded histories, none written: {leaks}")
    for stale in set(HISTORIES_DIR.glob("*.json")) - {scenario.path for scenario in SCENARIOS}:
        stale.unlink()  # a scenario that no longer exists
    for scenario, text in recorded.items():
        scenario.path.write_text(text)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("temporalio", "kubernetes", "urllib3", "dulwich", "provisioner", "activities"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    asyncio.run(record(os.environ.get(TEST_DATABASE_URL_ENV, DEFAULT_TEST_DATABASE_URL)))
    print(f"recorded {len(SCENARIOS)} histories in {HISTORIES_DIR} in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
