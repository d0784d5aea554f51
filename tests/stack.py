"""The end-to-end stack for tests, as a pytest plugin (see tests/conftest.py): the Temporal dev server
(`local_env`), the real worker, git over HTTP, the sandbox cluster with its Flux simulator and a throw-away PostgreSQL
database. Fixtures are module-scoped: each test module gets its own stack."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube
from kubernetes.client.exceptions import ApiException
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from kubesim.cluster import FluxSimulatorConfig, SandboxCluster
from provisioner.catalog import ProjectCatalog
from provisioner.client import ProvisionerClient
from provisioner.contracts import ProjectSpec
from provisioner.db import migrate
from provisioner.gitserver import GitHttpServer
from provisioner.settings import Secret, Settings
from tests.catalogue import catalogue_with_broken_template
from tests.postgres import temporary_postgres_database
from worker import build_worker

FLUX_GROUPS = {
    "GitRepository": ("source.toolkit.fluxcd.io", "v1", "gitrepositories"),
    "Kustomization": ("kustomize.toolkit.fluxcd.io", "v1", "kustomizations"),
}


@dataclass
class Stack:
    settings: Settings
    cluster: SandboxCluster
    provisioner: ProvisionerClient
    api: kube.ApiClient
    temporal: Client
    git_server: GitHttpServer

    def flux_object_exists(self, kind: str, slug: str) -> bool:
        group, version, plural = FLUX_GROUPS[kind]
        try:
            kube.CustomObjectsApi(self.api).get_namespaced_custom_object(group, version, slug, plural, slug)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def flux_object(self, kind: str, slug: str) -> dict[str, Any]:
        group, version, plural = FLUX_GROUPS[kind]
        found = kube.CustomObjectsApi(self.api).get_namespaced_custom_object(group, version, slug, plural, slug)
        assert isinstance(found, dict)
        return found

    async def unstall(self, slug: str) -> None:
        """Fix a stalled project, and wait until its Kustomization no longer reports Stalled=True.

        The simulator reconciles asynchronously: a retry sent before that would still see the stall.
        """
        self.cluster.flux.unstall(slug, slug)
        for _ in range(300):
            conditions = self.flux_object("Kustomization", slug).get("status", {}).get("conditions", [])
            if not any(c.get("type") == "Stalled" and c.get("status") == "True" for c in conditions):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{slug} still reports Stalled=True after unstall")

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
    return catalogue_with_broken_template(tmp_path_factory.mktemp("templates"))


@pytest.fixture(scope="module")
def database_url(admin_database_url: str) -> Iterator[str]:
    with temporary_postgres_database(admin_database_url) as url:
        yield url


@pytest.fixture(scope="module")
async def stack(
    local_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory, templates_dir: Path, database_url: str
) -> AsyncIterator[Stack]:
    async with running_stack(local_env.client, tmp_path_factory.mktemp("data"), templates_dir, database_url) as built:
        yield built


@asynccontextmanager
async def running_stack(
    temporal: Client,
    data_dir: Path,
    templates_dir: Path,
    database_url: str,
    *,
    worker_database_url: str | None = None,
    activity_threads: int = 4,
    in_process_worker: bool = True,
) -> AsyncIterator[Stack]:
    """Git server, sandbox cluster and worker on a fresh task queue. The worker reaches the database through
    `worker_database_url` when given (e.g. a fault-injecting proxy); `database_url` is migrated directly.
    Without `in_process_worker`, the caller runs the workers (e.g. as processes, configured from `settings`)."""
    token = Secret(uuid.uuid4().hex)
    with (
        GitHttpServer(data_dir / "git", token=token) as git_server,
        SandboxCluster(flux=FluxSimulatorConfig(source_retry_interval=0.2)) as cluster,
    ):
        settings = Settings(
            data_dir=data_dir,
            database_url=Secret(worker_database_url or database_url),
            templates_dir=templates_dir,
            task_queue=f"e2e-{uuid.uuid4().hex[:8]}",
            git_base_url=git_server.base_url,
            git_token=token,
            kubeconfig=str(cluster.write_kubeconfig(data_dir / "kubeconfig")),
            activity_threads=activity_threads,
        )
        migrate(database_url)
        # Checked before starting, as the API and the CLI check: the templates and the records (read directly).
        provisioner = ProvisionerClient(temporal, settings.task_queue, ProjectCatalog(templates_dir, database_url))
        built = Stack(settings, cluster, provisioner, cluster.api_client(), temporal, git_server)
        if not in_process_worker:
            yield built
            return
        with ThreadPoolExecutor(max_workers=settings.activity_threads) as executor:
            async with build_worker(temporal, settings, executor):
                yield built


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
