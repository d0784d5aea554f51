"""The cluster's own controllers for workloads, reduced: what the deployment controller, the kubelets and the volume
binder would make of the Deployments and PersistentVolumeClaims written to the sandbox.

A Deployment's new generation is observed at once (kubernetes `pkg/controller/deployment`: a new ReplicaSet, its
pods created and not yet ready: Available=False MinimumReplicasUnavailable, Progressing=True ReplicaSetUpdated);
`ready_delay` seconds later its pods are ready and it is available, written the way `sync.go` syncDeploymentStatus
and `progress.go` do (observedGeneration, replicas, updatedReplicas, readyReplicas, availableReplicas, Available=True
MinimumReplicasAvailable, Progressing=True NewReplicaSetAvailable). The `fail` knob keeps one from becoming available
(its pods never ready; with a message, its ReplicaSet cannot create them: ReplicaFailure=True FailedCreate) until
`heal`. A PersistentVolumeClaim is Bound `ready_delay` seconds after it is created. Status is written through the
status subresource as `kube-controller-manager`; the waits are timed requeues on one thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from kubesim import kstatus
from kubesim.store import (
    DEPLOYMENTS,
    PERSISTENT_VOLUME_CLAIMS,
    ChangeEvent,
    JsonObj,
    ObjectStore,
    utc_now,
)
from kubesim.workqueue import DelayQueue, Key

log = logging.getLogger("kubesim.workloads")

MANAGER = "kube-controller-manager"
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery util/rand SafeEncodeString


def replica_set_name(deployment: JsonObj) -> str:
    """`<deployment>-<pod-template-hash>`: controller.ComputeHash (FNV-32a of the template), safe-encoded."""
    digest = 0x811C9DC5
    for byte in json.dumps((deployment.get("spec") or {}).get("template") or {}, sort_keys=True).encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    encoded = "".join(_SAFE_ALPHABET[int(c) % len(_SAFE_ALPHABET)] for c in str(digest))
    return f"{deployment['metadata']['name']}-{encoded}"


def _condition(previous: JsonObj, type_: str, status: str, reason: str, message: str) -> JsonObj:
    """A Deployment condition; lastTransitionTime moves only when the status does (deploymentutil.SetCondition)."""
    now = utc_now()
    old = next((c for c in previous.get("conditions") or [] if c.get("type") == type_), None)
    moved = old is None or old.get("status") != status
    same = old is not None and not moved and old.get("reason") == reason and old.get("message") == message
    return {"type": type_, "status": status, "lastUpdateTime": old["lastUpdateTime"] if same and old else now,
            "lastTransitionTime": now if moved or old is None else old["lastTransitionTime"],
            "reason": reason, "message": message}


def deployment_status(obj: JsonObj, *, ready: bool, failure: str | None = None) -> JsonObj:
    """The status the deployment controller writes for the current generation: rolled out (`ready`), or not yet."""
    previous = obj.get("status") or {}
    replicas = int((obj.get("spec") or {}).get("replicas", 1))
    rs = replica_set_name(obj)
    was_available = any(c.get("type") == "Available" and c.get("status") == "True"
                        for c in previous.get("conditions") or [])
    counts: dict[str, int]
    if ready:
        counts = {"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas,
                  "availableReplicas": replicas}
        available = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        progressing = ("True", "NewReplicaSetAvailable", f'ReplicaSet "{rs}" has successfully progressed.')
    else:
        created = 0 if failure else replicas  # a FailedCreate ReplicaSet has no pods
        old_ready = 0 if failure else int(previous.get("availableReplicas") or 0) if was_available else 0
        counts = {"replicas": created, "updatedReplicas": created, "readyReplicas": old_ready,
                  "availableReplicas": old_ready, "unavailableReplicas": replicas - old_ready}
        available = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.") if (
            was_available and not failure) else (
            "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        progressing = ("True", "ReplicaSetUpdated", f'ReplicaSet "{rs}" is progressing.')
    status: JsonObj = {"observedGeneration": obj["metadata"].get("generation", 1)}
    status.update({k: v for k, v in counts.items() if v})  # omitempty, as the API serializes them
    conditions = [_condition(previous, "Available", *available), _condition(previous, "Progressing", *progressing)]
    if failure:
        conditions.append(_condition(previous, "ReplicaFailure", "True", "FailedCreate", failure))
    status["conditions"] = conditions
    return status


class WorkloadController:
    """Deployments roll out and claims bind, after `ready_delay` seconds. Knob methods are thread-safe."""

    def __init__(self, store: ObjectStore, ready_delay: float) -> None:
        self.store = store
        self.ready_delay = ready_delay
        self._queue = DelayQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failing: dict[tuple[str, str], str] = {}
        self._rollouts: dict[Key, tuple[int, float]] = {}  # Deployment -> (generation, rollout started at)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._queue = DelayQueue()
        self.store.subscribe(self._on_change)
        for kind in (DEPLOYMENTS, PERSISTENT_VOLUME_CLAIMS):
            for obj in self.store.list_objects(kind)["items"]:
                self._queue.add((kind.plural, obj["metadata"]["namespace"], obj["metadata"]["name"]))
        self._thread = threading.Thread(target=self._work, name="sandbox-workloads", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.store.unsubscribe(self._on_change)
        self._queue.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None

    def fail(self, namespace: str, name: str, message: str = "") -> None:
        """Keep Deployment `namespace/name` from becoming available (now, and whenever it rolls out) until `heal`."""
        with self._lock:
            self._failing[(namespace, name)] = message
        self._queue.add((DEPLOYMENTS.plural, namespace, name))

    def heal(self, namespace: str, name: str) -> None:
        with self._lock:
            self._failing.pop((namespace, name), None)
            self._rollouts.pop((DEPLOYMENTS.plural, namespace, name), None)  # its pods start over
        self._queue.add((DEPLOYMENTS.plural, namespace, name))

    # -- events (under the store lock: only enqueue) --

    def _on_change(self, event: ChangeEvent) -> None:
        if event.kind == DEPLOYMENTS:
            key = (DEPLOYMENTS.plural, event.namespace, event.name)
            old_generation = ((event.old or {}).get("metadata") or {}).get("generation")
            if event.type == "DELETED":
                with self._lock:
                    self._rollouts.pop(key, None)
            elif event.type == "ADDED" or old_generation != event.obj["metadata"].get("generation"):
                self._queue.add(key)
        elif event.kind == PERSISTENT_VOLUME_CLAIMS and event.type == "ADDED":
            self._queue.add((PERSISTENT_VOLUME_CLAIMS.plural, event.namespace, event.name), self.ready_delay)

    def _work(self) -> None:
        while True:
            key = self._queue.get()
            if key is None:
                return
            delay: float | None = None
            try:
                if key[0] == DEPLOYMENTS.plural:
                    delay = self._sync_deployment(key)
                else:
                    self._bind_claim(key[1], key[2])
            except Exception:
                log.exception("sandbox workloads: sync of %s/%s/%s failed", *key)
                delay = 1.0
            finally:
                self._queue.done(key)
            if delay is not None:
                self._queue.add(key, delay)

    def _sync_deployment(self, key: Key) -> float | None:
        _, namespace, name = key
        obj = self.store.find(DEPLOYMENTS, namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return None
        generation = int(obj["metadata"].get("generation", 1))
        with self._lock:
            failure = self._failing.get((namespace, name))
            if failure is None and kstatus.compute(obj).status == kstatus.CURRENT and (
                    obj.get("status") or {}).get("observedGeneration") == generation:
                self._rollouts.pop(key, None)
                return None  # rolled out already (e.g. before a restart)
            rollout = self._rollouts.get(key)
            if rollout is None or rollout[0] != generation:
                rollout = self._rollouts[key] = (generation, time.monotonic())
        if failure is not None:
            self._write(namespace, name, lambda o: deployment_status(o, ready=False, failure=failure or None))
            return None
        remaining = self.ready_delay - (time.monotonic() - rollout[1])
        if remaining > 0:
            self._write(namespace, name, lambda o: deployment_status(o, ready=False))
            return remaining
        self._write(namespace, name, lambda o: deployment_status(o, ready=True))
        return None

    def _write(self, namespace: str, name: str, status_of: Callable[[JsonObj], JsonObj]) -> None:
        def change(obj: JsonObj) -> None:
            obj["status"] = status_of(obj)

        self.store.mutate(DEPLOYMENTS, namespace, name, change, field_manager=MANAGER, subresource="status")

    def _bind_claim(self, namespace: str, name: str) -> None:
        """The PV controller binds the claim to a provisioned volume (spec.volumeName), then marks it Bound."""
        claim = self.store.find(PERSISTENT_VOLUME_CLAIMS, namespace, name)
        if claim is None or (claim.get("status") or {}).get("phase") == "Bound":
            return
        volume = f"pvc-{claim['metadata']['uid']}"
        self.store.mutate(PERSISTENT_VOLUME_CLAIMS, namespace, name,
                          lambda c: c["spec"].setdefault("volumeName", volume), field_manager=MANAGER)

        def bound(c: JsonObj) -> None:
            spec = c.get("spec") or {}
            c["status"] = {"phase": "Bound", "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                           "capacity": ((spec.get("resources") or {}).get("requests") or {"storage": "1Gi"})}

        self.store.mutate(PERSISTENT_VOLUME_CLAIMS, namespace, name, bound, field_manager=MANAGER,
                          subresource="status")
