"""kstatus, reduced: whether an object is Current, as kustomize-controller's health checks judge it.

Upstream: kubernetes-sigs/cli-utils (vendored by Flux as fluxcd/cli-utils) `pkg/kstatus/status/status.go` Compute,
`generic.go` checkGenericProperties / checkGeneration and `core.go` (the built-in kinds' rules: deploymentConditions,
serviceConditions, pvcConditions, alwaysReady). A kind without rules is Current unless its own Reconciling/Stalled
conditions say otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JsonObj = dict[str, Any]

IN_PROGRESS, FAILED, CURRENT, TERMINATING, NOT_FOUND = "InProgress", "Failed", "Current", "Terminating", "NotFound"


@dataclass(frozen=True)
class Result:
    status: str
    message: str


def compute(obj: JsonObj | None) -> Result:
    """status.go Compute: the generic properties first, then the kind's own rules (None: the object is gone)."""
    if obj is None:
        return Result(NOT_FOUND, "Resource not found")
    generic = _generic(obj)
    if generic is not None:
        return generic
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    rules = _RULES.get((group, str(obj.get("kind", ""))))
    return rules(obj) if rules is not None else Result(CURRENT, "Resource is current")


def _int(obj: JsonObj, *path: str, default: int = 0) -> int:
    node: Any = obj
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return int(node) if isinstance(node, int | float) else default


def _conditions(obj: JsonObj) -> list[JsonObj]:
    return [c for c in (obj.get("status") or {}).get("conditions") or [] if isinstance(c, dict)]


def _generic(obj: JsonObj) -> Result | None:
    """generic.go checkGenericProperties: deletion, then checkGeneration, then Reconciling/Stalled conditions."""
    metadata = obj.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return Result(TERMINATING, "Resource scheduled for deletion")
    generation = metadata.get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        kind = obj.get("kind", "")
        return Result(IN_PROGRESS, f"{kind} generation is {generation}, but latest observed generation is {observed}")
    for condition in _conditions(obj):
        if condition.get("type") == "Reconciling" and condition.get("status") == "True":
            return Result(IN_PROGRESS, str(condition.get("message", "")))
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return Result(FAILED, str(condition.get("message", "")))
    return None


def _deployment(obj: JsonObj) -> Result:
    """core.go deploymentConditions: a progress deadline exceeded is Failed; replica counts, then the Progressing
    (NewReplicaSetAvailable) and Available conditions decide InProgress or Current."""
    progressing = _int(obj, "spec", "progressDeadlineSeconds", default=2**31 - 1) == 2**31 - 1
    available = False
    for condition in _conditions(obj):
        if condition.get("type") == "Progressing":
            if condition.get("reason") == "ProgressDeadlineExceeded":
                return Result(FAILED, "Progress deadline exceeded")
            if condition.get("status") == "True" and condition.get("reason") == "NewReplicaSetAvailable":
                progressing = True
        elif condition.get("type") == "Available" and condition.get("status") == "True":
            available = True
    spec_replicas = _int(obj, "spec", "replicas", default=1)
    replicas = _int(obj, "status", "replicas")
    updated = _int(obj, "status", "updatedReplicas")
    ready = _int(obj, "status", "readyReplicas")
    available_replicas = _int(obj, "status", "availableReplicas")
    if spec_replicas > replicas:
        return Result(IN_PROGRESS, f"Replicas: {replicas}/{spec_replicas}")
    if spec_replicas > updated:
        return Result(IN_PROGRESS, f"Updated: {updated}/{spec_replicas}")
    if replicas > spec_replicas:
        return Result(IN_PROGRESS, f"Pending termination: {replicas - spec_replicas}")
    if updated > available_replicas:
        return Result(IN_PROGRESS, f"Available: {available_replicas}/{updated}")
    if spec_replicas > ready:
        return Result(IN_PROGRESS, f"Ready: {ready}/{spec_replicas}")
    if not progressing:
        return Result(IN_PROGRESS, "ReplicaSet not Available")
    if not available:
        return Result(IN_PROGRESS, "Deployment not Available")
    return Result(CURRENT, f"Deployment is available. Replicas: {replicas}")


def _service(obj: JsonObj) -> Result:
    """core.go serviceConditions: only a LoadBalancer without a clusterIP is still in progress."""
    spec = obj.get("spec") or {}
    if spec.get("type", "ClusterIP") == "LoadBalancer" and not spec.get("clusterIP"):
        return Result(IN_PROGRESS, "ClusterIP not set. Service type: LoadBalancer")
    return Result(CURRENT, "Service is ready")


def _pvc(obj: JsonObj) -> Result:
    phase = (obj.get("status") or {}).get("phase", "unknown")
    if phase != "Bound":
        return Result(IN_PROGRESS, f"PVC is not Bound. phase: {phase}")
    return Result(CURRENT, "PVC is Bound")


def _always_ready(_: JsonObj) -> Result:
    return Result(CURRENT, "Resource is always ready")


_RULES = {
    ("apps", "Deployment"): _deployment,
    ("", "Service"): _service,
    ("", "PersistentVolumeClaim"): _pvc,
    ("", "Secret"): _always_ready,
    ("", "ConfigMap"): _always_ready,
}
