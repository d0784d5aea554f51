"""The one check every fault test ends with: each project ran to the expected status and exists exactly once.

Everything is read back from the systems themselves (the git server's directory and refs, PostgreSQL, the sandbox
cluster), compared with an inventory taken before the runs started, so that anything beyond one repository, one
commit, one row and one Namespace/GitRepository/Kustomization per project shows up as a duplicate or an orphan.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client as kube
from sqlalchemy import text
from temporalio.client import WorkflowFailureError

from provisioner.client import ProvisioningHandle
from provisioner.contracts import ProjectStatus, ProvisioningResult
from provisioner.db import engine_for
from tests.stack import FLUX_GROUPS, Stack, git, spec_for
from workflows.project_init import ProjectInitWorkflow

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Inventory:
    """What exists at one moment: repository directories, record rows per slug, and the cluster's objects."""

    repositories: Counter[str]
    records: Counter[str]
    namespaces: Counter[str]
    git_repositories: Counter[Key]
    kustomizations: Counter[Key]

    def minus(self, before: Inventory) -> Inventory:
        return Inventory(
            self.repositories - before.repositories,
            self.records - before.records,
            self.namespaces - before.namespaces,
            self.git_repositories - before.git_repositories,
            self.kustomizations - before.kustomizations,
        )


def take_inventory(stack: Stack, database_url: str) -> Inventory:
    """`database_url` reaches PostgreSQL directly (the worker's own URL may lead through a fault proxy)."""
    repos_dir = stack.settings.git_repos_dir
    repositories = Counter(entry.name for entry in repos_dir.iterdir()) if repos_dir.is_dir() else Counter[str]()
    with engine_for(database_url).connect() as connection:
        records = Counter[str](connection.execute(text("SELECT slug FROM projects")).scalars())
    namespaces = Counter(
        ns.metadata.name
        for ns in kube.CoreV1Api(stack.api).list_namespace().items
        if ns.metadata is not None and ns.metadata.name is not None
    )
    return Inventory(
        repositories, records, namespaces, _flux_objects(stack, "GitRepository"), _flux_objects(stack, "Kustomization")
    )


def _flux_objects(stack: Stack, kind: str) -> Counter[Key]:
    group, version, plural = FLUX_GROUPS[kind]
    listed = kube.CustomObjectsApi(stack.api).list_cluster_custom_object(group, version, plural)
    assert isinstance(listed, dict)
    return Counter((item["metadata"]["namespace"], item["metadata"]["name"]) for item in listed["items"])


@dataclass(frozen=True)
class Outcome:
    """How one run ended: its result, or the failure Temporal reported."""

    status: ProjectStatus
    result: ProvisioningResult | None
    failure: WorkflowFailureError | None = None


async def start_runs(stack: Stack, slugs: Sequence[str], **spec_overrides: Any) -> dict[str, ProvisioningHandle]:
    """Start every project's run at once."""
    handles = await asyncio.gather(*(stack.provisioner.start(spec_for(slug, **spec_overrides)) for slug in slugs))
    return dict(zip(slugs, handles, strict=True))


async def outcomes_of(handles: Mapping[str, ProvisioningHandle], within_seconds: float) -> dict[str, Outcome]:
    """Every run's outcome; fails when they have not all ended `within_seconds`."""
    async def outcome(handle: ProvisioningHandle) -> Outcome:
        try:
            result = await handle.result()
        except WorkflowFailureError as failure:
            return Outcome(ProjectStatus.FAILED, None, failure)
        return Outcome(result.status, result)

    try:
        ended = await asyncio.wait_for(asyncio.gather(*(outcome(h) for h in handles.values())), within_seconds)
    except TimeoutError:
        stuck = [await _describe_progress(handle) for handle in handles.values()]
        raise AssertionError(f"runs still going after {within_seconds} s:\n" + "\n".join(stuck)) from None
    return dict(zip(handles, ended, strict=True))


async def _describe_progress(handle: ProvisioningHandle) -> str:
    progress = await handle.query(ProjectInitWorkflow.progress)
    steps = "; ".join(f"{s.name.value}={s.state.value}#{s.attempt} {s.message[:160]}" for s in progress.steps)
    return f"{handle.id} {progress.status.value}: {steps}"


@dataclass(frozen=True)
class Figures:
    tried: int
    completed: int  # ended with the expected status
    duplicates: int  # a second repository, commit, row or cluster object of one project
    orphans: int  # anything that appeared and belongs to no project that was started


def verify_exactly_once(
    stack: Stack,
    database_url: str,
    before: Inventory,
    outcomes: Mapping[str, Outcome],
    expected: ProjectStatus,
) -> Figures:
    """Assert every run ended as `expected` and left exactly one of everything; return the figures."""
    slugs = set(outcomes)
    wrong = {slug: (o.status.value, o.failure) for slug, o in outcomes.items() if o.status is not expected}
    new = take_inventory(stack, database_url).minus(before)
    expected_keys = {(slug, slug) for slug in slugs}

    duplicates: list[str] = []
    missing: list[str] = []
    orphans: list[str] = []
    for what, found, wanted in (
        ("repository", new.repositories, {f"{slug}.git" for slug in slugs}),
        ("record", new.records, slugs),
        ("Namespace", new.namespaces, slugs),
    ):
        orphans += [f"{what} {name}" for name in found if name not in wanted]
        duplicates += [f"{what} {name} x{count}" for name, count in found.items() if count > 1]
        missing += [f"{what} {name}" for name in wanted if name not in found]
    for what, found_keys in (("GitRepository", new.git_repositories), ("Kustomization", new.kustomizations)):
        orphans += [f"{what} {key}" for key in found_keys if key not in expected_keys]
        missing += [f"{what} {key}" for key in expected_keys if key not in found_keys]

    for slug, outcome in outcomes.items():
        repository = stack.settings.git_repos_dir / f"{slug}.git"
        if not repository.is_dir():
            continue  # reported missing above
        branches = git("--git-dir", str(repository), "for-each-ref", "--format=%(objectname)", "refs/heads/").split()
        commits = [int(git("--git-dir", str(repository), "rev-list", "--count", sha).strip()) for sha in branches]
        if commits != [1]:
            duplicates.append(f"{slug}: branches with commit counts {commits}, wanted one branch with one commit")
        elif outcome.result is not None and branches[0] != outcome.result.commit_sha:
            duplicates.append(f"{slug}: the branch is at {branches[0]}, the run reported {outcome.result.commit_sha}")

    with engine_for(database_url).connect() as connection:
        rows = connection.execute(text("SELECT slug, status FROM projects WHERE slug = ANY(:s)"), {"s": list(slugs)})
        statuses = {row.slug: row.status for row in rows}
    wrong_records = {slug: status for slug, status in statuses.items() if status != expected.value}

    figures = Figures(len(outcomes), len(outcomes) - len(wrong), len(duplicates), len(orphans))
    assert not wrong, f"runs that did not end {expected.value}: {wrong}"
    assert not wrong_records, f"records not {expected.value}: {wrong_records}"
    assert not missing, f"missing: {missing}"
    assert not duplicates, f"duplicates: {duplicates}"
    assert not orphans, f"orphans: {orphans}"
    return figures
