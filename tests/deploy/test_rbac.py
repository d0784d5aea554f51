"""The worker's ClusterRole against the Kubernetes calls the code really makes.

Every Flux activity runs against the sandbox API server through the real kubernetes client, for objects that exist
and objects that do not; each HTTP request is recorded where the client sends it (`ApiClient.call_api`) and mapped
to the (apiGroup, resource, verb) that kube-apiserver authorises. The ClusterRole in deploy/kubernetes/rbac.yaml must
grant each of them, and nothing beyond them.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from activities.flux import FluxActivities
from kubesim.cluster import FluxSimulatorConfig, SandboxCluster
from provisioner.contracts import FluxApplyRequest, FluxDeletionRequest, ProjectSpec, ReadinessRequest, RepositoryInfo
from provisioner.settings import Secret, Settings
from tests.deploy.artefacts import KUBERNETES_DIR, REPO_ROOT, load_yaml_documents

APPLY_PATCH = "application/apply-patch+yaml"


@dataclass(frozen=True, order=True)
class Permission:
    group: str
    resource: str
    verb: str


# Granted without the code using it today, each with its reason (also written in rbac.yaml). Empty: none.
DOCUMENTED_EXTRAS: frozenset[Permission] = frozenset()


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    content_type: str


def permissions_for(request: Request) -> set[Permission]:
    """What kube-apiserver's authoriser checks for one request (RequestInfo: resource, subresource, verb)."""
    parts = urlsplit(request.url)
    segments = [segment for segment in parts.path.split("/") if segment]
    if segments[:2] == ["api", "v1"]:
        group, rest = "", segments[2:]
    elif segments[:1] == ["apis"] and len(segments) >= 3:
        group, rest = segments[1], segments[3:]
    else:
        raise AssertionError(f"not a resource request: {request.method} {request.url}")
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        rest = rest[2:]  # namespaced: drop "namespaces/<ns>"
    resource, name, subresource = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
    if subresource:
        resource = f"{resource}/{subresource}"
    watching = parse_qs(parts.query).get("watch", ["false"])[-1] in ("true", "1")
    verbs = {
        ("GET", True): "get",
        ("GET", False): "watch" if watching else "list",
        ("POST", False): "create",
        ("PUT", True): "update",
        ("PATCH", True): "patch",
        ("DELETE", True): "delete",
        ("DELETE", False): "deletecollection",
    }
    verb = verbs[(request.method, name is not None)]
    found = {Permission(group, resource, verb)}
    if request.method == "PATCH" and request.content_type == APPLY_PATCH:
        # A server-side apply of an absent object creates it, and is authorised as `create` too.
        found.add(Permission(group, resource, "create"))
    return found


def test_the_mapping_follows_the_apiserver() -> None:
    apply = Request("PATCH", "https://k/apis/source.toolkit.fluxcd.io/v1/namespaces/a/gitrepositories/a", APPLY_PATCH)
    assert permissions_for(apply) == {
        Permission("source.toolkit.fluxcd.io", "gitrepositories", "patch"),
        Permission("source.toolkit.fluxcd.io", "gitrepositories", "create"),
    }
    assert permissions_for(Request("GET", "https://k/api/v1/namespaces/a", "")) == {Permission("", "namespaces", "get")}
    assert permissions_for(Request("GET", "https://k/api/v1/namespaces/a/configmaps?watch=true", "")) == {
        Permission("", "configmaps", "watch")
    }
    assert permissions_for(Request("PUT", "https://k/api/v1/namespaces/a/finalize", "")) == {
        Permission("", "namespaces/finalize", "update")
    }


def granted_by_cluster_role() -> set[Permission]:
    documents = load_yaml_documents((KUBERNETES_DIR / "rbac.yaml").read_text(encoding="utf-8"))
    [role] = [d for d in documents if d["kind"] == "ClusterRole"]
    granted = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for value in (*rule["apiGroups"], *rule["resources"], *rule["verbs"]):
            assert value != "*", f"wildcard in {rule}"
        granted |= {
            Permission(group, resource, verb)
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
    return granted


def record_requests(api_client: Any) -> list[Request]:
    """Every request the client sends from now on (wraps the client's single exit point, `call_api`)."""
    recorded: list[Request] = []
    send: Callable[..., Any] = api_client.call_api

    def call_api(method: str, url: str, header_params: dict[str, str] | None = None, *args: Any, **kw: Any) -> Any:
        recorded.append(Request(method, url, (header_params or {}).get("Content-Type", "")))
        return send(method, url, header_params, *args, **kw)

    api_client.call_api = call_api
    return recorded


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    # Flux off, so deletion is not held by Flux's finalizers; the namespace controller still terminates namespaces.
    with SandboxCluster(flux=FluxSimulatorConfig(enabled=False)) as sandbox:
        yield sandbox


def exercise_every_flux_activity(flux: FluxActivities) -> set[str]:
    """Runs each activity on absent objects, on fresh ones and on existing ones; returns the activity names run."""
    spec = ProjectSpec(slug="shop", display_name="Shop", template="web-service", parameters={"owner": "x"})
    # Private, so the apply writes the credentials Secret as well.
    repository = RepositoryInfo("shop", "http://127.0.0.1:1/shop.git", "main", True, requires_credentials=True)
    apply = FluxApplyRequest(spec, repository, "a" * 40, "k8s/overlays/development", "token-1")
    readiness = ReadinessRequest("shop", "shop", revision=f"main@sha1:{'a' * 40}", requested_at="token-1")
    deletion = FluxDeletionRequest(namespace="shop", name="shop", project="shop")

    flux.check_flux_readiness(readiness)
    flux.check_flux_deletion(deletion)
    flux.delete_flux_resources(deletion)
    flux.apply_flux_resources(apply)  # creates
    updated = FluxApplyRequest(spec, repository, "b" * 40, "k8s/overlays/development", "token-2")
    flux.apply_flux_resources(updated)  # updates
    flux.check_flux_readiness(readiness)
    flux.delete_flux_resources(deletion)
    deadline = time.monotonic() + 10
    while flux.check_flux_deletion(deletion).remaining:
        assert time.monotonic() < deadline, "the sandbox did not finish deleting the project"
        time.sleep(0.05)
    return {"check_flux_readiness", "check_flux_deletion", "delete_flux_resources", "apply_flux_resources"}


def test_every_flux_activity_is_exercised() -> None:
    defined = {
        name
        for name in dir(FluxActivities)
        if getattr(getattr(FluxActivities, name), "__temporal_activity_definition", None) is not None
    }
    exercised = {"check_flux_readiness", "check_flux_deletion", "delete_flux_resources", "apply_flux_resources"}
    assert defined == exercised, "a new Kubernetes activity: exercise it in exercise_every_flux_activity"


def test_only_the_flux_activities_talk_to_kubernetes() -> None:
    """So that exercising FluxActivities covers every call the worker makes to the cluster."""
    sources = [REPO_ROOT / "worker.py", *REPO_ROOT.glob("activities/*.py"), *REPO_ROOT.glob("workflows/*.py")]
    importers = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            modules = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom)
                else []
            )  # fmt: skip
            if any(module.split(".")[0] == "kubernetes" for module in modules):
                importers.add(source.relative_to(REPO_ROOT).as_posix())
    assert importers == {"activities/flux.py"}


def test_the_cluster_role_grants_exactly_what_the_code_uses(cluster: SandboxCluster) -> None:
    api_client = cluster.api_client()
    requests = record_requests(api_client)
    settings = Settings(field_manager="provisioner", git_token=Secret("deploy-token"))
    exercise_every_flux_activity(FluxActivities(settings, api_client=api_client))

    used = set().union(*(permissions_for(request) for request in requests))
    granted = granted_by_cluster_role()
    assert sorted(used - granted) == [], "the code needs permissions the ClusterRole does not grant"
    assert sorted(granted - used - DOCUMENTED_EXTRAS) == [], "the ClusterRole grants more than the code uses"
    # The recording really saw the three kinds of object, both ways: reads and writes.
    assert {(p.resource, p.verb) for p in used} >= {
        ("namespaces", "patch"), ("namespaces", "delete"),
        ("gitrepositories", "patch"), ("gitrepositories", "get"),
        ("kustomizations", "patch"), ("kustomizations", "delete"),
        ("secrets", "patch"), ("secrets", "create"),
    }  # fmt: skip
