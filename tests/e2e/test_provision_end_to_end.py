"""End to end on a local Temporal dev server: the real worker, real git over HTTP, real PostgreSQL, the sandbox
cluster with its Flux simulator. Every assertion reads the systems back, not the workflow's own account."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.records import get_project
from provisioner.client import ProvisionerClient
from provisioner.contracts import PROVISIONING_STEPS, ErrorType, ProjectSpec, ProjectStatus, StepName, StepState
from provisioner.gitserver import GitHttpServer
from provisioner.sandbox.cluster import FluxSimulatorConfig, SandboxCluster
from provisioner.settings import PROJECT_ROOT, Secret, Settings
from tests.postgres import temporary_postgres_database
from worker import build_worker

FLUX_GROUPS = {
    "GitRepository": ("source.toolkit.fluxcd.io", "v1", "gitrepositories"),
    "Kustomization": ("kustomize.toolkit.fluxcd.io", "v1", "kustomizations"),
}
FIXTURE_TEMPLATES = Path(__file__).resolve().parent.parent / "templating" / "fixtures" / "templates"


@dataclass
class Stack:
    settings: Settings
    cluster: SandboxCluster
    provisioner: ProvisionerClient
    api: kube.ApiClient

    def flux_object(self, kind: str, slug: str) -> dict[str, Any]:
        group, version, plural = FLUX_GROUPS[kind]
        found = kube.CustomObjectsApi(self.api).get_namespaced_custom_object(group, version, slug, plural, slug)
        assert isinstance(found, dict)
        return found

    def resource_versions(self, slug: str) -> dict[str, str]:
        namespace = kube.CoreV1Api(self.api).read_namespace(slug)
        assert namespace.metadata is not None and namespace.metadata.resource_version is not None
        versions = {"Namespace": namespace.metadata.resource_version}
        for kind in FLUX_GROUPS:
            versions[kind] = self.flux_object(kind, slug)["metadata"]["resourceVersion"]
        return versions

    def namespace_exists(self, slug: str) -> bool:
        names = [ns.metadata.name for ns in kube.CoreV1Api(self.api).list_namespace().items if ns.metadata]
        return slug in names


@pytest.fixture(scope="module")
def templates_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped catalogue plus a broken template whose tree lacks its kustomize path."""
    catalogue = tmp_path_factory.mktemp("templates")
    shutil.copytree(PROJECT_ROOT / "templates" / "web-service", catalogue / "web-service")
    shutil.copytree(FIXTURE_TEMPLATES / "no-overlay", catalogue / "no-overlay")
    return catalogue


@pytest.fixture(scope="module")
def database_url(admin_database_url: str) -> Iterator[str]:
    with temporary_postgres_database(admin_database_url) as url:
        yield url


@pytest.fixture(scope="module")
async def stack(
    local_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory, templates_dir: Path, database_url: str
) -> AsyncIterator[Stack]:
    data_dir = tmp_path_factory.mktemp("data")
    token = Secret(uuid.uuid4().hex)
    with (
        GitHttpServer(data_dir / "git", token=token) as git,
        SandboxCluster(flux=FluxSimulatorConfig(source_retry_interval=0.2)) as cluster,
    ):
        settings = Settings(
            data_dir=data_dir,
            database_url=Secret(database_url),
            templates_dir=templates_dir,
            task_queue=f"e2e-{uuid.uuid4().hex[:8]}",
            git_base_url=git.base_url,
            git_token=token,
            kubeconfig=str(cluster.write_kubeconfig(data_dir / "kubeconfig")),
            activity_threads=4,
        )
        from provisioner.db import migrate

        migrate(database_url)
        with ThreadPoolExecutor(max_workers=settings.activity_threads) as executor:
            async with build_worker(local_env.client, settings, executor):
                yield Stack(
                    settings, cluster, ProvisionerClient(local_env.client, settings.task_queue), cluster.api_client()
                )


def spec_for(slug: str, **overrides: Any) -> ProjectSpec:
    values: dict[str, Any] = {
        "slug": slug,
        "display_name": f"Project {slug}",
        "template": "web-service",
        "parameters": {"owner": "payments"},
        "ready_timeout": timedelta(seconds=60),
    }
    values.update(overrides)
    return ProjectSpec(**values)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def unique_slug(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


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
    assert record.workflow_id == handle.id == f"project-init-{slug}"

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
    first = await (await stack.provisioner.start(spec_for(slug))).result()
    versions = stack.resource_versions(slug)
    second = await (await stack.provisioner.start(spec_for(slug))).result()

    assert second.status is ProjectStatus.READY
    assert second.commit_sha == first.commit_sha
    steps = {s.name: s for s in second.progress.steps}
    assert "already present" in steps[StepName.CREATE_REPOSITORY].message
    assert "already up to date" in steps[StepName.PUSH_TEMPLATE].message
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
    handle = await stack.provisioner.start(spec_for(slug, template="no-overlay"))
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
