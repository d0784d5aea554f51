"""Deleting a project's Flux objects in the sandbox API server, through the real kubernetes client: finalizers are
honoured, the namespace terminates before it goes, absent objects are done, and only this project's objects go."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client as kube
from temporalio.exceptions import ApplicationError

from activities.flux import FluxActivities
from kubesim.cluster import FluxSimulatorConfig, SandboxCluster
from provisioner.contracts import (
    DeletionReport,
    ErrorType,
    FluxApplyRequest,
    FluxDeletionRequest,
    ProjectSpec,
    RepositoryInfo,
)
from provisioner.settings import Settings

KUSTOMIZATION = ("kustomize.toolkit.fluxcd.io", "v1", "kustomizations")
GIT_REPOSITORY = ("source.toolkit.fluxcd.io", "v1", "gitrepositories")
HOLD_FINALIZER = "example.com/hold"
ALL_THREE = ["Kustomization/shop", "GitRepository/shop", "Namespace/shop"]


def activities_for(cluster: SandboxCluster, tmp_path: Path) -> FluxActivities:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    return FluxActivities(Settings(kubeconfig=str(kubeconfig), field_manager="provisioner"))


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    # Flux off: these tests place the finalizers themselves; the namespace controller still runs.
    with SandboxCluster(flux=FluxSimulatorConfig(enabled=False)) as sandbox:
        yield sandbox


@pytest.fixture
def flux(cluster: SandboxCluster, tmp_path: Path) -> FluxActivities:
    return activities_for(cluster, tmp_path)


def apply_request(slug: str) -> FluxApplyRequest:
    spec = ProjectSpec(slug=slug, display_name="Shop", template="web-service", parameters={"owner": "x"})
    repository = RepositoryInfo(slug, f"http://127.0.0.1:1/{slug}.git", "main", True)
    return FluxApplyRequest(spec, repository, "a" * 40, "k8s/overlays/development", "token-1")


def deletion(slug: str = "shop") -> FluxDeletionRequest:
    return FluxDeletionRequest(namespace=slug, name=slug, project=slug)


def set_finalizers(cluster: SandboxCluster, kind: tuple[str, str, str], finalizers: list[str] | None) -> None:
    group, version, plural = kind
    kube.CustomObjectsApi(cluster.api_client()).patch_namespaced_custom_object(
        group, version, "shop", plural, "shop", {"metadata": {"finalizers": finalizers}}
    )


def eventually(check: Callable[[], DeletionReport], done: Callable[[DeletionReport], bool]) -> DeletionReport:
    deadline = time.monotonic() + 10
    while True:
        report = check()
        if done(report) or time.monotonic() > deadline:
            return report
        time.sleep(0.05)


def test_deletes_the_three_objects_and_the_namespace_terminates_then_goes(
    flux: FluxActivities, cluster: SandboxCluster
) -> None:
    flux.apply_flux_resources(apply_request("shop"))
    set_finalizers(cluster, KUSTOMIZATION, [HOLD_FINALIZER])

    result = flux.delete_flux_resources(deletion())
    assert result.requested == ALL_THREE and result.absent == []

    # Held by the finalizer: the Kustomization waits with a deletionTimestamp, the namespace stays Terminating.
    # (The namespace controller writes its conditions asynchronously, as kube's does.)
    report = eventually(
        lambda: flux.check_flux_deletion(deletion()),
        lambda r: len(r.remaining) == 2 and "finalizers remaining" in r.remaining[-1].detail,
    )
    held = {item.kind: item for item in report.remaining}
    assert set(held) == {"Kustomization", "Namespace"}
    assert held["Kustomization"].deletion_timestamp and held["Kustomization"].finalizers == [HOLD_FINALIZER]
    assert held["Namespace"].deletion_timestamp and held["Namespace"].finalizers == ["kubernetes"]
    assert f"{HOLD_FINALIZER} in 1 resource instances" in held["Namespace"].detail
    namespace = kube.CoreV1Api(cluster.api_client()).read_namespace("shop")
    assert namespace.status is not None and namespace.status.phase == "Terminating"
    assert "waiting on finalizers example.com/hold" in report.describe()

    # The controller owning the finalizer lets go: everything disappears.
    set_finalizers(cluster, KUSTOMIZATION, None)
    assert eventually(lambda: flux.check_flux_deletion(deletion()), lambda r: r.gone).gone
    names = [ns.metadata.name for ns in kube.CoreV1Api(cluster.api_client()).list_namespace().items if ns.metadata]
    assert "shop" not in names


def test_deleting_again_or_what_never_existed_is_done(flux: FluxActivities) -> None:
    flux.apply_flux_resources(apply_request("shop"))
    flux.delete_flux_resources(deletion())
    assert eventually(lambda: flux.check_flux_deletion(deletion()), lambda r: r.gone).gone

    again = flux.delete_flux_resources(deletion())
    assert again.requested == [] and again.absent == ALL_THREE
    never = flux.delete_flux_resources(deletion("never-there"))
    assert never.requested == [] and len(never.absent) == 3
    assert flux.check_flux_deletion(deletion("never-there")).gone


def test_a_second_delete_while_terminating_changes_nothing(flux: FluxActivities, cluster: SandboxCluster) -> None:
    flux.apply_flux_resources(apply_request("shop"))
    set_finalizers(cluster, GIT_REPOSITORY, [HOLD_FINALIZER])
    flux.delete_flux_resources(deletion())
    before = eventually(lambda: flux.check_flux_deletion(deletion()), lambda r: len(r.remaining) == 2)
    again = flux.delete_flux_resources(deletion())
    assert again.requested == ["GitRepository/shop", "Namespace/shop"]
    after = flux.check_flux_deletion(deletion())
    assert [(r.kind, r.deletion_timestamp) for r in after.remaining] == [
        (r.kind, r.deletion_timestamp) for r in before.remaining
    ]
    set_finalizers(cluster, GIT_REPOSITORY, None)
    assert eventually(lambda: flux.check_flux_deletion(deletion()), lambda r: r.gone).gone


def test_a_namespace_not_managed_by_the_project_is_never_deleted(flux: FluxActivities, cluster: SandboxCluster) -> None:
    core = kube.CoreV1Api(cluster.api_client())
    core.create_namespace(kube.V1Namespace(metadata=kube.V1ObjectMeta(name="shop")))
    with pytest.raises(ApplicationError) as raised:
        flux.delete_flux_resources(deletion())
    assert raised.value.type == ErrorType.RESOURCE_NOT_MANAGED.value and raised.value.non_retryable
    assert "is not managed by provisioner" in raised.value.message
    namespace = core.read_namespace("shop")
    assert namespace.metadata is not None and namespace.metadata.deletion_timestamp is None


def test_another_projects_objects_are_never_deleted(flux: FluxActivities) -> None:
    flux.apply_flux_resources(apply_request("shop"))
    with pytest.raises(ApplicationError) as raised:
        flux.delete_flux_resources(FluxDeletionRequest(namespace="shop", name="shop", project="other"))
    assert "belongs to project 'shop'" in raised.value.message
    remaining = flux.check_flux_deletion(deletion()).remaining
    assert [(r.kind, r.deletion_timestamp) for r in remaining] == [
        ("Kustomization", None),
        ("GitRepository", None),
        ("Namespace", None),
    ]
    assert "not being deleted" in flux.check_flux_deletion(deletion()).describe()


def test_the_flux_simulator_releases_its_finalizers_on_deletion(tmp_path: Path) -> None:
    with SandboxCluster(flux=FluxSimulatorConfig(source_retry_interval=0.1)) as cluster:
        flux = activities_for(cluster, tmp_path)
        flux.apply_flux_resources(apply_request("shop"))
        custom = kube.CustomObjectsApi(cluster.api_client())

        def flux_finalizers() -> list[list[str]]:
            kinds = (KUSTOMIZATION, GIT_REPOSITORY)
            found = [custom.get_namespaced_custom_object(g, v, "shop", p, "shop") for g, v, p in kinds]
            return [obj["metadata"].get("finalizers") or [] for obj in found if isinstance(obj, dict)]

        deadline = time.monotonic() + 10
        while flux_finalizers() != [["finalizers.fluxcd.io"]] * 2:
            assert time.monotonic() < deadline, flux_finalizers()
            time.sleep(0.05)

        assert flux.delete_flux_resources(deletion()).requested == ALL_THREE
        assert eventually(lambda: flux.check_flux_deletion(deletion()), lambda r: r.gone).gone
