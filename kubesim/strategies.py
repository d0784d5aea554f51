"""What kube-apiserver does to built-in objects besides the generic rules: defaulting and allocation on create and
update, for the built-in kinds the sandbox serves. store.py calls `prepare_for_create` / `prepare_for_update`.

Upstream: kubernetes `pkg/apis/apps/v1/defaults.go` SetDefaults_Deployment, `pkg/apis/core/v1/defaults.go`
SetDefaults_Service / SetDefaults_PersistentVolumeClaim(Spec), `pkg/registry/core/service/storage/alloc.go`
(clusterIP and nodePort allocation on create; `patchAllocatedValues` keeps them on an update that omits them).
Defaulted and allocated fields belong to no field manager, as upstream, so server-side apply never removes them.
"""

from __future__ import annotations

import secrets
from typing import Any

JsonObj = dict[str, Any]

NODE_PORT_RANGE = (30000, 32767)
# The kinds whose metadata.generation the registry maintains (their strategy's PrepareForCreate sets 1 and
# PrepareForUpdate bumps it on a spec change); the other built-ins have no generation.
GENERATION_KINDS = frozenset({("apps", "Deployment"), ("apps", "StatefulSet"), ("apps", "DaemonSet"),
                              ("apps", "ReplicaSet"), ("batch", "Job"), ("batch", "CronJob")})


def prepare_for_create(group: str, kind: str, obj: JsonObj) -> None:
    if (group, kind) == ("apps", "Deployment"):
        _default_deployment(obj)
    elif (group, kind) == ("", "Service"):
        _default_service(obj, None)
    elif (group, kind) == ("", "PersistentVolumeClaim"):
        obj.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
        obj["status"] = {"phase": "Pending"}  # SetDefaults_PersistentVolumeClaim


def prepare_for_update(group: str, kind: str, current: JsonObj, desired: JsonObj) -> None:
    if (group, kind) == ("apps", "Deployment"):
        _default_deployment(desired)
    elif (group, kind) == ("", "Service"):
        _default_service(desired, current)
    elif (group, kind) == ("", "PersistentVolumeClaim"):
        desired.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")


def _default_deployment(obj: JsonObj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)


def _default_service(obj: JsonObj, current: JsonObj | None) -> None:
    spec = obj.setdefault("spec", {})
    old_spec = (current or {}).get("spec") or {}
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if not port.get("targetPort"):
                port["targetPort"] = port.get("port")
    if spec["type"] == "ExternalName":
        return
    spec.setdefault("internalTrafficPolicy", "Cluster")
    # alloc.go: a clusterIP once allocated stays (patchAllocatedValues copies it into an update that omits it).
    for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
        if field not in spec and field in old_spec:
            spec[field] = old_spec[field]
    if not spec.get("clusterIP"):
        spec["clusterIP"] = f"10.96.{secrets.randbelow(256)}.{2 + secrets.randbelow(252)}"
    spec.setdefault("clusterIPs", [spec["clusterIP"]])
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
        if spec["type"] == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                     for p in old_spec.get("ports") or [] if isinstance(p, dict)}
        for port in spec.get("ports") or []:
            if isinstance(port, dict) and not port.get("nodePort"):
                kept = old_ports.get((port.get("port"), port.get("protocol")))
                low, high = NODE_PORT_RANGE
                port["nodePort"] = kept or low + secrets.randbelow(high - low + 1)
