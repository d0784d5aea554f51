"""kstatus rules, health-check messages and inventory ids of the flux simulator, against upstream's wording."""

from __future__ import annotations

from typing import Any

from kubesim import kstatus
from kubesim.kustomize_apply import ObjMeta, sort_key, wait_error
from kubesim.workloads import deployment_status


def deployment(replicas: int = 2, generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "Deployment",
                           "metadata": {"name": "web", "namespace": "shop", "generation": generation},
                           "spec": {"replicas": replicas, "progressDeadlineSeconds": 600, "template": {}}}
    if status is not None:
        obj["status"] = status
    return obj


def test_a_deployment_is_current_only_once_rolled_out_at_its_generation() -> None:
    fresh = deployment()
    assert kstatus.compute(fresh) == kstatus.Result("InProgress", "Replicas: 0/2")
    rolling = deployment(status=deployment_status(fresh, ready=False))
    assert kstatus.compute(rolling) == kstatus.Result("InProgress", "Available: 0/2")
    done = deployment(status=deployment_status(fresh, ready=True))
    assert kstatus.compute(done) == kstatus.Result("Current", "Deployment is available. Replicas: 2")
    newer = deployment(generation=2, status=done["status"])
    assert kstatus.compute(newer) == kstatus.Result(
        "InProgress", "Deployment generation is 2, but latest observed generation is 1")
    stuck = deployment(status={**done["status"], "conditions": [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]})
    assert kstatus.compute(stuck).status == "Failed"
    assert kstatus.compute(None).status == "NotFound"


def test_services_config_maps_and_claims() -> None:
    service: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                               "spec": {"type": "LoadBalancer"}}
    assert kstatus.compute(service).status == "InProgress"
    service["spec"]["clusterIP"] = "10.96.0.10"
    assert kstatus.compute(service).status == "Current"
    assert kstatus.compute({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}).status == "Current"
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "d"},
             "status": {"phase": "Pending"}}
    assert kstatus.compute(claim) == kstatus.Result("InProgress", "PVC is not Bound. phase: Pending")


def test_wait_errors_read_like_ssa() -> None:
    web = ObjMeta("shop", "web", "apps", "Deployment")
    role = ObjMeta("", "reader", "rbac.authorization.k8s.io", "ClusterRole")
    waiting = [(web, kstatus.Result("InProgress", "")), (role, kstatus.Result("Current", ""))]
    assert wait_error(waiting, timed_out=False) is None
    assert wait_error(waiting, timed_out=True) == "timeout waiting for: [Deployment/shop/web status: 'InProgress']"
    stalled = [(web, kstatus.Result("Failed", "")), (role, kstatus.Result("Current", ""))]
    assert wait_error(stalled, timed_out=False) == (
        "failed early due to stalled resources: [Deployment/shop/web status: 'Failed']")


def test_inventory_ids_round_trip_and_apply_order() -> None:
    binding = ObjMeta("", "system:reader", "rbac.authorization.k8s.io", "ClusterRoleBinding")
    assert binding.id == "_system__reader_rbac.authorization.k8s.io_ClusterRoleBinding"
    assert ObjMeta.parse(binding.id, "v1") == binding
    service = ObjMeta("shop", "web", "", "Service")
    assert (service.id, service.subject) == ("shop_web__Service", "Service/shop/web")
    assert ObjMeta.parse(service.id, "v1") == service
    kinds = ["Deployment", "Service", "Namespace", "ConfigMap", "Widget"]
    objects = [{"apiVersion": "v1", "kind": kind, "metadata": {"name": "x"}} for kind in kinds]
    assert [o["kind"] for o in sorted(objects, key=sort_key)] == [
        "Namespace", "ConfigMap", "Service", "Deployment", "Widget"]
