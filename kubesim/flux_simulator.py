"""The flux simulator: source-controller and kustomize-controller, reduced to what the sandbox needs.

It reconciles GitRepository and Kustomization objects of the sandbox store the way Flux does (upstream:
github.com/fluxcd/source-controller and github.com/fluxcd/kustomize-controller, their `docs/spec/v1`): it really
clones the repository over HTTP(S) and stores a deterministic tarball artifact (git_source.py); kustomize-controller
(kustomize_controller.py) builds the Kustomization's path with the real kustomize, server-side applies the objects
into the cluster as `kustomize-controller`, records and prunes its inventory and, with `spec.wait`, waits for them
to be Current by kstatus. The cluster's own workload controllers (workloads.py) make Deployments available after
`workload_ready_delay`. Conditions, artifact and revisions are written through the status subresource as
`source-controller` / `kustomize-controller`.

Work is event-driven: store change notifications and timed requeues feed one delay queue served by a few worker
threads; no thread or timer exists per object, so thousands of held objects cost only memory.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubesim.flux_status import (
    FLUX_FINALIZER,
    READY,
    SOURCE_CONTROLLER,
    TERMINAL_ERROR_MESSAGE,
    Outcome,
    add_finalizer,
    already_reported,
    drop_finalizer,
    go_duration,
    is_true,
    parse_duration,
    requested_at,
)
from kubesim.git_source import (
    GitFetchError,
    GitTarget,
    clone,
    mark_reconcile_started,
    mark_source_failed,
    mark_source_progressing,
    mark_source_ready,
    remote_head,
    start_is_persisted,
    write_tarball,
)
from kubesim.kustomize_controller import KustomizeController
from kubesim.store import (
    GIT_REPOSITORIES,
    KUSTOMIZATIONS,
    SECRETS,
    ChangeEvent,
    JsonObj,
    ObjectStore,
    ResourceKind,
    utc_now,
)
from kubesim.workloads import WorkloadController
from kubesim.workqueue import DelayQueue, Key

__all__ = ["FluxSimulator", "FluxSimulatorConfig", "go_duration", "parse_duration"]

log = logging.getLogger("kubesim.flux")

ARTIFACT_BASE_URL = "http://source-controller.flux-system.svc.cluster.local."


@dataclass
class FluxSimulatorConfig:
    reconcile_delay: float = 0.0  # seconds before each reconcile result is written (latency knob)
    source_retry_interval: float = 1.0  # how soon a Kustomization waiting on its source is retried (Flux: 30s)
    enabled: bool = True
    interval_cap: float = 120.0  # periodic reconciles happen at min(spec.interval, this)
    workers: int = 4
    workload_ready_delay: float = 0.2  # seconds until a Deployment rolled out by Flux is available (pods ready)
    health_timeout_cap: float = 120.0  # health checks give up after min(spec.timeout, this)


class FluxSimulator:
    """source-controller + kustomize-controller for the sandbox. Knob methods are thread-safe."""

    def __init__(self, store: ObjectStore, config: FluxSimulatorConfig, artifact_root: Path) -> None:
        self.store = store
        self.config = config
        self.artifact_root = artifact_root
        self._queue = DelayQueue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stalls: dict[tuple[str, str], tuple[str, str]] = {}
        self._hold_all = False
        self._held_namespaces: set[str] = set()
        self._held: set[Key] = set()
        self._clone_failures: dict[str, str] = {}
        self._fetch_delays: dict[str | None, float] = {}  # namespace (None: every namespace) -> seconds
        self._fetch_seen: dict[Key, tuple[str, float]] = {}  # upstream revision not stored yet, first seen at
        self._progress_started: dict[Key, float] = {}
        self._failures: dict[Key, int] = {}
        self._dependents: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._source_of: dict[tuple[str, str], tuple[str, str]] = {}
        self.reconcile_count = 0
        self._reconciles: dict[Key, int] = {}  # reconciles ended, per object
        self.kustomize = KustomizeController(self)
        self.workloads = WorkloadController(store, config.workload_ready_delay)

    # -- lifecycle --

    def start(self) -> None:
        if self._workers or not self.config.enabled:
            return
        self._queue = DelayQueue()
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        self.store.subscribe(self._on_change)
        for kind in (GIT_REPOSITORIES, KUSTOMIZATIONS):
            for obj in self.store.list_objects(kind)["items"]:
                self._on_change(ChangeEvent("ADDED", kind, obj))
        for index in range(max(1, self.config.workers)):
            worker = threading.Thread(target=self._work, name=f"flux-simulator-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        self.workloads.start()
        log.info("flux simulator started (%d workers, artifacts in %s)", len(self._workers), self.artifact_root)

    def stop(self) -> None:
        self.store.unsubscribe(self._on_change)
        self._queue.close()
        for worker in self._workers:
            worker.join(timeout=10)
        self._workers = []
        self.workloads.stop()

    # -- knobs --

    def stall(self, namespace: str, name: str, reason: str = "InvalidCELExpression", message: str = "") -> None:
        """Make that Kustomization report Stalled=True / Ready=False until `unstall`."""
        message = message or f"{TERMINAL_ERROR_MESSAGE}: simulated by the flux simulator"
        with self._lock:
            self._stalls[(namespace, name)] = (reason, message)
        self._queue.add((KUSTOMIZATIONS.plural, namespace, name))

    def unstall(self, namespace: str, name: str) -> None:
        with self._lock:
            self._stalls.pop((namespace, name), None)
        self._queue.add((KUSTOMIZATIONS.plural, namespace, name))

    def hold(self, namespace: str | None = None) -> None:
        """Keep Kustomizations (of `namespace`, or all) at Ready=Unknown/Progressing until released."""
        with self._lock:
            if namespace is None:
                self._hold_all = True
            else:
                self._held_namespaces.add(namespace)

    def release(self, namespace: str | None = None) -> None:
        """End a hold (all holds when `namespace` is None) and let the held Kustomizations finish."""
        with self._lock:
            if namespace is None:
                self._hold_all = False
                self._held_namespaces.clear()
            else:
                self._held_namespaces.discard(namespace)
            released = {k for k in self._held if not self._is_held(k[1])}
            self._held -= released
        for key in released:
            self._queue.add(key)

    def reconciles_of(self, kind: ResourceKind, namespace: str, name: str) -> int:
        """How many reconciles of that object have ended, whatever they wrote (none, when nothing changed): a
        test's proof that the simulator has looked at the object again."""
        with self._lock:
            return self._reconciles.get((kind.plural, namespace, name), 0)

    @property
    def held_count(self) -> int:
        with self._lock:
            return len(self._held)

    def fail_workload(self, namespace: str, name: str, message: str = "") -> None:
        """Keep Deployment `namespace/name` from becoming available: a Kustomization waiting on it (spec.wait) reports
        HealthCheckFailed once its timeout (capped by `health_timeout_cap`) passes. With `message`, its ReplicaSet
        cannot create pods (ReplicaFailure=True FailedCreate `message`); without, its pods never become ready."""
        self.workloads.fail(namespace, name, message)

    def heal_workload(self, namespace: str, name: str) -> None:
        """End `fail_workload`: the Deployment becomes available `workload_ready_delay` seconds later."""
        self.workloads.heal(namespace, name)

    @property
    def health_waits(self) -> int:
        """How many Kustomizations are running health checks (each a timed requeue, not a thread)."""
        return self.kustomize.waiting_count

    def fail_clone(self, url_substring: str, message: str = "repository not found") -> None:
        """GitRepositories whose URL contains `url_substring` fail to clone with GitOperationFailed."""
        with self._lock:
            self._clone_failures[url_substring] = message
        self._requeue_all(GIT_REPOSITORIES)

    def clear_clone_failures(self) -> None:
        with self._lock:
            self._clone_failures.clear()
        self._requeue_all(GIT_REPOSITORIES)

    def delay_fetch(self, namespace: str | None, seconds: float) -> None:
        """Make fetching a new upstream revision slow for GitRepositories of `namespace` (None: of all namespaces).

        For `seconds` after a GitRepository first sees a revision its stored artifact does not have, it stays where a
        slow clone leaves it: Ready as it was (True at the old artifact; Unknown "building artifact" before the
        first one), with Reconciling=True when the reconcile was requested or the generation changed, as upstream
        persists it. Then the new artifact is stored. The wait is a timed requeue: no worker thread waits.
        """
        with self._lock:
            self._fetch_delays[namespace] = max(float(seconds), 0.0)
            waiting = list(self._fetch_seen)
        for key in waiting:  # a shorter delay may be over already
            self._queue.add(key)

    def clear_fetch_delay(self, namespace: str | None = None) -> None:
        """End a fetch delay (all of them when `namespace` is None); waiting GitRepositories fetch at once."""
        with self._lock:
            if namespace is None:
                self._fetch_delays.clear()
            else:
                self._fetch_delays.pop(namespace, None)
            waiting = list(self._fetch_seen)
        for key in waiting:
            self._queue.add(key)

    def _fetch_delay(self, namespace: str) -> float | None:
        with self._lock:
            return self._fetch_delays.get(namespace, self._fetch_delays.get(None))

    def _fetch_remaining(self, key: Key, revision: str, delay: float) -> float | None:
        """Seconds the fetch of `revision` must still wait, None when it may happen now."""
        now = time.monotonic()
        with self._lock:
            seen = self._fetch_seen.get(key)
            if seen is None or seen[0] != revision:
                seen = self._fetch_seen[key] = (revision, now)
        remaining = delay - (now - seen[1])
        return remaining if remaining > 0 else None

    def _requeue_all(self, kind: ResourceKind) -> None:
        for obj in self.store.list_objects(kind)["items"]:
            self._queue.add((kind.plural, obj["metadata"]["namespace"], obj["metadata"]["name"]))

    def _is_held(self, namespace: str) -> bool:
        return self._hold_all or namespace in self._held_namespaces

    def hold_if_held(self, key: Key) -> bool:
        """Whether the Kustomization `key` is held now (it is then released by `release`)."""
        with self._lock:
            if self._is_held(key[1]):
                self._held.add(key)
                return True
            return False

    def stalled(self, namespace: str, name: str) -> tuple[str, str] | None:
        """(reason, message) the `stall` knob set for that Kustomization, if any."""
        with self._lock:
            return self._stalls.get((namespace, name))

    # -- events (called under the store lock: only bookkeeping and enqueueing) --

    def _on_change(self, event: ChangeEvent) -> None:
        if event.kind not in (GIT_REPOSITORIES, KUSTOMIZATIONS):
            waiting = self.kustomize.waiting_on(event)  # an applied object changed: its health check looks again
            if waiting is not None:
                self._queue.add(waiting)
            return
        key = (event.kind.plural, event.namespace, event.name)
        if event.kind == KUSTOMIZATIONS:
            self._index_source(event)
        else:
            old_revision = ((event.old or {}).get("status") or {}).get("artifact", {}).get("revision")
            new_revision = (event.obj.get("status") or {}).get("artifact", {}).get("revision")
            if event.type in ("ADDED", "DELETED") or old_revision != new_revision:
                with self._lock:
                    dependents = set(self._dependents.get((event.namespace, event.name), ()))
                for namespace, name in dependents:
                    self._queue.add((KUSTOMIZATIONS.plural, namespace, name))
        if event.type == "DELETED":
            with self._lock:
                self._progress_started.pop(key, None)
                self._failures.pop(key, None)
                self._fetch_seen.pop(key, None)
                self._held.discard(key)
            self.kustomize.forget(key)
            return
        if event.type == "ADDED" or _wants_reconcile(event.old or {}, event.obj):
            self._queue.add(key)

    def _index_source(self, event: ChangeEvent) -> None:
        me = (event.namespace, event.name)
        with self._lock:
            previous = self._source_of.pop(me, None)
            if previous is not None:
                self._dependents.get(previous, set()).discard(me)
            if event.type == "DELETED":
                return
            ref = (event.obj.get("spec") or {}).get("sourceRef") or {}
            source = (str(ref.get("namespace") or event.namespace), str(ref.get("name") or ""))
            self._source_of[me] = source
            self._dependents.setdefault(source, set()).add(me)

    # -- workers --

    def _work(self) -> None:
        while True:
            key = self._queue.get()
            if key is None:
                return
            try:
                delay = self._reconcile(key)
            except Exception:
                log.exception("flux simulator: reconcile of %s/%s/%s failed", *key)
                delay = self.config.source_retry_interval
            finally:
                self._queue.done(key)
            with self._lock:
                self.reconcile_count += 1
                self._reconciles[key] = self._reconciles.get(key, 0) + 1
            if delay is not None:
                self._queue.add(key, delay)

    def _reconcile(self, key: Key) -> float | None:
        plural, namespace, name = key
        if plural == GIT_REPOSITORIES.plural:
            return self._reconcile_git_repository(key, namespace, name)
        return self.kustomize.reconcile(key, namespace, name)

    def write_status(self, kind: ResourceKind, namespace: str, name: str, manager: str,
                     change: Callable[[JsonObj, int], None]) -> JsonObj | None:
        def apply(obj: JsonObj) -> None:
            change(obj.setdefault("status", {}), int(obj["metadata"].get("generation", 1)))
            if not obj["status"]:
                del obj["status"]

        return self.store.mutate(kind, namespace, name, apply, field_manager=manager, subresource="status")

    def ensure_finalizer(self, kind: ResourceKind, obj: JsonObj, manager: str,
                         finalize: Callable[[JsonObj], bool] | None = None) -> bool:
        """Handle deletion and the finalizer; True when this pass is over. `finalize` runs before the finalizer is
        removed (False: it failed, and is retried after `source_retry_interval`)."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        finalizers = obj["metadata"].get("finalizers") or []
        if obj["metadata"].get("deletionTimestamp"):
            if FLUX_FINALIZER in finalizers:
                if finalize is not None and not finalize(obj):
                    self._queue.add((kind.plural, namespace, name), self.config.source_retry_interval)
                    return True
                if kind == GIT_REPOSITORIES:
                    shutil.rmtree(self.artifact_root / "gitrepository" / namespace / name, ignore_errors=True)
                self.store.mutate(kind, namespace, name, lambda o: drop_finalizer(o, FLUX_FINALIZER),
                                  field_manager=manager)
            return True
        if FLUX_FINALIZER not in finalizers:
            self.store.mutate(kind, namespace, name, lambda o: add_finalizer(o, FLUX_FINALIZER),
                              field_manager=manager)
            self._queue.add((kind.plural, namespace, name))
            return True
        return False

    def result_due(self, key: Key) -> float | None:
        """Apply the latency knob: seconds until the result may be written, None when it may be now."""
        if self.config.reconcile_delay <= 0:
            return None
        with self._lock:
            started = self._progress_started.setdefault(key, time.monotonic())
        remaining = self.config.reconcile_delay - (time.monotonic() - started)
        if remaining > 0:
            return remaining
        with self._lock:
            self._progress_started.pop(key, None)
        return None

    def capped(self, seconds: float) -> float:
        return max(0.05, min(seconds, self.config.interval_cap))

    def _backoff(self, key: Key) -> float:
        with self._lock:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
        return self.capped(self.config.source_retry_interval * 2 ** min(failures - 1, 8))

    # -- GitRepository --

    def _reconcile_git_repository(self, key: Key, namespace: str, name: str) -> float | None:
        obj = self.store.find(GIT_REPOSITORIES, namespace, name)
        if obj is None or self.ensure_finalizer(GIT_REPOSITORIES, obj, SOURCE_CONTROLLER):
            return None
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if spec.get("suspend"):
            return None
        url, target = str(spec.get("url", "")), GitTarget.from_spec(spec)
        interval = self.capped(parse_duration(spec.get("interval"), 60.0))
        timeout = parse_duration(spec.get("timeout"), 60.0)
        generation = int(obj["metadata"].get("generation", 1))
        requested = requested_at(obj)
        artifact = status.get("artifact")
        artifact_file = self.artifact_root / str((artifact or {}).get("path", "")) if artifact else None
        up_to_date = (
            artifact_file is not None and artifact_file.is_file() and status.get("observedGeneration") == generation
            and is_true(status, READY) and requested == status.get("lastHandledReconcileAt")
        )
        new_artifact: JsonObj | None = None
        failure: Outcome | None = None
        try:
            auth_header = self._auth_header(namespace, spec)
            injected = self._injected_clone_failure(url)
            if injected:
                raise GitFetchError(injected)
            delay = self._fetch_delay(namespace)
            if up_to_date or delay is not None:
                head = remote_head(url, target, auth_header, timeout)
                upstream = target.revision(head) if head else None
                stored = (artifact or {}).get("revision")
                if up_to_date and upstream == stored:
                    with self._lock:
                        self._failures.pop(key, None)
                        self._fetch_seen.pop(key, None)
                    return interval
                if delay is not None and upstream is not None and upstream != stored:
                    waiting = self._fetch_remaining(key, upstream, delay)
                    if waiting is not None:
                        # A clone still running: only what upstream persists before the checkout shows.
                        if start_is_persisted(status, generation, requested):
                            self.write_status(GIT_REPOSITORIES, namespace, name, SOURCE_CONTROLLER,
                                               lambda s, g: mark_reconcile_started(s, g, status))
                        return waiting
            new_artifact = self._fetch_artifact(namespace, name, url, target, auth_header, timeout, artifact)
        except GitFetchError as error:
            message = f"failed to checkout and determine revision: unable to clone '{url}': {error}"
            failure = Outcome("False", "GitOperationFailed", message)
        except _AuthError as error:
            failure = Outcome("False", "AuthenticationFailed", str(error))
        if failure is not None and already_reported(status, generation, failure, requested):
            return self._backoff(key)  # the same failure again: the status already says it
        found = new_artifact["revision"] if new_artifact is not None else None
        self.write_status(GIT_REPOSITORIES, namespace, name, SOURCE_CONTROLLER,
                           lambda s, g: mark_source_progressing(s, g, status, found))
        remaining = self.result_due(key)
        if remaining is not None:
            return remaining
        if failure is not None:
            self.write_status(GIT_REPOSITORIES, namespace, name, SOURCE_CONTROLLER,
                               lambda s, g: mark_source_failed(s, g, failure, requested))
            log.info("flux simulator: GitRepository %s/%s: %s", namespace, name, failure.message)
            return self._backoff(key)
        assert new_artifact is not None
        ready_artifact = new_artifact
        self.write_status(GIT_REPOSITORIES, namespace, name, SOURCE_CONTROLLER,
                           lambda s, g: mark_source_ready(s, g, ready_artifact, requested))
        with self._lock:
            self._failures.pop(key, None)
            self._fetch_seen.pop(key, None)
        log.info("flux simulator: GitRepository %s/%s stored artifact for revision '%s'",
                 namespace, name, new_artifact["revision"])
        return interval

    def _injected_clone_failure(self, url: str) -> str | None:
        with self._lock:
            return next((m for s, m in self._clone_failures.items() if s in url), None)

    def _auth_header(self, namespace: str, spec: JsonObj) -> str | None:
        secret_name = (spec.get("secretRef") or {}).get("name")
        if not secret_name:
            return None
        secret = self.store.find(SECRETS, namespace, secret_name)
        if secret is None:
            raise _AuthError(f"failed to get secret '{namespace}/{secret_name}': secrets \"{secret_name}\" not found")
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        data.update(secret.get("stringData") or {})
        if "bearerToken" in data:
            return f"Authorization: Bearer {data['bearerToken']}"
        if "username" in data and "password" in data:
            token = base64.b64encode(f"{data['username']}:{data['password']}".encode()).decode()
            return f"Authorization: Basic {token}"
        return None

    def _fetch_artifact(self, namespace: str, name: str, url: str, target: GitTarget, auth_header: str | None,
                        timeout: float, previous: JsonObj | None) -> JsonObj:
        with tempfile.TemporaryDirectory(prefix=f"gitrepository-{namespace}-{name}-") as workdir:
            checkout = Path(workdir) / "checkout"
            sha = clone(url, target, auth_header, timeout, checkout)
            relative = f"gitrepository/{namespace}/{name}/{sha}.tar.gz"
            tarball = self.artifact_root / relative
            write_tarball(checkout, tarball)
        data = tarball.read_bytes()
        revision, digest = target.revision(sha), "sha256:" + hashlib.sha256(data).hexdigest()
        if previous and previous.get("revision") == revision and previous.get("digest") == digest:
            return dict(previous)
        for stale in tarball.parent.glob("*.tar.gz"):
            if stale != tarball:
                stale.unlink(missing_ok=True)
        return {
            "path": relative,
            "url": f"{ARTIFACT_BASE_URL}/{relative}",
            "revision": revision,
            "digest": digest,
            "lastUpdateTime": utc_now(),
            "size": len(data),
        }


class _AuthError(Exception):
    pass


def _wants_reconcile(old: JsonObj, new: JsonObj) -> bool:
    """Flux's event filter: generation changed, or a new reconcile request annotation."""
    old_meta, new_meta = old.get("metadata") or {}, new["metadata"]
    if old_meta.get("generation") != new_meta.get("generation"):
        return True
    return requested_at(old) != requested_at(new) if old else True
