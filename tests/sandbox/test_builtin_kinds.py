"""The built-in kinds the templates and deploy/kubernetes emit, served with kube-apiserver's rules (generation where
the registry keeps it, the status subresource, defaulting and allocation), through the official kubernetes client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from kubesim import FluxSimulatorConfig, SandboxCluster
from tests.sandbox.conftest import Kube

TEMPLATE = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}


@pytest.fixture
def idle() -> Iterator[Kube]:
    """No flux simulator and no workload controllers: only the test writes."""
    with SandboxCluster(flux=FluxSimulatorConfig(enabled=False)) as cluster:
        kube = Kube.connect(cluster)
        kube.create_namespace("team")
        yield kube


def deployment(replicas: int = 1) -> Any:
    """A Deployment body (the client sends a dict as it is; its signatures want typed models)."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}, "template": TEMPLATE}}


def test_a_deployment_has_a_generation_defaults_and_a_status_subresource(idle: Kube) -> None:
    apps = client.AppsV1Api(idle.api)
    created = idle.as_dict(apps.create_namespaced_deployment("team", deployment()))
    assert created["metadata"]["generation"] == 1
    assert "status" not in created
    spec = created["spec"]  # apps/v1 SetDefaults_Deployment
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert (spec["revisionHistoryLimit"], spec["progressDeadlineSeconds"]) == (10, 600)

    patched = idle.as_dict(apps.patch_namespaced_deployment("web", "team", {"spec": {"replicas": 3}}))
    assert (patched["metadata"]["generation"], patched["spec"]["replicas"]) == (2, 3)
    patched = idle.as_dict(apps.patch_namespaced_deployment("web", "team", {"metadata": {"labels": {"a": "b"}}}))
    assert patched["metadata"]["generation"] == 2  # metadata is not spec

    body: Any = idle.as_dict(apps.read_namespaced_deployment("web", "team"))
    body["status"] = {"observedGeneration": 2, "replicas": 3}
    written = idle.as_dict(apps.replace_namespaced_deployment_status("web", "team", body))
    assert written["status"] == {"observedGeneration": 2, "replicas": 3}
    assert written["metadata"]["generation"] == 2  # /status never bumps it
    body = idle.as_dict(apps.read_namespaced_deployment("web", "team"))
    body["status"] = {"replicas": 99}
    del body["metadata"]["resourceVersion"]  # built-ins allow an unconditional update
    kept = idle.as_dict(apps.replace_namespaced_deployment("web", "team", body))
    assert kept["status"] == {"observedGeneration": 2, "replicas": 3}  # the main endpoint keeps the old status


def test_a_config_map_and_a_service_account_have_no_generation(idle: Kube) -> None:
    core = client.CoreV1Api(idle.api)
    core.create_namespaced_config_map("team", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"),
                                                                 data={"a": "1"}))
    updated = idle.as_dict(core.patch_namespaced_config_map("c", "team", {"data": {"a": "2"}}))
    assert "generation" not in updated["metadata"] and updated["data"] == {"a": "2"}
    account = idle.as_dict(core.create_namespaced_service_account(
        "team", client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="robot"))))
    assert "generation" not in account["metadata"]


def test_a_service_gets_a_cluster_ip_that_an_apply_keeps(idle: Kube) -> None:
    core = client.CoreV1Api(idle.api)
    config: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "team"},
              "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    core.patch_namespaced_service("web", "team", config, field_manager="flux", force=True,
                                  _content_type="application/apply-patch+yaml")
    service = idle.as_dict(core.read_namespaced_service("web", "team"))
    spec = service["spec"]
    assert spec["clusterIP"].startswith("10.96.") and spec["clusterIPs"] == [spec["clusterIP"]]
    assert (spec["type"], spec["sessionAffinity"], spec["ports"][0]["protocol"]) == ("ClusterIP", "None", "TCP")
    assert "generation" not in service["metadata"]

    core.patch_namespaced_service("web", "team", config, field_manager="flux", force=True,
                                  _content_type="application/apply-patch+yaml")
    again = idle.as_dict(core.read_namespaced_service("web", "team"))
    assert again["metadata"]["resourceVersion"] == service["metadata"]["resourceVersion"]  # nothing changed

    config["spec"]["type"] = "LoadBalancer"
    core.patch_namespaced_service("web", "team", config, field_manager="flux", force=True,
                                  _content_type="application/apply-patch+yaml")
    balanced = idle.as_dict(core.read_namespaced_service("web", "team"))["spec"]
    assert balanced["clusterIP"] == spec["clusterIP"]  # allocated once, kept
    assert 30000 <= balanced["ports"][0]["nodePort"] <= 32767


def test_a_claim_is_pending_until_bound(idle: Kube) -> None:
    core = client.CoreV1Api(idle.api)
    claim = client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="data"),
        spec=client.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteOnce"],
                                                resources=client.V1VolumeResourceRequirements(
                                                    requests={"storage": "1Gi"})))
    created = idle.as_dict(core.create_namespaced_persistent_volume_claim("team", claim))
    assert created["status"] == {"phase": "Pending"}
    assert created["spec"]["volumeMode"] == "Filesystem"


def test_cluster_roles_and_bindings_are_cluster_scoped(idle: Kube) -> None:
    rbac = client.RbacAuthorizationV1Api(idle.api)
    rule = client.V1PolicyRule(api_groups=[""], resources=["namespaces"], verbs=["get"])
    role = idle.as_dict(rbac.create_cluster_role(client.V1ClusterRole(
        metadata=client.V1ObjectMeta(name="reader"), rules=[rule])))
    assert "namespace" not in role["metadata"] and "generation" not in role["metadata"]
    rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name="reader"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="reader"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="robot", namespace="team")]))
    bindings = idle.as_dict(rbac.list_cluster_role_binding())["items"]
    assert [b["metadata"]["name"] for b in bindings] == ["reader"]
    rbac.create_namespaced_role("team", client.V1Role(metadata=client.V1ObjectMeta(name="edit"), rules=[rule]))
    roles = idle.as_dict(rbac.list_role_for_all_namespaces())["items"]
    assert [r["metadata"]["namespace"] for r in roles] == ["team"]
