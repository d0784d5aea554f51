"""Fixtures for the sandbox tests: a sandbox cluster, real kubernetes clients, and a git smart-HTTP server."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from dulwich.server import FileSystemBackend
from dulwich.web import make_wsgi_chain
from kubernetes import client

from kubesim import FluxSimulatorConfig, SandboxCluster

T = TypeVar("T")

FLUX_SOURCE: tuple[str, str, str] = ("source.toolkit.fluxcd.io", "v1", "gitrepositories")
FLUX_KUSTOMIZE: tuple[str, str, str] = ("kustomize.toolkit.fluxcd.io", "v1", "kustomizations")


def wait_for(probe: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


GroupVersionPlural = tuple[str, str, str]


def as_object(value: object) -> dict[str, Any]:
    """The custom objects API returns untyped JSON objects; the tests read them as dicts."""
    assert isinstance(value, dict), value
    return value


@dataclass
class Kube:
    """The official client against one sandbox cluster, with typed shortcuts for the tests."""

    cluster: SandboxCluster
    api: client.ApiClient
    core: client.CoreV1Api
    custom: client.CustomObjectsApi

    @classmethod
    def connect(cls, cluster: SandboxCluster) -> Kube:
        api = cluster.api_client()
        return cls(cluster, api, client.CoreV1Api(api), client.CustomObjectsApi(api))

    def as_dict(self, model: object) -> dict[str, Any]:
        """A typed client model as the JSON the server sent (camelCase keys)."""
        sanitize: Callable[[object], object] = self.api.sanitize_for_serialization
        return as_object(sanitize(model))

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        namespace = client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
        return self.as_dict(self.core.create_namespace(namespace))

    def read_namespace(self, name: str) -> dict[str, Any]:
        return self.as_dict(self.core.read_namespace(name))

    def create(self, gvp: GroupVersionPlural, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        group, version, plural = gvp
        return as_object(self.custom.create_namespaced_custom_object(group, version, namespace, plural, body))

    def get(self, gvp: GroupVersionPlural, namespace: str, name: str) -> dict[str, Any]:
        group, version, plural = gvp
        return as_object(self.custom.get_namespaced_custom_object(group, version, namespace, plural, name))

    def list(self, gvp: GroupVersionPlural, namespace: str) -> dict[str, Any]:
        group, version, plural = gvp
        return as_object(self.custom.list_namespaced_custom_object(group, version, namespace, plural))

    def patch(self, gvp: GroupVersionPlural, namespace: str, name: str, body: Any, **options: Any) -> object:
        """PATCH (merge patch unless `_content_type` says otherwise); None when the server answered 201."""
        group, version, plural = gvp
        return self.custom.patch_namespaced_custom_object(group, version, namespace, plural, name, body, **options)

    def replace(self, gvp: GroupVersionPlural, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        group, version, plural = gvp
        return as_object(self.custom.replace_namespaced_custom_object(group, version, namespace, plural, name, body))

    def replace_status(self, gvp: GroupVersionPlural, namespace: str, name: str,
                       body: dict[str, Any]) -> dict[str, Any]:
        group, version, plural = gvp
        return as_object(
            self.custom.replace_namespaced_custom_object_status(group, version, namespace, plural, name, body)
        )

    def delete(self, gvp: GroupVersionPlural, namespace: str, name: str, **options: Any) -> dict[str, Any]:
        group, version, plural = gvp
        return as_object(
            self.custom.delete_namespaced_custom_object(group, version, namespace, plural, name, **options)
        )


@pytest.fixture
def kube() -> Iterator[Kube]:
    """A fresh sandbox cluster whose flux simulator retries quickly."""
    with SandboxCluster(flux=FluxSimulatorConfig(source_retry_interval=0.2)) as cluster:
        yield Kube.connect(cluster)


class _RepositoryRoot(FileSystemBackend):
    """dulwich's FileSystemBackend, for URL paths (which start with "/") relative to the root."""

    def open_repository(self, path: str | bytes) -> Any:
        text = path.decode() if isinstance(path, bytes) else path
        return super().open_repository(text.lstrip("/"))


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class GitServer:
    """Bare repositories under `root`, served over git's smart HTTP protocol by dulwich."""

    root: Path
    base_url: str

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}.git"

    def commit(self, name: str, files: dict[str, str], branch: str = "main", message: str = "update") -> str:
        """Commit exactly `files` as the tree of `branch` in repository `name` (created when missing); the sha."""
        bare = self.root / f"{name}.git"
        if not bare.exists():
            _git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(bare))
        work = self.root / f".work-{name}-{time.monotonic_ns()}"
        _git("init", "--quiet", f"--initial-branch={branch}", str(work))
        for path, content in files.items():
            target = work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        _git("-C", str(work), "add", "-A")
        _git("-C", str(work), "-c", "user.name=test", "-c", "user.email=test@example.com",
             "commit", "--quiet", "-m", message)
        _git("-C", str(work), "push", "--quiet", "--force", str(bare), f"HEAD:refs/heads/{branch}")
        return _git("-C", str(work), "rev-parse", "HEAD").strip()


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="session")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    root = tmp_path_factory.mktemp("git-repos")
    app = make_wsgi_chain(_RepositoryRoot(str(root)))
    server = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield GitServer(root, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
