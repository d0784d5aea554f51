"""The Flux activities against the sandbox API server, through the real kubernetes client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as kube

from activities.flux import FluxActivities
from provisioner.contracts import FluxApplyRequest, ProjectSpec, ReadinessRequest, ReadinessState, RepositoryInfo
from provisioner.sandbox.cluster import FluxSimulatorConfig, SandboxCluster
from provisioner.settings import Settings


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    # The simulator is off: these tests look at what the activities write, not at Flux's answers.
    with SandboxCluster(flux=FluxSimulatorConfig(enabled=False)) as sandbox:
        yield sandbox


@pytest.fixture
def flux(cluster: SandboxCluster, tmp_path: Path) -> FluxActivities:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    return FluxActivities(Settings(kubeconfig=str(kubeconfig), field_manager="provisioner"))


def request_for(slug: str, commit: str = "a" * 40) -> FluxApplyRequest:
    spec = ProjectSpec(slug=slug, display_name="Shop", template="web-service", parameters={"owner": "x"})
    repository = RepositoryInfo(slug, f"http://127.0.0.1:1/{slug}.git", "main", True)
    return FluxApplyRequest(spec, repository, commit, "k8s/overlays/development")


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
    report = flux.check_flux_readiness(ReadinessRequest(namespace="nowhere", name="nowhere"))
    assert report.state is ReadinessState.IN_PROGRESS
    assert report.reason == "NotFound"


def test_readiness_before_any_reconcile_is_pending(flux: FluxActivities) -> None:
    flux.apply_flux_resources(request_for("shop"))
    report = flux.check_flux_readiness(ReadinessRequest(namespace="shop", name="shop"))
    assert report.state is ReadinessState.IN_PROGRESS
    assert report.reason == "Pending"


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
