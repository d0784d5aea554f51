"""kustomize-controller for the flux simulator: fetch, build with the real kustomize, apply, prune, health-check.

Mirrors fluxcd/kustomize-controller `internal/controller/kustomization_controller.go`: Reconcile (finalizer,
suspend, source and dependency checks), reconcile (the progress messages "Fetching manifests", "Building manifests",
"Detecting drift", the apply by server-side apply, the inventory, the prune of what left it), checkHealth ("Running
health checks ..."; Ready=False HealthCheckFailed "health check failed after <d>: <wait error>") and finalize (the
inventory is deleted before the finalizer goes). The FluxSimulator owns the queue, the knobs and the status
helpers; a health check waits by timed requeues and store events, never in a worker thread.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kubesim import kstatus
from kubesim.flux_status import (
    FLUX_DEPENDENCY_REQUEUE,
    HEALTHY,
    KUSTOMIZE_CONTROLLER,
    PROGRESSING,
    PROGRESSING_WITH_RETRY,
    READY,
    RECONCILING,
    STALLED,
    Outcome,
    already_reported,
    delete_condition,
    get_condition,
    go_duration,
    is_true,
    parse_duration,
    requested_at,
    set_condition,
)
from kubesim.kustomize_apply import (
    CONFIGURED,
    CREATED,
    DELETED,
    OWNER_GROUP,
    SKIPPED,
    ApplyError,
    Change,
    ObjMeta,
    ResourceManager,
    inventory_entries,
    inventory_metas,
    stale,
    wait_error,
)
from kubesim.kustomize_build import (
    BuildCache,
    BuildError,
    PathNotFound,
    build,
    extract_artifact,
    generate,
    resolve_path,
)
from kubesim.store import GIT_REPOSITORIES, KUSTOMIZATIONS, ChangeEvent, JsonObj
from kubesim.workqueue import Key

if TYPE_CHECKING:
    from kubesim.flux_simulator import FluxSimulator

log = logging.getLogger("kubesim.flux")

HEALTH_POLL_INTERVAL = 1.0  # upstream polls every 5s; store events wake a waiting check sooner
Healthy = tuple[str, str, str]  # (status, reason, message) of the Healthy condition


class _ArtifactMissing(Exception):
    pass


@dataclass(frozen=True)
class _HealthWait:
    """A health check in progress: what it is for, when it started and ends, what it waits on."""

    revision: str
    generation: int
    requested: str | None
    started: float
    deadline: float
    objects: list[ObjMeta]
    inventory: list[JsonObj]


class KustomizeController:
    def __init__(self, sim: FluxSimulator) -> None:
        self.sim = sim
        self.store = sim.store
        self.resources = ResourceManager(sim.store, KUSTOMIZE_CONTROLLER)
        self.builds = BuildCache()
        self._lock = threading.Lock()
        self._waits: dict[Key, _HealthWait] = {}

    # -- events (under the store lock: bookkeeping only) --

    def waiting_on(self, event: ChangeEvent) -> Key | None:
        """The Kustomization whose health check waits on the changed object (named by its owner labels), if any."""
        labels = (event.obj.get("metadata") or {}).get("labels") or {}
        name, namespace = labels.get(f"{OWNER_GROUP}/name"), labels.get(f"{OWNER_GROUP}/namespace")
        if not name or not namespace:
            return None
        key = (KUSTOMIZATIONS.plural, str(namespace), str(name))
        with self._lock:
            return key if key in self._waits else None

    def forget(self, key: Key) -> None:
        with self._lock:
            self._waits.pop(key, None)

    @property
    def waiting_count(self) -> int:
        with self._lock:
            return len(self._waits)

    # -- Reconcile --

    def reconcile(self, key: Key, namespace: str, name: str) -> float | None:
        sim = self.sim
        obj = self.store.find(KUSTOMIZATIONS, namespace, name)
        if obj is None or sim.ensure_finalizer(KUSTOMIZATIONS, obj, KUSTOMIZE_CONTROLLER, self._finalize):
            self.forget(key)
            return None
        spec = obj.get("spec") or {}
        if spec.get("suspend"):
            self.forget(key)
            return None
        generation = int(obj["metadata"].get("generation", 1))
        requested = requested_at(obj)
        interval = parse_duration(spec.get("interval"), 600.0)
        retry = sim.capped(parse_duration(spec.get("retryInterval"), interval))
        stall = sim.stalled(namespace, name)
        if stall is not None:
            self.forget(key)
            self._write_result(namespace, name, Outcome("False", *stall), requested, stalled=True)
            return None
        source_ref = spec.get("sourceRef") or {}
        source_name = str(source_ref.get("name", ""))
        source_namespace = str(source_ref.get("namespace") or namespace)
        if source_ref.get("kind") != GIT_REPOSITORIES.kind:
            message = f"source `{source_name}` kind '{source_ref.get('kind')}' not supported"
            self._write_result(namespace, name, Outcome("False", "ArtifactFailed", message), requested)
            return retry
        source = self.store.find(GIT_REPOSITORIES, source_namespace, source_name)
        if source is None:
            message = f'{GIT_REPOSITORIES.qualified_kind} "{source_name}" not found'
            self._write_result(namespace, name, Outcome("False", "ArtifactFailed", message), requested)
            return sim.config.source_retry_interval
        artifact = (source.get("status") or {}).get("artifact")
        if not artifact:
            message = f"Source artifact not found, retrying in {FLUX_DEPENDENCY_REQUEUE}"
            self._write_result(namespace, name, Outcome("False", "ArtifactFailed", message), requested)
            return sim.config.source_retry_interval
        not_ready = self._unready_dependency(namespace, spec)
        if not_ready:
            outcome = Outcome("False", "DependencyNotReady", f"dependency '{not_ready}' is not ready")
            self._write_result(namespace, name, outcome, requested)
            return sim.config.source_retry_interval
        revision = str(artifact["revision"])
        with self._lock:
            wait = self._waits.get(key)
        if wait is not None:
            if (wait.revision, wait.generation, wait.requested) == (revision, generation, requested):
                return self._check_health(key, namespace, name, wait, retry, interval)
            # A new revision, generation or request while health checks run: Reconcile's QueueEventSource branch.
            self.forget(key)
            trigger = (f"{GIT_REPOSITORIES.kind}/{source_namespace}/{source_name}" if wait.revision != revision
                       else f"{KUSTOMIZATIONS.kind}/{namespace}/{name}")
            outcome = Outcome("False", "HealthCheckCanceled", f"New reconciliation triggered by {trigger}")
            self._write_result(namespace, name, outcome, requested)
            return 0.0
        status = obj.get("status") or {}
        if (status.get("observedGeneration") == generation and is_true(status, READY)
                and status.get("lastAppliedRevision") == revision
                and status.get("lastHandledReconcileAt") == requested and self._in_sync(obj, artifact)):
            return sim.capped(interval)  # nothing new, nothing drifted: a real reconcile would change nothing
        return self._reconcile_revision(key, obj, artifact, requested, interval, retry)

    def _unready_dependency(self, namespace: str, spec: JsonObj) -> str | None:
        for dependency in spec.get("dependsOn") or []:
            dep_namespace = str(dependency.get("namespace") or namespace)
            dep_name = str(dependency.get("name", ""))
            dep = self.store.find(KUSTOMIZATIONS, dep_namespace, dep_name)
            dep_status = (dep or {}).get("status") or {}
            if dep is None or dep_status.get("observedGeneration") != dep["metadata"].get("generation") or not (
                is_true(dep_status, READY)
            ):
                return f"{dep_namespace}/{dep_name}"
        return None

    def _in_sync(self, obj: JsonObj, artifact: JsonObj) -> bool:
        """A periodic reconcile of the applied revision: does applying it again change anything (drift), and are the
        checked objects still healthy? If not, the full reconcile runs, as upstream's every interval."""
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        try:
            objects = self._build(obj, artifact)
            self.resources.set_owner_labels(objects, obj["metadata"]["name"], obj["metadata"]["namespace"])
            changes = self.resources.apply_all_staged(objects, dry_run=True)
        except (BuildError, PathNotFound, _ArtifactMissing, ApplyError):
            return False
        if any(c.action in (CREATED, CONFIGURED) for c in changes):
            return False
        if inventory_entries(changes) != ((status.get("inventory") or {}).get("entries") or []):
            return False
        return all(self.resources.status(meta).status == kstatus.CURRENT
                   for meta in self._health_objects(spec, changes))

    # -- reconcile --

    def _reconcile_revision(self, key: Key, obj: JsonObj, artifact: JsonObj, requested: str | None,
                            interval: float, retry: float) -> float | None:
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        generation = int(obj["metadata"].get("generation", 1))
        revision = str(artifact["revision"])
        timeout = max(parse_duration(spec.get("timeout"), interval - 30), 30.0)
        with_timeout = f"for revision {revision} with a timeout of {go_duration(timeout)}"
        objects: list[JsonObj] | None = None
        failure: Outcome | None = None
        attempted = True
        try:
            objects = self._build(obj, artifact)
        except (_ArtifactMissing, PathNotFound) as error:
            failure, attempted = Outcome("False", "ArtifactFailed", str(error)), False
        except BuildError as error:
            failure = Outcome("False", "BuildFailed", str(error))
        if failure is not None and already_reported(status, generation, failure, requested):
            return retry  # the same failure again: the status already says it
        self._progress(namespace, name, f"Fetching manifests {with_timeout}", start=True)
        if self.sim.hold_if_held(key):
            return None
        remaining = self.sim.result_due(key)
        if remaining is not None:
            return remaining
        if failure is not None and not attempted:
            self._write_result(namespace, name, failure, requested)
            return retry
        self._progress(namespace, name, f"Building manifests {with_timeout}", attempted=revision)
        if failure is not None:
            self._write_result(namespace, name, failure, requested)
            log.info("flux simulator: Kustomization %s/%s: %s", namespace, name, failure.message)
            return retry
        assert objects is not None
        self._progress(namespace, name, f"Detecting drift {with_timeout}")
        self.resources.set_owner_labels(objects, name, namespace)
        try:
            changes = self.resources.apply_all_staged(objects)
        except ApplyError as error:
            # apply(): a partial apply lists what did change after the error.
            applied = "".join(f"{c}\n" for c in error.changes if c.action in (CREATED, CONFIGURED))
            self._write_result(namespace, name, Outcome("False", "ReconciliationFailed", f"{error}\n{applied}"),
                               requested)
            return retry
        inventory = inventory_entries(changes)
        if spec.get("prune"):
            gone = stale(inventory_metas(status.get("inventory")), [c.meta for c in changes])
            try:
                pruned = self.resources.delete(gone, name, namespace)
            except ApplyError as error:
                # prune(): what was not confirmed deleted stays in the inventory (inventory.Merge), to retry.
                settled = {c.meta.id for c in error.changes if c.action in (DELETED, SKIPPED)}
                survivors = [*inventory, *({"id": m.id, "v": m.version} for m in gone if m.id not in settled)]
                self._write_result(namespace, name, Outcome("False", "PruneFailed", str(error)), requested,
                                   inventory=survivors)
                return retry
            if pruned:
                log.info("flux simulator: Kustomization %s/%s garbage collection: %s", namespace, name,
                         ", ".join(str(c) for c in pruned))
        checks = self._health_objects(spec, changes)
        if not checks:
            success = Outcome("True", "ReconciliationSucceeded", f"Applied revision: {revision}")
            self._write_result(namespace, name, success, requested, revision=revision, inventory=inventory)
            log.info("flux simulator: Kustomization %s/%s: %s", namespace, name, success.message)
            return self.sim.capped(interval)
        message = f"Running health checks {with_timeout}"
        self._progress(namespace, name, message, inventory=inventory, healthy=("Unknown", PROGRESSING, message))
        now = time.monotonic()
        wait = _HealthWait(revision, generation, requested, now, now + min(timeout, self.sim.config.health_timeout_cap),
                           checks, inventory)
        with self._lock:
            self._waits[key] = wait
        return self._check_health(key, namespace, name, wait, retry, interval)

    @staticmethod
    def _health_objects(spec: JsonObj, changes: list[Change]) -> list[ObjMeta]:
        """checkHealth: with spec.wait every applied object but the skipped ones, else spec.healthChecks."""
        if spec.get("wait"):
            return [c.meta for c in changes if c.action != SKIPPED]
        objects = []
        for ref in spec.get("healthChecks") or []:
            group, _, version = str(ref.get("apiVersion") or "apps/v1").rpartition("/")
            objects.append(ObjMeta(str(ref.get("namespace") or ""), str(ref.get("name", "")), group,
                                   str(ref.get("kind", "")), version))
        return objects

    def _check_health(self, key: Key, namespace: str, name: str, wait: _HealthWait, retry: float,
                      interval: float) -> float | None:
        """One poll of WaitForSetWithContext: Ready once all are Current; HealthCheckFailed at the deadline (or
        early, when every object is Current or Failed); otherwise look again soon."""
        results = [(meta, self.resources.status(meta)) for meta in wait.objects]
        now = time.monotonic()
        elapsed = go_duration(now - wait.started)
        if all(result.status == kstatus.CURRENT for _, result in results):
            self.forget(key)
            success = Outcome("True", "ReconciliationSucceeded", f"Applied revision: {wait.revision}")
            passed: Healthy = ("True", "Succeeded", f"Health check passed in {elapsed}")
            self._write_result(namespace, name, success, wait.requested, revision=wait.revision,
                               inventory=wait.inventory, healthy=passed)
            log.info("flux simulator: Kustomization %s/%s: %s", namespace, name, success.message)
            return self.sim.capped(interval)
        error = wait_error(results, timed_out=now >= wait.deadline)
        if error is None:
            return min(HEALTH_POLL_INTERVAL, max(wait.deadline - now, 0.0))
        self.forget(key)
        failure = Outcome("False", "HealthCheckFailed", f"health check failed after {elapsed}: {error}")
        self._write_result(namespace, name, failure, wait.requested, inventory=wait.inventory,
                           healthy=("False", "HealthCheckFailed", error))
        log.info("flux simulator: Kustomization %s/%s: %s", namespace, name, failure.message)
        return retry

    def _build(self, obj: JsonObj, artifact: JsonObj) -> list[JsonObj]:
        """Fetch the artifact into /tmp/kustomization-<n>, check the path, generate, build (cached by digest)."""
        spec = obj.get("spec") or {}
        tarball = self.sim.artifact_root / str(artifact.get("path", ""))
        if not tarball.is_file():
            raise _ArtifactMissing(f"Source is not ready, artifact not found, retrying in {FLUX_DEPENDENCY_REQUEUE}")
        cache_key = BuildCache.key(str(artifact.get("digest", "")), spec)
        cached = self.builds.get(cache_key)
        if cached is not None:
            return cached
        # A stable directory per object keeps failure messages identical between retries.
        work_dir = Path(tempfile.gettempdir()) / f"kustomization-{zlib.crc32(obj['metadata']['uid'].encode())}"
        shutil.rmtree(work_dir, ignore_errors=True)
        try:
            work_dir.mkdir(parents=True)
            extract_artifact(tarball, work_dir)
            path = resolve_path(work_dir, str(spec.get("path") or "./"))
            generate(path, spec)
            objects = build(path)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        self.builds.put(cache_key, objects)
        return objects

    # -- finalize --

    def _finalize(self, obj: JsonObj) -> bool:
        """finalize(): delete the inventory (finalizerShouldDeleteResources) before the finalizer goes; False to
        retry when a delete failed."""
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        policy = spec.get("deletionPolicy") or "MirrorPrune"
        try:
            entries = inventory_metas(status.get("inventory"))
        except ValueError:
            return True
        if spec.get("suspend") or not entries or policy == "Orphan" or (policy == "MirrorPrune"
                                                                         and not spec.get("prune")):
            return True
        try:
            changes = self.resources.delete(entries, name, namespace)
        except ApplyError as error:
            log.info("flux simulator: Kustomization %s/%s: pruning for deleted resource failed: %s",
                     namespace, name, error)
            return False
        log.info("flux simulator: Kustomization %s/%s deleted its inventory: %s", namespace, name,
                 ", ".join(str(c) for c in changes))
        return True

    # -- status --

    def _progress(self, namespace: str, name: str, message: str, *, start: bool = False,
                  attempted: str | None = None, inventory: list[JsonObj] | None = None,
                  healthy: Healthy | None = None) -> None:
        """A reconcile step persisted (r.patch): Reconciling=True with its message; at the start Ready=Unknown."""
        def change(status: JsonObj, generation: int) -> None:
            if start:
                set_condition(status, READY, "Unknown", PROGRESSING, "Reconciliation in progress", generation)
            set_condition(status, RECONCILING, "True", PROGRESSING, message, generation)
            if attempted is not None:
                status["lastAttemptedRevision"] = attempted
            if inventory is not None:
                status["inventory"] = {"entries": inventory}
            if healthy is not None:
                set_condition(status, HEALTHY, *healthy, generation)

        self.sim.write_status(KUSTOMIZATIONS, namespace, name, KUSTOMIZE_CONTROLLER, change)

    def _write_result(self, namespace: str, name: str, outcome: Outcome, requested: str | None, *,
                      stalled: bool = False, revision: str | None = None, inventory: list[JsonObj] | None = None,
                      healthy: Healthy | None = None) -> None:
        """The end of a reconcile (finalizeStatus): Ready, and on success observedGeneration, no Reconciling and the
        applied revision; on failure Reconciling turns ProgressingWithRetry. Healthy goes when nothing is checked."""
        def change(status: JsonObj, generation: int) -> None:
            set_condition(status, READY, outcome.ready, outcome.reason, outcome.message, generation)
            if healthy is not None:
                set_condition(status, HEALTHY, *healthy, generation)
            if stalled:
                set_condition(status, STALLED, "True", outcome.reason, outcome.message, generation)
                status["observedGeneration"] = generation
            elif outcome.ready == "True":
                delete_condition(status, RECONCILING)
                delete_condition(status, STALLED)
                if healthy is None:
                    delete_condition(status, HEALTHY)  # checkHealth: nothing to check
                status["observedGeneration"] = generation
            else:
                delete_condition(status, STALLED)
                reconciling = get_condition(status, RECONCILING)
                if reconciling is not None:
                    reconciling["reason"] = PROGRESSING_WITH_RETRY
            if revision is not None:
                status["lastAttemptedRevision"] = revision
                if outcome.ready == "True":
                    status["lastAppliedRevision"] = revision
            if inventory is not None:
                status["inventory"] = {"entries": inventory}
            if requested is not None:
                status["lastHandledReconcileAt"] = requested

        self.sim.write_status(KUSTOMIZATIONS, namespace, name, KUSTOMIZE_CONTROLLER, change)

