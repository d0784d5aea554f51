"""The Flux activities against the sandbox API server, through the real kubernetes client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube

from activities.flux import FluxActivities
from kubesim.cluster import FluxSimulatorConfig, SandboxCluster
from provisioner.contracts import (
    FluxApplyRequest,
    ObjectReadiness,
    ProjectSpec,
    ReadinessReport,
    ReadinessRequest,
    ReadinessState,
    RepositoryInfo,
)
from provisioner.gitserver import GitHttpServer
from provisioner.settings import Settings
from tests.git.conftest import git, init_bare


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    # The simulator is off: these tests look at what the activities write, not at Flux's answers.
    with SandboxCluster(flux=FluxSimulatorConfig(enabled=False)) as sandbox:
        yield sandbox


@pytest.fixture
def flux(cluster: SandboxCluster, tmp_path: Path) -> FluxActivities:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    return FluxActivities(Settings(kubeconfig=str(kubeconfig), field_manager="provisioner"))


def request_for(slug: str, commit: str = "a" * 40, url: str = "", token: str = "") -> FluxApplyRequest:
    """The apply of `commit`; its requestedAt token is `token`, by default the commit sha."""
    spec = ProjectSpec(slug=slug, display_name="Shop", template="web-service", parameters={"owner": "x"})
    repository = RepositoryInfo(slug, url or f"http://127.0.0.1:1/{slug}.git", "main", True)
    return FluxApplyRequest(spec, repository, commit, "k8s/overlays/development", token or commit)


def readiness_for(slug: str, commit: str = "a" * 40, token: str = "") -> ReadinessRequest:
    """What the workflow waits for after `request_for(slug, commit, token=token)`: the commit's revision on `main`,
    and the Kustomization having handled the apply's token."""
    return ReadinessRequest(namespace=slug, name=slug, revision=f"main@sha1:{commit}", requested_at=token or commit)


def test_apply_creates_the_three_objects_by_server_side_apply(flux: FluxActivities, cluster: SandboxCluster) -> None:
    result = flux.apply_flux_resources(request_for("shop"))
    assert [(o.kind, o.name) for o in result.objects] == [
        ("Namespace", "shop"),
        ("GitRepository", "shop"),
        ("Kustomization", "shop"),
    ]
    api = cluster.api_client()
    custom = kube.CustomObjectsApi(api)
    kustomization = custom.get_namespaced_custom_object(
        "kustomize.toolkit.fluxcd.io", "v1", "shop", "kustomizations", "shop"
    )
    assert isinstance(kustomization, dict)
    metadata = kustomization["metadata"]
    assert metadata["resourceVersion"] == result.objects[2].resource_version
    assert metadata["labels"] == {"app.kubernetes.io/managed-by": "provisioner", "provisioner.dev/project": "shop"}
    assert metadata["annotations"]["reconcile.fluxcd.io/requestedAt"] == "a" * 40
    assert [(f["manager"], f["operation"]) for f in metadata["managedFields"]] == [("provisioner", "Apply")]
    assert kustomization["spec"]["sourceRef"] == {"kind": "GitRepository", "name": "shop"}
    assert kustomization["spec"]["prune"] is True
    namespace = kube.CoreV1Api(api).read_namespace("shop")
    assert namespace.metadata is not None and namespace.metadata.labels is not None
    assert namespace.metadata.labels["app.kubernetes.io/managed-by"] == "provisioner"


def test_applying_again_changes_nothing(flux: FluxActivities) -> None:
    first = flux.apply_flux_resources(request_for("shop"))
    second = flux.apply_flux_resources(request_for("shop"))
    assert [o.resource_version for o in second.objects] == [o.resource_version for o in first.objects]


def test_a_new_commit_requests_a_reconcile_without_a_new_generation(flux: FluxActivities) -> None:
    first = flux.apply_flux_resources(request_for("shop"))
    second = flux.apply_flux_resources(request_for("shop", commit="b" * 40))
    source_before, source_after = first.objects[1], second.objects[1]
    assert source_after.resource_version != source_before.resource_version
    assert source_after.generation == source_before.generation == 1


def test_readiness_of_missing_objects_is_in_progress(flux: FluxActivities) -> None:
    report = flux.check_flux_readiness(readiness_for("nowhere"))
    assert (report.state, report.reason, report.message) == (
        ReadinessState.IN_PROGRESS,
        "NotFound",
        "GitRepository/nowhere: GitRepository not found",
    )
    assert (report.revision, report.expected_revision) == ("", f"main@sha1:{'a' * 40}")
    assert report.objects == [
        ObjectReadiness("GitRepository", "nowhere", ReadinessState.IN_PROGRESS, "NotFound", "GitRepository not found"),
        ObjectReadiness("Kustomization", "nowhere", ReadinessState.IN_PROGRESS, "NotFound", "Kustomization not found"),
    ]


def test_readiness_that_cannot_read_an_object_says_which(flux: FluxActivities, cluster: SandboxCluster) -> None:
    # Every request answers 500 (after the client's own retries): a retryable error naming the object and the answer.
    cluster.faults.configure(error_rate=1.0)
    with pytest.raises(RuntimeError) as raised:
        flux.check_flux_readiness(readiness_for("shop"))
    assert str(raised.value) == (
        "could not read GitRepository shop/shop: 500 InternalError: "
        "Internal error occurred: injected fault (sandbox fault injection)"
    )


def test_readiness_before_any_reconcile_is_pending(flux: FluxActivities) -> None:
    flux.apply_flux_resources(request_for("shop"))
    report = flux.check_flux_readiness(readiness_for("shop"))
    assert report.state is ReadinessState.IN_PROGRESS
    assert report.reason == "Pending"
    assert (report.revision, report.expected_revision) == ("", f"main@sha1:{'a' * 40}")


def write_status(cluster: SandboxCluster, plural: str, status: dict[str, Any]) -> None:
    """Write `status` on shop/shop through the status subresource, as the Flux controllers do."""
    group = {"gitrepositories": "source.toolkit.fluxcd.io", "kustomizations": "kustomize.toolkit.fluxcd.io"}[plural]
    custom = kube.CustomObjectsApi(cluster.api_client())
    obj = custom.get_namespaced_custom_object(group, "v1", "shop", plural, "shop")
    assert isinstance(obj, dict)
    obj["status"] = status
    custom.replace_namespaced_custom_object_status(group, "v1", "shop", plural, "shop", obj)


def ready_condition(reason: str, message: str) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True",
        "observedGeneration": 1,
        "lastTransitionTime": "2026-03-02T10:00:00Z",
        "reason": reason,
        "message": message,
    }


def test_readiness_reads_the_revisions_from_the_cluster(flux: FluxActivities, cluster: SandboxCluster) -> None:
    """Both objects Ready=True at their generation throughout: READY only once the Kustomization applied the
    requested revision and handled the requested token; the report carries what was applied and what is expected."""
    old, new, token = "1" * 40, "2" * 40, "provisioning-2"
    flux.apply_flux_resources(request_for("shop", commit=new, token=token))
    message = f"stored artifact for revision 'main@sha1:{new}'"
    write_status(
        cluster,
        "gitrepositories",
        {
            "observedGeneration": 1,
            "conditions": [ready_condition("Succeeded", message)],
            "artifact": {"revision": f"main@sha1:{new}", "digest": "sha256:" + "ab" * 32, "path": "x", "url": "x"},
            "lastHandledReconcileAt": token,
        },
    )
    kustomization_status: dict[str, Any] = {
        "observedGeneration": 1,
        "conditions": [ready_condition("ReconciliationSucceeded", f"Applied revision: main@sha1:{old}")],
        "lastAppliedRevision": f"main@sha1:{old}",
        "lastAttemptedRevision": f"main@sha1:{old}",
        "lastHandledReconcileAt": token,
    }
    write_status(cluster, "kustomizations", kustomization_status)
    report = flux.check_flux_readiness(readiness_for("shop", new, token))
    assert (report.state, report.reason) == (ReadinessState.IN_PROGRESS, "RevisionNotApplied")
    assert report.message == f"Kustomization/shop: applied main@sha1:{old}; waiting for main@sha1:{new}"
    assert (report.revision, report.expected_revision) == (f"main@sha1:{old}", f"main@sha1:{new}")

    kustomization_status |= {
        "conditions": [ready_condition("ReconciliationSucceeded", f"Applied revision: main@sha1:{new}")],
        "lastAppliedRevision": f"main@sha1:{new}",
        "lastAttemptedRevision": f"main@sha1:{new}",
        "lastHandledReconcileAt": "provisioning-1",
    }
    write_status(cluster, "kustomizations", kustomization_status)
    report = flux.check_flux_readiness(readiness_for("shop", new, token))
    assert (report.state, report.reason) == (ReadinessState.IN_PROGRESS, "ReconcileRequestNotHandled")

    kustomization_status["lastHandledReconcileAt"] = token
    write_status(cluster, "kustomizations", kustomization_status)
    report = flux.check_flux_readiness(readiness_for("shop", new, token))
    assert report.state is ReadinessState.READY
    assert (report.reason, report.message) == ("ReconciliationSucceeded", f"Applied revision: main@sha1:{new}")
    assert (report.revision, report.expected_revision) == (f"main@sha1:{new}", f"main@sha1:{new}")


def commit_and_push(work: Path, bare: Path, replicas: int) -> str:
    """Commit a one-Deployment overlay at k8s/overlays/development and push it to `main`; the commit's sha."""
    overlay = work / "k8s" / "overlays" / "development"
    overlay.mkdir(parents=True, exist_ok=True)
    (overlay / "kustomization.yaml").write_text("resources:\n  - deployment.yaml\n")
    (overlay / "deployment.yaml").write_text(
        f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n"
    )
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", f"replicas {replicas}", cwd=work)
    git("push", "-q", str(bare), "main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work).stdout.strip()


def wait_until_ready(flux: FluxActivities, request: ReadinessRequest) -> list[ReadinessReport]:
    """Every report until READY (15 s at most)."""
    reports: list[ReadinessReport] = []
    deadline = time.monotonic() + 15
    while not reports or reports[-1].state is not ReadinessState.READY:
        assert time.monotonic() < deadline, reports[-1]
        reports.append(flux.check_flux_readiness(request))
        assert reports[-1].state is not ReadinessState.FAILED, reports[-1]
        time.sleep(0.05)
    return reports


def test_a_new_commit_is_ready_only_once_flux_applied_it(tmp_path: Path) -> None:
    """Against the flux simulator and a real Git server: after a second push the objects are still Ready=True for the
    first commit, which is not Ready for the second; after the apply, READY names exactly the second commit."""
    repos, work = tmp_path / "repos", tmp_path / "work"
    repos.mkdir()
    bare = init_bare(repos / "shop.git")
    git("init", "-q", "-b", "main", str(work))
    first = commit_and_push(work, bare, replicas=1)
    with GitHttpServer(repos) as server, SandboxCluster(flux=FluxSimulatorConfig(source_retry_interval=0.2)) as cluster:
        flux = FluxActivities(Settings(kubeconfig=str(cluster.write_kubeconfig(tmp_path / "kubeconfig"))))
        url = f"{server.base_url}/shop.git"
        flux.apply_flux_resources(request_for("shop", commit=first, url=url, token="create"))
        ready = wait_until_ready(flux, readiness_for("shop", first, "create"))[-1]
        assert (ready.revision, ready.expected_revision) == (f"main@sha1:{first}", f"main@sha1:{first}")

        second = commit_and_push(work, bare, replicas=2)
        # Pushed, not applied yet: the source's next interval is a minute away, so Flux still holds the first commit.
        report = flux.check_flux_readiness(readiness_for("shop", second, "update"))
        assert (report.state, report.reason) == (ReadinessState.IN_PROGRESS, "ArtifactOutdated")
        assert report.message == (
            f"GitRepository/shop: artifact main@sha1:{first} is stored; waiting for main@sha1:{second}"
        )
        assert (report.revision, report.expected_revision) == (f"main@sha1:{first}", f"main@sha1:{second}")

        flux.apply_flux_resources(request_for("shop", commit=second, url=url, token="update"))
        reports = wait_until_ready(flux, readiness_for("shop", second, "update"))
    assert (reports[-1].revision, reports[-1].expected_revision) == (f"main@sha1:{second}", f"main@sha1:{second}")
    assert reports[-1].message == f"Applied revision: main@sha1:{second}"


def test_apply_refuses_to_take_over_a_namespace_it_did_not_create(
    flux: FluxActivities, cluster: SandboxCluster
) -> None:
    from temporalio.exceptions import ApplicationError

    from provisioner.contracts import ErrorType

    kube.CoreV1Api(cluster.api_client()).create_namespace(kube.V1Namespace(metadata=kube.V1ObjectMeta(name="payments")))
    with pytest.raises(ApplicationError) as raised:
        flux.apply_flux_resources(request_for("payments"))
    assert raised.value.type == ErrorType.RESOURCE_NOT_MANAGED.value and raised.value.non_retryable
    assert "is not managed by provisioner" in raised.value.message
    namespace = kube.CoreV1Api(cluster.api_client()).read_namespace("payments")
    assert namespace.metadata is not None and not (namespace.metadata.labels or {}).get("provisioner.dev/project")
