"""End to end on a local Temporal dev server: the real worker, real git over HTTP, real PostgreSQL, the sandbox
cluster with its Flux simulator. Every assertion reads the systems back, not the workflow's own account."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from provisioner.binaries import bundled_binary
from provisioner.contracts import (
    PROVISIONING_STEPS,
    ErrorType,
    FailureAction,
    FailurePolicy,
    ProjectStatus,
    StepState,
)
from provisioner.db.projects import get_project
from tests.stack import Stack, git, spec_for, unique_slug

# A failure that should end the run at once rather than wait for an operator (tests/e2e/test_operator_decisions.py).
DECIDE_AT_ONCE = FailurePolicy(decision_timeout=timedelta(0))
LEAVE_AT_ONCE = FailurePolicy(decision_timeout=timedelta(0), default_action=FailureAction.LEAVE)


async def test_provisions_a_project_end_to_end(stack: Stack, tmp_path: Path) -> None:
    slug = unique_slug("shop")
    handle = await stack.provisioner.start(spec_for(slug))
    result = await handle.result()
    assert result.status is ProjectStatus.READY, result.message

    # The repository: real, cloneable over HTTP, holding exactly one commit with the rendered template.
    clone = tmp_path / "clone"
    git("clone", "--quiet", result.repo_url, str(clone))
    assert git("-C", str(clone), "rev-parse", "HEAD").strip() == result.commit_sha
    assert git("-C", str(clone), "rev-list", "--count", "HEAD").strip() == "1"
    assert (clone / "k8s" / "overlays" / "development" / "kustomization.yaml").is_file()
    assert (clone / "k8s" / "base" / "kustomization.yaml").is_file()

    # The record, in PostgreSQL.
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None
    assert record.status == ProjectStatus.READY.value
    assert (record.repo_url, record.commit_sha, record.namespace) == (result.repo_url, result.commit_sha, slug)
    assert record.workflow_id == handle.id == f"project-{slug}"

    # The cluster: three objects, labelled, and Flux (simulated) reports Ready for the pushed revision.
    assert stack.namespace_exists(slug)
    kustomization = stack.flux_object("Kustomization", slug)
    source = stack.flux_object("GitRepository", slug)
    assert kustomization["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "provisioner"
    assert kustomization["spec"]["path"] == "./k8s/overlays/development"
    assert source["spec"]["url"] == result.repo_url
    ready = {c["type"]: c for c in kustomization["status"]["conditions"]}["Ready"]
    assert ready["status"] == "True"
    assert ready["reason"] == "ReconciliationSucceeded"
    assert ready["message"] == f"Applied revision: main@sha1:{result.commit_sha}"
    assert [s.state for s in result.progress.steps] == [StepState.SUCCEEDED] * len(PROVISIONING_STEPS)
    assert result.progress.percent == 100


async def test_provisioning_the_same_project_twice_creates_nothing_new(stack: Stack, tmp_path: Path) -> None:
    slug = unique_slug("twice")
    first_handle = await stack.provisioner.start(spec_for(slug))
    first = await first_handle.result()
    versions = stack.resource_versions(slug)
    second_handle = await stack.provisioner.start(spec_for(slug))
    second = await second_handle.result()

    # The same identity and content is a no-op: the project's run is returned, no other is started.
    assert second_handle.id == first_handle.id
    assert (await second_handle.describe()).run_id == first_handle.result_run_id
    assert second == first
    assert stack.resource_versions(slug) == versions
    assert git("ls-remote", first.repo_url).count("refs/heads/") == 1
    clone = tmp_path / "clone"
    git("clone", "--quiet", first.repo_url, str(clone))
    assert git("-C", str(clone), "rev-list", "--count", "HEAD").strip() == "1"
    from sqlalchemy import text

    from provisioner.db import engine_for

    with engine_for(stack.settings.effective_database_url).connect() as connection:
        rows = connection.execute(text("SELECT count(*) FROM projects WHERE slug = :s"), {"s": slug}).scalar_one()
    assert rows == 1


async def test_a_template_without_the_kustomize_path_fails_before_anything_is_created(stack: Stack) -> None:
    slug = unique_slug("broken")
    handle = await stack.provisioner.start(spec_for(slug, template="no-overlay", on_failure=DECIDE_AT_ONCE))
    with pytest.raises(WorkflowFailureError) as raised:
        await handle.result()
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == ErrorType.KUSTOMIZE_PATH_MISSING.value
    assert "k8s/overlays/development" in cause.message

    assert not (stack.settings.git_repos_dir / f"{slug}.git").exists()
    assert get_project(stack.settings.effective_database_url, slug) is None
    assert not stack.namespace_exists(slug)


async def test_flux_never_ready_ends_not_ready_with_the_reason(stack: Stack) -> None:
    slug = unique_slug("held")
    stack.cluster.flux.hold(namespace=slug)
    try:
        result = await (await stack.provisioner.start(spec_for(slug, ready_timeout=timedelta(seconds=4)))).result()
    finally:
        stack.cluster.flux.release()
    assert result.status is ProjectStatus.NOT_READY
    assert result.readiness is not None and result.readiness.reason
    assert result.readiness.reason in result.message
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None and record.status == ProjectStatus.NOT_READY.value
    assert stack.namespace_exists(slug)


async def test_stalled_flux_fails_the_run_at_once_with_the_reason(stack: Stack) -> None:
    slug = unique_slug("stalled")
    stack.cluster.flux.stall(slug, slug, reason="InvalidCELExpression", message="healthCheckExprs is invalid")
    try:
        spec = spec_for(slug, ready_timeout=timedelta(minutes=5), on_failure=LEAVE_AT_ONCE)
        handle = await stack.provisioner.start(spec)
        with pytest.raises(WorkflowFailureError) as raised:
            await handle.result()
    finally:
        stack.cluster.flux.unstall(slug, slug)
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == ErrorType.FLUX_STALLED.value
    assert "InvalidCELExpression" in cause.message and "healthCheckExprs is invalid" in cause.message
    description = await handle.describe()
    assert description.close_time is not None
    # "At once": far from the 5 minute bound.
    assert (description.close_time - description.start_time) < timedelta(seconds=30)
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None and record.status == ProjectStatus.FAILED.value
    assert "Stalled" in record.last_message


def kubectl(stack: Stack, cache_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real kubectl against the stack's cluster, as a user runs it after `provisioner create`."""
    command = [bundled_binary("kubectl"), "--kubeconfig", str(stack.settings.kubeconfig), "--cache-dir", str(cache_dir)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, check=False)


async def test_after_ready_kubectl_shows_the_applied_app_and_its_ready_kustomization(
    stack: Stack, tmp_path: Path
) -> None:
    """Ready means the app is there and healthy at that commit: Flux (simulated) applied the Deployment and the
    Service the template renders, and waited for the Deployment to be available (`spec.wait`)."""
    slug = unique_slug("app")
    result = await (await stack.provisioner.start(spec_for(slug))).result()
    assert result.status is ProjectStatus.READY, result.message

    deployments = kubectl(stack, tmp_path, "get", "deployment", "-n", slug)
    assert deployments.returncode == 0, deployments.stderr
    header, row = deployments.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE"]
    assert row.split()[:4] == [slug, "1/1", "1", "1"]
    everything = kubectl(stack, tmp_path, "get", "all", "-n", slug)
    assert f"deployment.apps/{slug}" in everything.stdout and f"service/{slug}" in everything.stdout
    ready = "--for=condition=Ready"
    waited = kubectl(stack, tmp_path, "wait", ready, f"kustomization/{slug}", "-n", slug, "--timeout=30s")
    assert waited.returncode == 0 and "condition met" in waited.stdout, waited.stderr

    kustomization = stack.flux_object("Kustomization", slug)
    assert kustomization["spec"]["wait"] is True
    inventory = {entry["id"] for entry in kustomization["status"]["inventory"]["entries"]}
    assert inventory == {f"{slug}_{slug}_apps_Deployment", f"{slug}_{slug}__Service"}
    healthy = {c["type"]: c for c in kustomization["status"]["conditions"]}["Healthy"]
    assert healthy["status"] == "True"
