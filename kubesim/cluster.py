"""The sandbox cluster: the simulated API server, its namespace controller and the flux simulator, as one unit.

No kube-apiserver runs here; tests and the demo talk to this simulator through a generated kubeconfig with the
official `kubernetes` client. With `state_file`, the cluster is saved (JSON, atomic replace, debounced) on every
change and on stop, and reloaded on start, so a restarted demo shows the same cluster.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import yaml
from kubernetes import client as kube_client
from kubernetes import config as kube_config

from kubesim.apiserver import FaultInjector, SandboxApiServer
from kubesim.flux_simulator import FluxSimulator, FluxSimulatorConfig
from kubesim.store import ChangeEvent, JsonObj, NamespaceController, ObjectStore
from kubesim.watch import DEFAULT_HISTORY

__all__ = ["FluxSimulatorConfig", "SandboxCluster"]

log = logging.getLogger("kubesim")

CLUSTER_NAME = "provisioner-sandbox"
SAVE_DEBOUNCE_SECONDS = 0.2


class StatePersister:
    """Saves the store to a JSON file shortly after changes (one background thread) and on stop."""

    def __init__(self, store: ObjectStore, path: Path) -> None:
        self._store = store
        self._path = path
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self) -> bool:
        if not self._path.is_file():
            return False
        self._store.restore(json.loads(self._path.read_text()))
        return True

    def start(self) -> None:
        self._stopping.clear()
        self._store.subscribe(self._on_change)
        self._thread = threading.Thread(target=self._run, name="sandbox-state-persister", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._store.unsubscribe(self._on_change)
        self._stopping.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None
        self.save()

    def save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self._store.snapshot(), indent=1, sort_keys=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{self._path.name}.", dir=self._path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
            os.replace(temporary, self._path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def _on_change(self, _: ChangeEvent) -> None:
        self._dirty.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._dirty.wait()
            if self._stopping.is_set():
                return
            self._stopping.wait(SAVE_DEBOUNCE_SECONDS)  # let a burst of writes land in one save
            self._dirty.clear()
            try:
                self.save()
            except OSError:
                log.exception("sandbox: could not save the cluster state to %s", self._path)


class SandboxCluster:
    """A simulated Kubernetes API server with a flux simulator, reachable through a real kubeconfig."""

    def __init__(
        self,
        *,
        state_file: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        flux: FluxSimulatorConfig | None = None,
        artifact_dir: Path | None = None,
        watch_history: int = DEFAULT_HISTORY,
    ) -> None:
        self.store = ObjectStore()
        self.faults = FaultInjector()
        self._apiserver = SandboxApiServer(self.store, host=host, port=port, faults=self.faults,
                                           watch_history=watch_history)
        self._namespace_controller = NamespaceController(self.store)
        self._persister = StatePersister(self.store, state_file) if state_file is not None else None
        self._own_artifact_dir = artifact_dir is None and state_file is None
        if artifact_dir is None:
            artifact_dir = (
                state_file.with_name(state_file.name + ".artifacts")
                if state_file is not None
                else Path(tempfile.mkdtemp(prefix="flux-simulator-artifacts-"))
            )
        self.flux = FluxSimulator(self.store, flux or FluxSimulatorConfig(), artifact_dir)
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start (idempotent); loads `state_file` if it exists."""
        with self._lock:
            if self._started:
                return
            if self._persister is not None:
                if self._persister.load():
                    log.info("sandbox: restored the cluster state (resourceVersion %s)", self.store.resource_version)
                self._persister.start()
            self._apiserver.start()
            self._namespace_controller.start()
            self.flux.start()
            self._started = True

    def stop(self) -> None:
        """Stop the server and the simulator threads; saves the state."""
        with self._lock:
            if not self._started:
                return
            self.flux.stop()
            self._namespace_controller.stop()
            self._apiserver.stop()
            if self._persister is not None:
                self._persister.stop()
            if self._own_artifact_dir:
                shutil.rmtree(self.flux.artifact_root, ignore_errors=True)
            self._started = False

    def __enter__(self) -> SandboxCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self._apiserver.url

    @property
    def active_watches(self) -> int:
        """How many watch streams the API server is serving right now."""
        return self._apiserver.active_watches

    def kubeconfig(self) -> JsonObj:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": CLUSTER_NAME, "cluster": {"server": self.url}}],
            "users": [{"name": CLUSTER_NAME, "user": {}}],
            "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": CLUSTER_NAME}}],
            "current-context": CLUSTER_NAME,
            "preferences": {},
        }

    def write_kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig (cluster, user and context `provisioner-sandbox`, current-context set)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.kubeconfig(), sort_keys=False))
        return path

    def api_client(self) -> kube_client.ApiClient:
        """A real `kubernetes.client.ApiClient` configured from this cluster's kubeconfig."""
        configuration = kube_client.Configuration()
        load: Callable[..., None] = kube_config.load_kube_config_from_dict
        load(self.kubeconfig(), client_configuration=configuration)
        return kube_client.ApiClient(configuration)
