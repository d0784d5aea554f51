"""The git server failing pushes: with 503 before the push is applied, or with 500 after it landed (the answer is
lost). push_template is retried until it succeeds, and every branch ends with exactly one template commit."""

from __future__ import annotations

import pytest

from provisioner.contracts import ProjectStatus, StepName
from tests.chaos.fault_stack import ChaosStack
from tests.chaos.verify import outcomes_of, start_runs, take_inventory, verify_exactly_once
from tests.stack import unique_slug

PROJECTS = 6
FAILED_PUSHES = 9  # more than one per project: some runs fail their push twice


@pytest.mark.parametrize(
    ("status", "after_applying"), [("503 Service Unavailable", False), ("500 Internal Server Error", True)]
)
async def test_failed_pushes_are_retried_into_one_commit(chaos: ChaosStack, status: str, after_applying: bool) -> None:
    stack, git_server = chaos.stack, chaos.stack.git_server
    before = take_inventory(stack, chaos.database_url)
    failed_before = git_server.failed_pushes
    slugs = [unique_slug("push") for _ in range(PROJECTS)]
    git_server.fail_pushes(FAILED_PUSHES, status, after_applying=after_applying)
    try:
        outcomes = await outcomes_of(await start_runs(stack, slugs), within_seconds=120)
    finally:
        git_server.fail_pushes(0)
    failed = git_server.failed_pushes - failed_before
    # A push that landed is never pushed again (the retry finds its tree on the branch), so then each run fails once.
    assert failed == (PROJECTS if after_applying else FAILED_PUSHES)

    figures = verify_exactly_once(stack, chaos.database_url, before, outcomes, ProjectStatus.READY)
    push_steps = []
    for outcome in outcomes.values():
        assert outcome.result is not None
        push_steps.append(next(s for s in outcome.result.progress.steps if s.name is StepName.PUSH_TEMPLATE))
    # Each failed push cost its run exactly one attempt, seen in the progress.
    assert sum(step.attempt for step in push_steps) == PROJECTS + failed
    if after_applying:
        # The second attempt found the first one's commit on the branch and pushed nothing new.
        assert all("already up to date" in step.message for step in push_steps), [s.message for s in push_steps]
    print(f"\nCHAOS git push {status} (after applying: {after_applying}) x{FAILED_PUSHES}: {figures}")
