"""The determinism guard: every recorded history (tests/histories/<scenario>.json, written by
`python -m tests.histories.record`) replays against today's workflow code without a nondeterminism error.

A failure here means a run in flight, started by the previous code, would break on the next worker that picks it up:
make the change with `workflow.patched` (README: "Changing a workflow safely") instead of re-recording.
The last tests prove the guard bites: altered copies of the workflows fail to replay the same histories.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, WorkflowRunner

from provisioner.contracts import (
    ProjectIdentity,
    ProjectSpec,
    ProjectUpdate,
    ProvisioningResult,
    RepositoryInfo,
    StepName,
)
from provisioner.temporal import DATA_CONVERTER
from tests.histories.clock_reading_workflow import InitReadingTheSystemClock
from tests.histories.record import (
    HISTORIES_DIR,
    SCENARIO_NAMES,
    SCENARIOS,
    leaked_secrets,
    load_history,
    readable_forms,
)
from worker import DETERMINISM_GUARD_RUNNER, WORKFLOW_RUNNER, WORKFLOWS
from workflows.project_init import CREATE_REPOSITORY, ProjectInitWorkflow
from workflows.project_update import READ_PROJECT_RECORD, ProjectUpdateWorkflow

CREDENTIALS_IN_URL = re.compile(rb"[a-z+]+://[^/\s:@\"]+:[^/\s@\"]+@")


def recorded_files() -> set[str]:
    return {path.stem for path in HISTORIES_DIR.glob("*.json")}


def history_of(scenario: str) -> WorkflowHistory:
    return load_history(HISTORIES_DIR / f"{scenario}.json")


def test_every_scenario_has_exactly_one_history() -> None:
    files = recorded_files()
    assert files, f"no recorded history in {HISTORIES_DIR}: run python -m tests.histories.record"
    assert files == SCENARIO_NAMES, (
        f"missing: {sorted(SCENARIO_NAMES - files)}, unknown: {sorted(files - SCENARIO_NAMES)}; "
        "run python -m tests.histories.record"
    )


def replayer(workflows: Sequence[type], runner: WorkflowRunner = WORKFLOW_RUNNER) -> Replayer:
    """Replays `workflows` as the worker runs them by default (unsandboxed: the altered classes below live in this
    test module, which the sandbox would have to re-import)."""
    return Replayer(workflows=workflows, workflow_runner=runner, data_converter=DATA_CONVERTER)


# As the worker runs them (unsandboxed), and in the sandbox, which fails on any nondeterministic call (worker.py).
RUNNERS = {"worker": WORKFLOW_RUNNER, "sandbox": DETERMINISM_GUARD_RUNNER}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("scenario", [scenario.name for scenario in SCENARIOS])
async def test_history_replays_on_todays_workflows(scenario: str, runner: str) -> None:
    history = history_of(scenario)
    expected_id = next(s.workflow_id for s in SCENARIOS if s.name == scenario)
    assert history.workflow_id == expected_id
    result = await replayer(WORKFLOWS, RUNNERS[runner]).replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{scenario} no longer replays: {result.replay_failure!r}"


def test_histories_hold_no_credentials() -> None:
    """The recorder checks for its stack's exact secrets; this catches the shape of any leaked credential."""
    for path in HISTORIES_DIR.glob("*.json"):
        for form in readable_forms(path.read_text()):
            assert not CREDENTIALS_IN_URL.search(form), f"{path.name}: {CREDENTIALS_IN_URL.search(form)}"
            assert b"postgresql+psycopg://" not in form and b"Authorization" not in form, path.name


def test_the_recorders_leak_check_reads_inside_payloads() -> None:
    """A value planted in an activity's input (base64 in the JSON) is found; the recorded history holds none."""
    history = history_of("init_provisioned")
    planted = "planted-token-" + "0123456789abcdef"
    assert leaked_secrets(history.to_json(), {"planted": planted}) == []
    scheduled = next(event for event in history.events if event.HasField("activity_task_scheduled_event_attributes"))
    scheduled.activity_task_scheduled_event_attributes.input.payloads[0].data += planted.encode()
    assert planted not in history.to_json()  # not readable as is...
    assert leaked_secrets(history.to_json(), {"planted": planted}) == ["planted"]  # ... and still found


# ---- The guard bites: altered workflows (same names) do not replay the recorded histories -----------------------


@workflow.defn(name="ProjectInitWorkflow", sandboxed=False)
class InitWithAnActivityAddedFirst(ProjectInitWorkflow):
    """A new activity before the first step."""

    @workflow.run
    async def run(self, spec: ProjectSpec) -> ProvisioningResult:
        await workflow.execute_activity(
            READ_PROJECT_RECORD, spec.slug, start_to_close_timeout=timedelta(seconds=10)
        )
        return await super().run(spec)


@workflow.defn(name="ProjectInitWorkflow", sandboxed=False)
class InitWithAPatchedActivity(ProjectInitWorkflow):
    """The same new activity, behind a patch: new runs take it, runs recorded without the patch do not."""

    @workflow.run
    async def run(self, spec: ProjectSpec) -> ProvisioningResult:
        if workflow.patched("describe-before-provisioning"):
            await workflow.execute_activity(
                READ_PROJECT_RECORD, spec.slug, start_to_close_timeout=timedelta(seconds=10)
            )
        return await super().run(spec)


@workflow.defn(name="ProjectInitWorkflow", sandboxed=False)
class InitWithStepsReordered(ProjectInitWorkflow):
    """The repository is created before the template is validated."""

    @workflow.run
    async def run(self, spec: ProjectSpec) -> ProvisioningResult:
        return await super().run(spec)

    async def _provision(self, spec: ProjectSpec) -> ProvisioningResult:
        if self._repository is None:
            self._repository = await self._steps.run(
                StepName.CREATE_REPOSITORY, CREATE_REPOSITORY, spec, RepositoryInfo, lambda r: r.clone_url
            )
        return await super()._provision(spec)


@workflow.defn(name="ProjectUpdateWorkflow", sandboxed=False)
class UpdateWithoutReadingTheRecord(ProjectUpdateWorkflow):
    """An activity removed: the update trusts a spec of its own instead of reading the project's record."""

    @workflow.run
    async def run(self, change: ProjectUpdate) -> ProvisioningResult:
        identity = ProjectIdentity(f"Project {change.slug}", "web-service", "development", {"owner": "payments"})
        return await self._provision_until_decided(change.applied_to(identity))


ALTERED = [
    pytest.param(InitWithAnActivityAddedFirst, ProjectInitWorkflow, "init_provisioned", id="activity-added"),
    pytest.param(InitWithStepsReordered, ProjectInitWorkflow, "init_ready", id="steps-reordered"),
    pytest.param(UpdateWithoutReadingTheRecord, ProjectUpdateWorkflow, "update_ready", id="activity-removed"),
]


@pytest.mark.parametrize(("altered", "original", "scenario"), ALTERED)
async def test_an_altered_workflow_fails_to_replay(altered: type, original: type, scenario: str) -> None:
    history = history_of(scenario)
    # The control: the same replayer with the unaltered workflow replays the history...
    control = await replayer([original]).replay_workflow(history, raise_on_replay_failure=False)
    assert control.replay_failure is None, repr(control.replay_failure)
    # ... and the altered one does not.
    result = await replayer([altered]).replay_workflow(history, raise_on_replay_failure=False)
    assert isinstance(result.replay_failure, workflow.NondeterminismError), repr(result.replay_failure)
    assert "Nondeterminism error" in str(result.replay_failure)


async def test_the_same_addition_behind_a_patch_replays() -> None:
    """README's recipe: the activity InitWithAnActivityAddedFirst adds, behind `workflow.patched`, replays the old
    history (the old path is taken where the history has no patch marker)."""
    history = history_of("init_provisioned")
    result = await replayer([InitWithAPatchedActivity]).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None, repr(result.replay_failure)


async def test_the_sandbox_refuses_a_nondeterministic_call_the_worker_would_run() -> None:
    """Why the workflow tests and the replays run in DETERMINISM_GUARD_RUNNER: the worker's runner replays a
    workflow that reads the system clock without a complaint; the sandbox refuses it."""
    history = history_of("init_ready")

    async def replay(runner: WorkflowRunner) -> Exception | None:
        guarded = replayer([InitReadingTheSystemClock], runner)
        return (await guarded.replay_workflow(history, raise_on_replay_failure=False)).replay_failure

    assert await replay(WORKFLOW_RUNNER) is None
    refused = await replay(DETERMINISM_GUARD_RUNNER)
    assert refused is not None and "Cannot access time.time" in str(refused), repr(refused)
