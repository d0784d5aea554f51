"""The flux simulator: source-controller and kustomize-controller, reduced to what the sandbox needs.

It reconciles GitRepository and Kustomization objects of the sandbox store the way Flux does (see
/work/shared/reference/kube-and-flux-semantics.md): it really clones the repository over HTTP(S), stores a
deterministic tarball artifact, "builds" the Kustomization path from it (a structural kustomize build: files,
`resources:` entries, object identity — no patches or generators), and writes conditions, artifact and revisions
through the status subresource as `source-controller` / `kustomize-controller`. Nothing is applied to the cluster.

Work is event-driven: store change notifications and timed requeues feed one delay queue served by a few worker
threads; no thread or timer exists per object, so thousands of held objects cost only memory.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import heapq
import io
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from provisioner.sandbox.store import (
    GIT_REPOSITORIES,
    KUSTOMIZATIONS,
    SECRETS,
    ChangeEvent,
    JsonObj,
    ObjectStore,
    ResourceKind,
    utc_now,
)

log = logging.getLogger("provisioner.sandbox.flux")

FLUX_FINALIZER = "finalizers.fluxcd.io"
RECONCILE_REQUEST_ANNOTATION = "reconcile.fluxcd.io/requestedAt"
SOURCE_CONTROLLER = "source-controller"
KUSTOMIZE_CONTROLLER = "kustomize-controller"
ARTIFACT_BASE_URL = "http://source-controller.flux-system.svc.cluster.local."
FLUX_DEPENDENCY_REQUEUE = "30s"  # what Flux prints; the simulator retries after `source_retry_interval`
TERMINAL_ERROR_MESSAGE = "Reconciliation failed terminally due to configuration error"
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")

READY, RECONCILING, STALLED, HEALTHY = "Ready", "Reconciling", "Stalled", "Healthy"
ARTIFACT_IN_STORAGE, FETCH_FAILED = "ArtifactInStorage", "FetchFailed"
ARTIFACT_OUTDATED, NEW_REVISION = "ArtifactOutdated", "NewRevision"
PROGRESSING, PROGRESSING_WITH_RETRY = "Progressing", "ProgressingWithRetry"


@dataclass
class FluxSimulatorConfig:
    reconcile_delay: float = 0.0  # seconds before each reconcile result is written (latency knob)
    source_retry_interval: float = 1.0  # how soon a Kustomization waiting on its source is retried (Flux: 30s)
    enabled: bool = True
    interval_cap: float = 120.0  # periodic reconciles happen at min(spec.interval, this)
    workers: int = 4


# ---- Durations -----------------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None, default: float) -> float:
    """A Go/Flux duration such as `1m30s` in seconds; `default` when absent or malformed."""
    if not text or not re.fullmatch(r"([0-9]+(\.[0-9]+)?(ms|s|m|h))+", text):
        return default
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))


def go_duration(seconds: float) -> str:
    """Go's `time.Duration.String()` for the values Flux prints (`5m0s`, `30s`, `1h0m0s`, `500ms`)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms" if seconds > 0 else "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    sec_text = f"{secs:.9f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{sec_text}"
    if minutes:
        return f"{int(minutes)}m{sec_text}"
    return sec_text


# ---- Conditions (fluxcd/pkg/runtime/conditions semantics) ----------------------------------------------------


def get_condition(status: JsonObj, type_: str) -> JsonObj | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def set_condition(status: JsonObj, type_: str, value: str, reason: str, message: str, generation: int) -> None:
    """Set one condition; lastTransitionTime moves only when its state (status/reason/message/generation) does."""
    condition = {
        "type": type_,
        "status": value,
        "observedGeneration": generation,
        "lastTransitionTime": utc_now(),
        "reason": reason,
        "message": message,
    }
    existing = get_condition(status, type_)
    if existing is not None and all(existing.get(k) == condition[k]
                                    for k in ("status", "reason", "message", "observedGeneration")):
        condition["lastTransitionTime"] = existing["lastTransitionTime"]
    others = [c for c in status.get("conditions") or [] if c.get("type") != type_]
    status["conditions"] = sorted([*others, condition], key=lambda c: (c["type"] != READY, c["type"]))
    if type_ == RECONCILING and value == "True":
        delete_condition(status, STALLED)
    if type_ == STALLED and value == "True":
        delete_condition(status, RECONCILING)


def delete_condition(status: JsonObj, type_: str) -> None:
    if "conditions" in status:
        status["conditions"] = [c for c in status["conditions"] if c.get("type") != type_]


def is_true(status: JsonObj, type_: str) -> bool:
    condition = get_condition(status, type_)
    return condition is not None and condition.get("status") == "True"


# ---- The work queue ------------------------------------------------------------------------------------------

Key = tuple[str, str, str]  # (plural, namespace, name)


class DelayQueue:
    """client-go's workqueue, reduced: deduplicated keys with a due time; a key is never processed twice at once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Key]] = []
        self._due: dict[Key, tuple[float, int]] = {}
        self._active: set[Key] = set()
        self._again: dict[Key, float] = {}
        self._seq = 0
        self._closed = False

    def add(self, key: Key, delay: float = 0.0) -> None:
        with self._cond:
            due = time.monotonic() + max(delay, 0.0)
            if key in self._active:
                if key not in self._again or due < self._again[key]:
                    self._again[key] = due
                return
            self._push(key, due)

    def _push(self, key: Key, due: float) -> None:
        current = self._due.get(key)
        if current is not None and current[0] <= due:
            return
        self._seq += 1
        self._due[key] = (due, self._seq)
        heapq.heappush(self._heap, (due, self._seq, key))
        self._cond.notify()

    def get(self) -> Key | None:
        """The next due key (blocks); None once closed."""
        with self._cond:
            while not self._closed:
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][:2]:
                    heapq.heappop(self._heap)  # superseded by an earlier due time
                if not self._heap:
                    self._cond.wait()
                    continue
                due, _, key = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                del self._due[key]
                self._active.add(key)
                return key
            return None

    def done(self, key: Key) -> None:
        with self._cond:
            self._active.discard(key)
            again = self._again.pop(key, None)
            if again is not None:
                self._push(key, again)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._due) + len(self._active)


# ---- Git and artifacts ---------------------------------------------------------------------------------------


class GitFetchError(Exception):
    """A clone failure, worded like go-git's errors inside Flux messages."""


@dataclass(frozen=True)
class GitTarget:
    branch: str
    tag: str
    commit: str

    @classmethod
    def from_spec(cls, spec: JsonObj) -> GitTarget:
        ref = spec.get("ref") or {}
        tag, commit = str(ref.get("tag") or ""), str(ref.get("commit") or "")
        branch = str(ref.get("branch") or ("" if tag or commit else "master"))  # Flux's default is master
        return cls(branch, tag, commit)

    @property
    def remote_ref(self) -> str:
        return f"refs/tags/{self.tag}" if self.tag else f"refs/heads/{self.branch}"

    def revision(self, sha: str) -> str:
        name = self.tag or self.branch
        return f"{name}@sha1:{sha}" if name else f"sha1:{sha}"


def _git_env(auth_header: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "GIT_ASKPASS": "true"})
    if auth_header:  # through the environment, never argv, so it does not show in process listings
        env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader", "GIT_CONFIG_VALUE_0": auth_header})
    return env


def _git_error(stderr: str, target: GitTarget) -> str:
    text = stderr.strip()
    lowered = text.lower()
    if "remote branch" in lowered and "not found" in lowered:
        return f'couldn\'t find remote ref "{target.remote_ref}"'
    if "authentication failed" in lowered or "could not read username" in lowered or " 401" in lowered:
        return "authentication required"
    if " 403" in lowered:
        return "authorization failed"
    if "not found" in lowered or " 404" in lowered:
        return "repository not found"
    refused = re.search(r"failed to connect to (\S+) port (\d+)", text, re.IGNORECASE)
    if refused:
        return f"dial tcp {refused.group(1)}:{refused.group(2)}: connect: connection refused"
    unresolved = re.search(r"could not resolve host: (\S+)", text, re.IGNORECASE)
    if unresolved:
        return f"dial tcp: lookup {unresolved.group(1)}: no such host"
    lines = [line.removeprefix("fatal: ").strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def _run_git(args: list[str], env: dict[str, str], timeout: float, target: GitTarget) -> str:
    try:
        done = subprocess.run(["git", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise GitFetchError(f"context deadline exceeded after {go_duration(timeout)}") from error
    if done.returncode != 0:
        raise GitFetchError(_git_error(done.stderr, target))
    return done.stdout


def remote_head(url: str, target: GitTarget, auth_header: str | None, timeout: float) -> str | None:
    """The commit the remote ref points at, or None when the target is a pinned commit."""
    if target.commit:
        return target.commit
    output = _run_git(["ls-remote", url, target.remote_ref], _git_env(auth_header), timeout, target)
    for line in output.splitlines():
        sha, _, ref = line.partition("\t")
        if ref in (target.remote_ref, target.remote_ref + "^{}"):
            return sha
    raise GitFetchError(f'couldn\'t find remote ref "{target.remote_ref}"')


def clone(url: str, target: GitTarget, auth_header: str | None, timeout: float, into: Path) -> str:
    """Check `target` out into `into` (shallow where possible); returns the commit sha."""
    env = _git_env(auth_header)
    if target.commit:
        _run_git(["clone", "--quiet", "--no-checkout", url, str(into)], env, timeout, target)
        _run_git(["-C", str(into), "checkout", "--quiet", target.commit], env, timeout, target)
    else:
        _run_git(["clone", "--quiet", "--depth", "1", "--single-branch", "--no-tags",
                  "--branch", target.tag or target.branch, url, str(into)], env, timeout, target)
    return _run_git(["-C", str(into), "rev-parse", "HEAD"], env, timeout, target).strip()


def _tree_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if ".git" in path.relative_to(root).parts:
            continue
        if path.is_file():
            yield path


def write_tarball(source_dir: Path, destination: Path) -> None:
    """A reproducible tar.gz of the checkout (no .git, zeroed times and owners), as Flux stores artifacts."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path in _tree_files(source_dir):
            info = tarfile.TarInfo(path.relative_to(source_dir).as_posix())
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o755 if os.access(path, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    temporary = destination.with_suffix(".tmp")
    temporary.write_bytes(buffer.getvalue())
    temporary.replace(destination)


# ---- A structural kustomize build ----------------------------------------------------------------------------


class BuildError(Exception):
    pass


def _load_documents(path: Path) -> list[JsonObj]:
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as error:
        raise BuildError(f"kustomize build failed: failed to parse {path}: {error}") from error
    for document in documents:
        metadata = document.get("metadata") if isinstance(document, dict) else None
        if not isinstance(document, dict) or not document.get("apiVersion") or not document.get("kind") or not (
            isinstance(metadata, dict) and metadata.get("name")
        ):
            raise BuildError(f"failed to decode Kubernetes apiVersion, kind and name from: {yaml.safe_dump(document)}")
    return documents


def _kustomization_file(directory: Path) -> Path | None:
    return next((directory / n for n in KUSTOMIZATION_FILES if (directory / n).is_file()), None)


def _missing_resource(entry: str, path: Path) -> BuildError:
    return BuildError(
        f"kustomize build failed: accumulating resources: accumulation err='accumulating resources from '{entry}': "
        f"open {path}: no such file or directory': must build at directory: not a valid directory: evalsymlink "
        f"failure on '{path}' : lstat {path}: no such file or directory"
    )


def kustomize_build(root: Path, directory: Path, *, generated: bool = True) -> list[JsonObj]:
    """The objects `kustomize build directory` would emit (structure only); raises BuildError like Flux reports."""
    kustomization_path = _kustomization_file(directory)
    if kustomization_path is None:
        if not generated:
            raise BuildError(
                "kustomize build failed: unable to find one of 'kustomization.yaml', 'kustomization.yml' or "
                f"'Kustomization' in directory '{directory}'"
            )
        # Flux generates a kustomization.yaml listing the manifests it finds when the path has none.
        objects: list[JsonObj] = []
        for path in sorted(directory.iterdir()):
            if path.is_dir() and _kustomization_file(path) is not None:
                objects.extend(kustomize_build(root, path, generated=False))
            elif path.is_file() and path.suffix in (".yaml", ".yml"):
                objects.extend(_load_documents(path))
        return objects
    try:
        kustomization = yaml.safe_load(kustomization_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise BuildError(f"kustomize build failed: invalid Kustomization: {error}") from error
    if not isinstance(kustomization, dict):
        raise BuildError("kustomize build failed: invalid Kustomization: the file is not a YAML map")
    objects = []
    entries = [str(e) for e in [*(kustomization.get("resources") or []), *(kustomization.get("components") or [])]]
    for entry in entries:
        if "://" in entry or entry.startswith(("github.com/", "git@")):
            continue  # a remote base: not fetched by the simulator
        path = Path(os.path.normpath(directory / entry))
        if not path.is_relative_to(root):
            raise BuildError(f"kustomize build failed: security; file '{path}' is not in or below '{root}'")
        if path.is_dir():
            objects.extend(kustomize_build(root, path, generated=False))
        elif path.is_file():
            objects.extend(_load_documents(path))
        else:
            raise _missing_resource(entry, path)
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            obj.setdefault("metadata", {})["namespace"] = namespace
    return objects


def inventory_entries(objects: list[JsonObj], target_namespace: str) -> list[JsonObj]:
    entries = {}
    for obj in objects:
        group, _, version = str(obj["apiVersion"]).rpartition("/")
        namespace = target_namespace or str(obj["metadata"].get("namespace") or "")
        if obj["kind"] == "Namespace":
            namespace = ""
        object_id = f"{namespace}_{obj['metadata']['name']}_{group}_{obj['kind']}"
        entries[object_id] = {"id": object_id, "v": version}
    return [entries[k] for k in sorted(entries)]


# ---- The simulator -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    """One status write's content: a Ready verdict plus the extra fields to set."""

    ready: str
    reason: str
    message: str


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
        log.info("flux simulator started (%d workers, artifacts in %s)", len(self._workers), self.artifact_root)

    def stop(self) -> None:
        self.store.unsubscribe(self._on_change)
        self._queue.close()
        for worker in self._workers:
            worker.join(timeout=10)
        self._workers = []

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

    @property
    def held_count(self) -> int:
        with self._lock:
            return len(self._held)

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

    # -- events (called under the store lock: only bookkeeping and enqueueing) --

    def _on_change(self, event: ChangeEvent) -> None:
        if event.kind not in (GIT_REPOSITORIES, KUSTOMIZATIONS):
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
            if delay is not None:
                self._queue.add(key, delay)

    def _reconcile(self, key: Key) -> float | None:
        plural, namespace, name = key
        if plural == GIT_REPOSITORIES.plural:
            return self._reconcile_git_repository(key, namespace, name)
        return self._reconcile_kustomization(key, namespace, name)

    def _write_status(self, kind: ResourceKind, namespace: str, name: str, manager: str,
                      change: Callable[[JsonObj, int], None]) -> JsonObj | None:
        def apply(obj: JsonObj) -> None:
            change(obj.setdefault("status", {}), int(obj["metadata"].get("generation", 1)))
            if not obj["status"]:
                del obj["status"]

        return self.store.mutate(kind, namespace, name, apply, field_manager=manager, subresource="status")

    def _ensure_finalizer(self, kind: ResourceKind, obj: JsonObj, manager: str) -> bool:
        """Handle deletion and the finalizer; True when this pass is over."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        finalizers = obj["metadata"].get("finalizers") or []
        if obj["metadata"].get("deletionTimestamp"):
            if FLUX_FINALIZER in finalizers:
                if kind == KUSTOMIZATIONS and (obj.get("spec") or {}).get("prune"):
                    log.info("flux simulator: pruning the inventory of Kustomization %s/%s (recorded only)",
                             namespace, name)
                if kind == GIT_REPOSITORIES:
                    shutil.rmtree(self.artifact_root / "gitrepository" / namespace / name, ignore_errors=True)
                self.store.mutate(kind, namespace, name, lambda o: _drop_finalizer(o, FLUX_FINALIZER),
                                  field_manager=manager)
            return True
        if FLUX_FINALIZER not in finalizers:
            self.store.mutate(kind, namespace, name, lambda o: _add_finalizer(o, FLUX_FINALIZER),
                              field_manager=manager)
            self._queue.add((kind.plural, namespace, name))
            return True
        return False

    def _result_due(self, key: Key) -> float | None:
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

    def _capped(self, seconds: float) -> float:
        return max(0.05, min(seconds, self.config.interval_cap))

    def _backoff(self, key: Key) -> float:
        with self._lock:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
        return self._capped(self.config.source_retry_interval * 2 ** min(failures - 1, 8))

    # -- GitRepository --

    def _reconcile_git_repository(self, key: Key, namespace: str, name: str) -> float | None:
        obj = self.store.find(GIT_REPOSITORIES, namespace, name)
        if obj is None or self._ensure_finalizer(GIT_REPOSITORIES, obj, SOURCE_CONTROLLER):
            return None
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if spec.get("suspend"):
            return None
        url, target = str(spec.get("url", "")), GitTarget.from_spec(spec)
        interval = self._capped(parse_duration(spec.get("interval"), 60.0))
        timeout = parse_duration(spec.get("timeout"), 60.0)
        generation = int(obj["metadata"].get("generation", 1))
        requested = _requested_at(obj)
        artifact = status.get("artifact")
        artifact_file = self.artifact_root / str((artifact or {}).get("path", "")) if artifact else None
        up_to_date = (
            artifact_file is not None and artifact_file.is_file() and status.get("observedGeneration") == generation
            and is_true(status, READY) and requested == status.get("lastHandledReconcileAt")
        )
        new_artifact: JsonObj | None = None
        failure: _Outcome | None = None
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
                        if _start_is_persisted(status, generation, requested):
                            self._write_status(GIT_REPOSITORIES, namespace, name, SOURCE_CONTROLLER,
                                               lambda s, g: _mark_reconcile_started(s, g, status))
                        return waiting
            new_artifact = self._fetch_artifact(namespace, name, url, target, auth_header, timeout, artifact)
        except GitFetchError as error:
            message = f"failed to checkout and determine revision: unable to clone '{url}': {error}"
            failure = _Outcome("False", "GitOperationFailed", message)
        except _AuthError as error:
            failure = _Outcome("False", "AuthenticationFailed", str(error))
        if failure is not None and _already_reported(status, generation, failure, requested):
            return self._backoff(key)  # the same failure again: the status already says it
        found = new_artifact["revision"] if new_artifact is not None else None
        self._write_status(GIT_REPOSITORIES, namespace, name, SOURCE_CONTROLLER,
                           lambda s, g: _mark_source_progressing(s, g, status, found))
        remaining = self._result_due(key)
        if remaining is not None:
            return remaining
        if failure is not None:
            self._write_status(GIT_REPOSITORIES, namespace, name, SOURCE_CONTROLLER,
                               lambda s, g: _mark_source_failed(s, g, failure, requested))
            log.info("flux simulator: GitRepository %s/%s: %s", namespace, name, failure.message)
            return self._backoff(key)
        assert new_artifact is not None
        ready_artifact = new_artifact
        self._write_status(GIT_REPOSITORIES, namespace, name, SOURCE_CONTROLLER,
                           lambda s, g: _mark_source_ready(s, g, ready_artifact, requested))
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

    # -- Kustomization --

    def _reconcile_kustomization(self, key: Key, namespace: str, name: str) -> float | None:
        obj = self.store.find(KUSTOMIZATIONS, namespace, name)
        if obj is None or self._ensure_finalizer(KUSTOMIZATIONS, obj, KUSTOMIZE_CONTROLLER):
            return None
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if spec.get("suspend"):
            return None
        generation = int(obj["metadata"].get("generation", 1))
        requested = _requested_at(obj)
        interval = parse_duration(spec.get("interval"), 600.0)
        retry = self._capped(parse_duration(spec.get("retryInterval"), interval))
        with self._lock:
            stall = self._stalls.get((namespace, name))
        if stall is not None:
            self._write_kustomization(namespace, name, _Outcome("False", *stall), requested, stalled=True)
            return None
        source_ref = spec.get("sourceRef") or {}
        source_name = str(source_ref.get("name", ""))
        if source_ref.get("kind") != GIT_REPOSITORIES.kind:
            message = f"source `{source_name}` kind '{source_ref.get('kind')}' not supported"
            self._write_kustomization(namespace, name, _Outcome("False", "ArtifactFailed", message), requested)
            return retry
        source = self.store.find(GIT_REPOSITORIES, str(source_ref.get("namespace") or namespace), source_name)
        if source is None:
            message = f'{GIT_REPOSITORIES.qualified_kind} "{source_name}" not found'
            self._write_kustomization(namespace, name, _Outcome("False", "ArtifactFailed", message), requested)
            return self.config.source_retry_interval
        artifact = (source.get("status") or {}).get("artifact")
        if not artifact:
            message = f"Source artifact not found, retrying in {FLUX_DEPENDENCY_REQUEUE}"
            self._write_kustomization(namespace, name, _Outcome("False", "ArtifactFailed", message), requested)
            return self.config.source_retry_interval
        not_ready = self._unready_dependency(namespace, spec)
        if not_ready:
            outcome = _Outcome("False", "DependencyNotReady", f"dependency '{not_ready}' is not ready")
            self._write_kustomization(namespace, name, outcome, requested)
            return self.config.source_retry_interval
        revision = str(artifact["revision"])
        if (status.get("observedGeneration") == generation and is_true(status, READY)
                and status.get("lastAppliedRevision") == revision
                and status.get("lastHandledReconcileAt") == requested):
            return self._capped(interval)  # nothing new: a real reconcile would write the same status
        outcome, attempted, inventory = self._build(obj, artifact)
        if outcome.ready != "True" and _already_reported(status, generation, outcome, requested):
            return retry  # the same failure again: the status already says it
        timeout = max(parse_duration(spec.get("timeout"), interval - 30), 30.0)
        progressing = f"Fetching manifests for revision {revision} with a timeout of {go_duration(timeout)}"
        self._write_status(KUSTOMIZATIONS, namespace, name, KUSTOMIZE_CONTROLLER,
                           lambda s, g: _mark_kustomization_progressing(s, g, progressing))
        with self._lock:
            if self._is_held(namespace):
                self._held.add(key)
                return None
        remaining = self._result_due(key)
        if remaining is not None:
            return remaining
        self._write_kustomization(namespace, name, outcome, requested, revision=revision if attempted else None,
                                  inventory=inventory)
        log.info("flux simulator: Kustomization %s/%s: %s", namespace, name, outcome.message)
        return self._capped(interval) if outcome.ready == "True" else retry

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

    def _build(self, obj: JsonObj, artifact: JsonObj) -> tuple[_Outcome, bool, list[JsonObj] | None]:
        """Fetch the artifact into /tmp/kustomization-<n>, check the path, build. (outcome, attempted, inventory)"""
        spec = obj.get("spec") or {}
        tarball = self.artifact_root / str(artifact.get("path", ""))
        if not tarball.is_file():
            message = f"Source is not ready, artifact not found, retrying in {FLUX_DEPENDENCY_REQUEUE}"
            return _Outcome("False", "ArtifactFailed", message), False, None
        # A stable directory per object keeps failure messages identical between retries.
        work_dir = Path(tempfile.gettempdir()) / f"kustomization-{zlib.crc32(obj['metadata']['uid'].encode())}"
        shutil.rmtree(work_dir, ignore_errors=True)
        try:
            work_dir.mkdir(parents=True)
            with tarfile.open(tarball, "r:gz") as tar:
                tar.extractall(work_dir, filter="data")
            path = Path(os.path.normpath(work_dir / str(spec.get("path") or "./").lstrip("/")))
            if not path.is_relative_to(work_dir) or not path.exists():
                message = f"kustomization path not found: stat {path}: no such file or directory"
                return _Outcome("False", "ArtifactFailed", message), False, None
            try:
                objects = kustomize_build(work_dir, path)
            except BuildError as error:
                return _Outcome("False", "BuildFailed", str(error)), True, None
            inventory = inventory_entries(objects, str(spec.get("targetNamespace") or ""))
            return _Outcome("True", "ReconciliationSucceeded", f"Applied revision: {artifact['revision']}"), True, (
                inventory
            )
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    def _write_kustomization(
        self,
        namespace: str,
        name: str,
        outcome: _Outcome,
        requested: str | None,
        *,
        stalled: bool = False,
        revision: str | None = None,
        inventory: list[JsonObj] | None = None,
    ) -> None:
        def change(status: JsonObj, generation: int) -> None:
            set_condition(status, READY, outcome.ready, outcome.reason, outcome.message, generation)
            if stalled:
                set_condition(status, STALLED, "True", outcome.reason, outcome.message, generation)
                status["observedGeneration"] = generation
            elif outcome.ready == "True":
                delete_condition(status, RECONCILING)
                delete_condition(status, STALLED)
                delete_condition(status, HEALTHY)
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

        self._write_status(KUSTOMIZATIONS, namespace, name, KUSTOMIZE_CONTROLLER, change)


class _AuthError(Exception):
    pass


def _requested_at(obj: JsonObj) -> str | None:
    value = (obj["metadata"].get("annotations") or {}).get(RECONCILE_REQUEST_ANNOTATION)
    return str(value) if value is not None else None


def _wants_reconcile(old: JsonObj, new: JsonObj) -> bool:
    """Flux's event filter: generation changed, or a new reconcile request annotation."""
    old_meta, new_meta = old.get("metadata") or {}, new["metadata"]
    if old_meta.get("generation") != new_meta.get("generation"):
        return True
    return _requested_at(old) != _requested_at(new) if old else True


def _add_finalizer(obj: JsonObj, finalizer: str) -> None:
    finalizers = obj["metadata"].setdefault("finalizers", [])
    if finalizer not in finalizers:
        finalizers.append(finalizer)


def _drop_finalizer(obj: JsonObj, finalizer: str) -> None:
    obj["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or [] if f != finalizer]
    if not obj["metadata"]["finalizers"]:
        del obj["metadata"]["finalizers"]


def _progressive_status(status: JsonObj, generation: int, drift: bool, message: str) -> None:
    """fluxcd/pkg runtime/reconcile ProgressiveStatus: Reconciling=True always (conditions.MarkReconciling also drops
    Stalled); Ready=Unknown only on drift or when Ready is absent or already Unknown, so a Ready=True (or False)
    from the previous reconcile stays until something new is found."""
    set_condition(status, RECONCILING, "True", PROGRESSING, message, generation)
    ready = get_condition(status, READY)
    if drift or ready is None or ready.get("status") == "Unknown":
        set_condition(status, READY, "Unknown", PROGRESSING, message, generation)


def _start_is_persisted(previous: JsonObj, generation: int, requested: str | None) -> bool:
    """Whether upstream patches the start-of-reconcile status before the checkout: gitrepository_controller.go
    reconcile() does when the generation differs or a reconcile was requested; reconcileStorage() when there is no
    artifact. A plain interval reconcile shows nothing until it finds a new revision or ends."""
    return (not previous.get("artifact") or int(previous.get("observedGeneration") or 0) != generation
            or requested != previous.get("lastHandledReconcileAt"))


def _mark_reconcile_started(status: JsonObj, generation: int, previous: JsonObj) -> None:
    """What a GitRepository shows while its checkout runs (source-controller gitrepository_controller.go)."""
    if not previous.get("artifact"):
        # reconcileStorage(): no artifact yet -> ProgressiveStatus(true, ..., "building artifact").
        _progressive_status(status, generation, True, "building artifact")
        delete_condition(status, ARTIFACT_IN_STORAGE)
        return
    observed = int(previous.get("observedGeneration") or 0)
    if observed != generation:
        # reconcile(): ProgressiveStatus(false, ..., "processing object: new generation %d -> %d").
        message = f"processing object: new generation {observed} -> {generation}"
    else:
        # reconcile(): ProgressiveStatus(false, obj, meta.ProgressingReason, "reconciliation in progress").
        message = "reconciliation in progress"
    _progressive_status(status, generation, False, message)


def _mark_source_progressing(status: JsonObj, generation: int, previous: JsonObj, found: str | None) -> None:
    """The status after the checkout, before the artifact is stored (or the failure is reported)."""
    _mark_reconcile_started(status, generation, previous)
    if found is not None and (previous.get("artifact") or {}).get("revision") != found:
        # reconcileSource(): "Mark observations about the revision on the object" -- ArtifactOutdated only when an
        # artifact exists, then ProgressiveStatus(true, ..., "building artifact: %s"), which turns Ready Unknown.
        message = f"new upstream revision '{found}'"
        if previous.get("artifact"):
            set_condition(status, ARTIFACT_OUTDATED, "True", NEW_REVISION, message, generation)
        _progressive_status(status, generation, True, f"building artifact: {message}")


def _already_reported(status: JsonObj, generation: int, outcome: _Outcome, requested: str | None) -> bool:
    ready = get_condition(status, READY)
    return (
        ready is not None and ready.get("status") == outcome.ready and ready.get("reason") == outcome.reason
        and ready.get("message") == outcome.message and ready.get("observedGeneration") == generation
        and status.get("lastHandledReconcileAt") == requested
    )


def _mark_source_failed(status: JsonObj, generation: int, failure: _Outcome, requested: str | None) -> None:
    delete_condition(status, ARTIFACT_OUTDATED)  # reconcileSource() drops it before the checkout
    set_condition(status, FETCH_FAILED, "True", failure.reason, failure.message, generation)
    set_condition(status, READY, "False", failure.reason, failure.message, generation)
    reconciling = get_condition(status, RECONCILING)
    if reconciling is not None:
        reconciling["reason"] = PROGRESSING_WITH_RETRY
    if requested is not None:
        status["lastHandledReconcileAt"] = requested


def _mark_source_ready(status: JsonObj, generation: int, artifact: JsonObj, requested: str | None) -> None:
    """reconcileArtifact() stores it (ArtifactInStorage "stored artifact for revision '...'"); the summary makes Ready
    True from it and runtime/reconcile ResultFinalizer.Finalize drops Reconciling on success."""
    message = f"stored artifact for revision '{artifact['revision']}'"
    status["artifact"] = copy.deepcopy(artifact)
    delete_condition(status, FETCH_FAILED)
    delete_condition(status, ARTIFACT_OUTDATED)  # reconcileArtifact()'s deferred clean-up once the revision is stored
    delete_condition(status, RECONCILING)
    delete_condition(status, STALLED)
    set_condition(status, ARTIFACT_IN_STORAGE, "True", "Succeeded", message, generation)
    set_condition(status, READY, "True", "Succeeded", message, generation)
    status["observedGeneration"] = generation
    if requested is not None:
        status["lastHandledReconcileAt"] = requested


def _mark_kustomization_progressing(status: JsonObj, generation: int, message: str) -> None:
    set_condition(status, READY, "Unknown", PROGRESSING, "Reconciliation in progress", generation)
    set_condition(status, RECONCILING, "True", PROGRESSING, message, generation)
