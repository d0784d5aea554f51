"""kustomize-controller in the flux simulator: the real kustomize builds, server-side apply into the cluster, the
inventory, prune, and `spec.wait` health checks, observed through the official kubernetes client (and kubectl)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubesim import FluxSimulatorConfig, SandboxCluster
from provisioner.binaries import bundled_binary
from provisioner.contracts import ProjectSpec
from provisioner.settings import PROJECT_ROOT
from provisioner.templating import render_project
from tests.sandbox.conftest import FLUX_KUSTOMIZE, FLUX_SOURCE, GitServer, Kube, wait_for
from tests.sandbox.test_flux_simulator import condition, provision, wait_ready

# What kube would accept (the typed client reads selector and template back as required).
WEB = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - {name: web, image: "nginx:1.27"}
"""
CONFIG_MAP = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  level: info\n"
OWNER_LABELS = ("kustomize.toolkit.fluxcd.io/name", "kustomize.toolkit.fluxcd.io/namespace")


def web_service(slug: str) -> tuple[dict[str, str], str]:
    """The shipped web-service template rendered for project `slug` (files, kustomize path)."""
    spec = ProjectSpec(slug=slug, display_name="Shop", template="web-service", parameters={"owner": "payments"})
    tree = render_project(spec, PROJECT_ROOT / "templates")
    return {path: content.decode() for path, content in tree.files.items()}, f"./{tree.kustomize_path}"


def not_found(read: Any, *args: Any) -> bool:
    try:
        read(*args)
    except ApiException as error:
        return bool(error.status == 404)
    return False


def deployment_of(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return kube.as_dict(client.AppsV1Api(kube.api).read_namespaced_deployment(name, namespace))


def available(deployment: dict[str, Any]) -> bool:
    conditions = (deployment.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)


def test_the_web_service_template_is_ready_only_once_its_deployment_is_available(git_server: GitServer) -> None:
    files, path = web_service("webready")
    revision = f"main@sha1:{git_server.commit('webready', files)}"
    with SandboxCluster(flux=FluxSimulatorConfig(source_retry_interval=0.2, workload_ready_delay=1.0)) as cluster:
        kube = Kube.connect(cluster)
        provision(kube, "webready", git_server.url("webready"), path=path, wait=True, timeout="2m")

        def checking() -> dict[str, Any] | None:
            ks = kube.get(FLUX_KUSTOMIZE, "webready", "webready")
            reconciling = condition(ks, "Reconciling")
            return ks if reconciling and reconciling["message"].startswith("Running health checks") else None

        ks = wait_for(checking, what="the health checks to run")
        assert condition(ks, "Reconciling")["message"] == (  # type: ignore[index]
            f"Running health checks for revision {revision} with a timeout of 2m0s")
        ready, healthy = condition(ks, "Ready"), condition(ks, "Healthy")
        assert ready is not None and (ready["status"], ready["reason"]) == ("Unknown", "Progressing")
        assert healthy is not None and (healthy["status"], healthy["reason"]) == ("Unknown", "Progressing")
        assert "lastAppliedRevision" not in ks["status"]
        assert not available(deployment_of(kube, "webready", "webready"))  # still rolling out

        ks = wait_ready(kube, FLUX_KUSTOMIZE, "webready", "webready")
        deployment = deployment_of(kube, "webready", "webready")
        assert available(deployment) and deployment["status"]["availableReplicas"] == 1
        assert deployment["status"]["observedGeneration"] == deployment["metadata"]["generation"] == 1
        # One cluster-wide resourceVersion counter: the Deployment became available before the Kustomization Ready.
        assert int(deployment["metadata"]["resourceVersion"]) < int(ks["metadata"]["resourceVersion"])
        assert condition(ks, "Ready")["message"] == f"Applied revision: {revision}"  # type: ignore[index]
        healthy = condition(ks, "Healthy")
        assert healthy is not None and healthy["status"] == "True"
        assert re.fullmatch(r"Health check passed in [0-9.]+m?s", healthy["message"])

        service = kube.as_dict(client.CoreV1Api(kube.api).read_namespaced_service("webready", "webready"))
        for obj in (deployment, service):
            metadata = obj["metadata"]
            assert metadata["namespace"] == "webready"  # the Kustomization's targetNamespace
            appliers = [(f["manager"], f["operation"]) for f in metadata["managedFields"] if f["operation"] == "Apply"]
            assert appliers == [("kustomize-controller", "Apply")]
            assert [metadata["labels"][label] for label in OWNER_LABELS] == ["webready", "webready"]
        assert service["spec"]["clusterIP"]  # allocated by the API server
        assert ks["status"]["inventory"] == {"entries": [
            {"id": "webready_webready__Service", "v": "v1"},
            {"id": "webready_webready_apps_Deployment", "v": "v1"},
        ]}


def test_kubectl_lists_what_flux_applied(git_server: GitServer, tmp_path: Path) -> None:
    files, path = web_service("webctl")
    git_server.commit("webctl", files)
    with SandboxCluster(flux=FluxSimulatorConfig(source_retry_interval=0.2)) as cluster:
        kube = Kube.connect(cluster)
        provision(kube, "webctl", git_server.url("webctl"), path=path, wait=True)
        wait_ready(kube, FLUX_KUSTOMIZE, "webctl", "webctl")
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")

        def kubectl(*args: str) -> str:
            done = subprocess.run([bundled_binary("kubectl"), "--kubeconfig", str(kubeconfig), *args],
                                  capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr
            return done.stdout

        assert kubectl("get", "deployment", "-n", "webctl", "-o", "name").split() == ["deployment.apps/webctl"]
        listed = json.loads(kubectl("get", "deployments", "-n", "webctl", "-o", "json"))
        assert [(d["metadata"]["name"], d["status"]["availableReplicas"]) for d in listed["items"]] == [("webctl", 1)]
        assert kubectl("get", "services", "-n", "webctl", "-o", "name").split() == ["service/webctl"]


def test_a_kustomize_error_is_build_failed_in_kustomizes_words(kube: Kube, git_server: GitServer) -> None:
    """A JSON patch on a path the Deployment lacks: only the real kustomize finds it."""
    overlay = ("resources:\n  - deployment.yaml\npatches:\n  - target: {kind: Deployment, name: web}\n    patch: |-\n"
               "      - op: replace\n        path: /spec/template/spec/containers/0/image\n        value: nginx\n")
    without_containers = WEB.partition("  template:")[0]
    sha = git_server.commit("badpatch", {"app/kustomization.yaml": overlay, "app/deployment.yaml": without_containers})
    provision(kube, "badpatch", git_server.url("badpatch"), path="./app")

    ks = wait_ready(kube, FLUX_KUSTOMIZE, "badpatch", "badpatch", status="False", reason="BuildFailed")
    assert condition(ks, "Ready")["message"] == (  # type: ignore[index]
        "kustomize build failed: replace operation does not apply: doc is missing path: "
        "/spec/template/spec/containers/0/image: missing value")
    assert ks["status"]["lastAttemptedRevision"] == f"main@sha1:{sha}"
    assert "inventory" not in ks["status"]
    assert not_found(client.AppsV1Api(kube.api).read_namespaced_deployment, "web", "badpatch")


def test_a_namespaced_object_without_a_namespace_fails_the_apply(kube: Kube, git_server: GitServer) -> None:
    git_server.commit("nons", {"app/deployment.yaml": WEB})
    provision(kube, "nons", git_server.url("nons"), path="./app")
    # No targetNamespace (and none in the manifest): kustomize-controller cannot place the Deployment.
    kube.patch(FLUX_KUSTOMIZE, "nons", "nons", [{"op": "remove", "path": "/spec/targetNamespace"}],
               _content_type="application/json-patch+json")

    ks = wait_ready(kube, FLUX_KUSTOMIZE, "nons", "nons", status="False", reason="ReconciliationFailed")
    # ssa errors.go DryRunErr, then apply()'s "%w\n%s" with an empty change log.
    assert condition(ks, "Ready")["message"] == (  # type: ignore[index]
        "Deployment/web namespace not specified: the server could not find the requested resource\n")


def test_a_failing_workload_is_health_check_failed_and_never_ready(git_server: GitServer) -> None:
    files, path = web_service("websick")
    git_server.commit("websick", files)
    config = FluxSimulatorConfig(source_retry_interval=0.2, health_timeout_cap=1.0)
    with SandboxCluster(flux=config) as cluster:
        kube = Kube.connect(cluster)
        cluster.flux.fail_workload("websick", "websick")
        provision(kube, "websick", git_server.url("websick"), path=path, wait=True, retryInterval="1s")
        seen: set[str] = set()

        def failed() -> dict[str, Any] | None:
            ks = kube.get(FLUX_KUSTOMIZE, "websick", "websick")
            ready = condition(ks, "Ready")
            seen.add(ready["status"] if ready else "")
            return ks if ready and ready["reason"] == "HealthCheckFailed" else None

        ks = wait_for(failed, what="HealthCheckFailed")
        waited_for = "timeout waiting for: [Deployment/websick/websick status: 'InProgress']"
        ready, healthy = condition(ks, "Ready"), condition(ks, "Healthy")
        assert ready is not None and ready["status"] == "False"
        match = re.fullmatch(r"health check failed after ([0-9.]+)s: (.*)", ready["message"])
        assert match is not None and float(match.group(1)) >= 1.0 and match.group(2) == waited_for
        assert healthy is not None and (healthy["status"], healthy["reason"], healthy["message"]) == (
            "False", "HealthCheckFailed", waited_for)
        assert "lastAppliedRevision" not in ks["status"] and "True" not in seen
        deployment = deployment_of(kube, "websick", "websick")
        assert not available(deployment) and deployment["status"]["unavailableReplicas"] == 1

        cluster.flux.heal_workload("websick", "websick")
        ks = wait_ready(kube, FLUX_KUSTOMIZE, "websick", "websick")
        assert condition(ks, "Healthy")["status"] == "True"  # type: ignore[index]


def test_a_revision_that_drops_an_object_prunes_it(kube: Kube, git_server: GitServer) -> None:
    tree = {"app/kustomization.yaml": "resources:\n  - deployment.yaml\n  - configmap.yaml\n",
            "app/deployment.yaml": WEB, "app/configmap.yaml": CONFIG_MAP}
    git_server.commit("prune", tree)
    provision(kube, "prune", git_server.url("prune"), path="./app")
    ks = wait_ready(kube, FLUX_KUSTOMIZE, "prune", "prune")
    assert [e["id"] for e in ks["status"]["inventory"]["entries"]] == [
        "prune_settings__ConfigMap", "prune_web_apps_Deployment"]
    core = client.CoreV1Api(kube.api)
    assert core.read_namespaced_config_map("settings", "prune").data == {"level": "info"}

    new = git_server.commit("prune", {"app/kustomization.yaml": "resources:\n  - deployment.yaml\n",
                                      "app/deployment.yaml": WEB})
    kube.patch(FLUX_SOURCE, "prune", "prune", {"metadata": {"annotations": {
        "reconcile.fluxcd.io/requestedAt": "prune-1"}}})
    ks = wait_ready(kube, FLUX_KUSTOMIZE, "prune", "prune", message=f"Applied revision: main@sha1:{new}")
    assert ks["status"]["inventory"] == {"entries": [{"id": "prune_web_apps_Deployment", "v": "v1"}]}
    assert not_found(core.read_namespaced_config_map, "settings", "prune")
    assert deployment_of(kube, "prune", "web")["metadata"]["name"] == "web"


def test_deleting_the_kustomization_deletes_its_inventory_first(kube: Kube, git_server: GitServer) -> None:
    files, path = web_service("webgone")
    git_server.commit("webgone", files)
    provision(kube, "webgone", git_server.url("webgone"), path=path, wait=True)
    wait_ready(kube, FLUX_KUSTOMIZE, "webgone", "webgone")
    apps, core = client.AppsV1Api(kube.api), client.CoreV1Api(kube.api)
    assert deployment_of(kube, "webgone", "webgone")["metadata"]["name"] == "webgone"

    kube.delete(FLUX_KUSTOMIZE, "webgone", "webgone")
    wait_for(lambda: not_found(kube.get, FLUX_KUSTOMIZE, "webgone", "webgone"), what="the Kustomization to go")
    assert not_found(apps.read_namespaced_deployment, "webgone", "webgone")
    assert not_found(core.read_namespaced_service, "webgone", "webgone")
    assert kube.read_namespace("webgone")["status"]["phase"] == "Active"  # gone by the finalizer, not the namespace


def test_a_deleted_object_is_recreated_at_the_next_interval(git_server: GitServer) -> None:
    git_server.commit("drift", {"app/deployment.yaml": WEB})
    with SandboxCluster(flux=FluxSimulatorConfig(source_retry_interval=0.2, interval_cap=0.2)) as cluster:
        kube = Kube.connect(cluster)
        provision(kube, "drift", git_server.url("drift"), path="./app")
        wait_ready(kube, FLUX_KUSTOMIZE, "drift", "drift")
        uid = deployment_of(kube, "drift", "web")["metadata"]["uid"]
        client.AppsV1Api(kube.api).delete_namespaced_deployment("web", "drift")

        def recreated() -> str | None:
            try:
                found = deployment_of(kube, "drift", "web")["metadata"]["uid"]
            except ApiException:
                return None
            return str(found) if found != uid else None

        wait_for(recreated, what="the Deployment applied again")
