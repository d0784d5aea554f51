"""kubectl (the real binary) against the sandbox: server-side printing, `get -w`, `wait`, chunked lists, `get all`,
and a watch from a resourceVersion the server no longer keeps."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubesim import FluxSimulatorConfig, SandboxCluster
from kubesim.store import ResourceKind
from provisioner.binaries import bundled_binary
from tests.sandbox.conftest import FLUX_KUSTOMIZE, FLUX_SOURCE, Kube, wait_for

READY_MESSAGE = "Applied revision: main@sha1:0123456789abcdef0123456789abcdef01234567"


@dataclass
class Kubectl:
    cluster: SandboxCluster
    kube: Kube
    base: list[str]

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.base, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def kubectl(tmp_path: Path) -> Iterator[Kubectl]:
    with SandboxCluster(flux=FluxSimulatorConfig(enabled=False), watch_history=50) as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        # A per-test discovery cache: ports are reused between tests, kubectl's default cache is keyed by host:port.
        base = [bundled_binary("kubectl"), "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache")]
        kube = Kube.connect(cluster)
        kube.create_namespace("team")
        yield Kubectl(cluster, kube, base)


def kustomization(name: str) -> dict[str, Any]:
    return {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "metadata": {"name": name},
            "spec": {"interval": "5m", "prune": True, "sourceRef": {"kind": "GitRepository", "name": name}}}


def set_ready(kube: Kube, gvp: tuple[str, str, str], name: str, message: str) -> None:
    """Write the Ready condition through the status subresource, as the controllers do."""
    group, version, plural = gvp
    condition = {"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded", "message": message,
                 "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1}
    kube.custom.patch_namespaced_custom_object_status(group, version, "team", plural, name,
                                                      {"status": {"observedGeneration": 1, "conditions": [condition]}})


def lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """A reader thread: the process's stdout, line by line."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def next_line(lines: queue.Queue[str], matching: str, timeout: float = 20) -> str:
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if re.search(matching, line):
            return line
        seen.append(line)
    raise AssertionError(f"no line matching {matching!r} within {timeout}s; saw {seen}")


def test_get_prints_the_flux_printer_columns(kubectl: Kubectl) -> None:
    kube = kubectl.kube
    kube.create(FLUX_SOURCE, "team", {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
                                      "metadata": {"name": "web"},
                                      "spec": {"interval": "1m", "url": "http://git.example/web.git"}})
    kube.create(FLUX_KUSTOMIZE, "team", kustomization("web"))
    set_ready(kube, FLUX_SOURCE, "web", "stored artifact for revision 'main@sha1:0123456789abcdef'")
    set_ready(kube, FLUX_KUSTOMIZE, "web", READY_MESSAGE)

    output = kubectl.run("get", "gitrepositories,kustomizations", "-n", "team").stdout
    sources, kustomizations = (block.splitlines() for block in output.strip().split("\n\n"))
    assert sources[0].split() == ["NAME", "URL", "AGE", "READY", "STATUS"]
    assert re.fullmatch(r"gitrepository\.source\.toolkit\.fluxcd\.io/web\s+http://git\.example/web\.git\s+\d+s\s+"
                        r"True\s+stored artifact for revision 'main@sha1:0123456789abcdef'", sources[1])
    assert kustomizations[0].split() == ["NAME", "AGE", "READY", "STATUS"]
    assert re.fullmatch(rf"kustomization\.kustomize\.toolkit\.fluxcd\.io/web\s+\d+s\s+True\s+{READY_MESSAGE}",
                        kustomizations[1])

    wide = kubectl.run("get", "ks", "-n", "team", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "AGE", "READY", "STATUS"]


def test_get_all_lists_the_all_category(kubectl: Kubectl) -> None:
    store = kubectl.cluster.store
    registry = store.registry
    deployments = registry.lookup("apps", "v1", "deployments") or ResourceKind(
        "apps", "v1", "Deployment", "deployments", True)
    services = registry.lookup("", "v1", "services") or ResourceKind("", "v1", "Service", "services", True)
    registry.register(deployments)
    registry.register(services)
    store.create(deployments, "team", {"metadata": {"name": "web"}, "spec": {
        "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web",
                                                                                        "image": "nginx"}]}}}})
    store.create(services, "team", {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP"}]}})

    output = kubectl.run("get", "all", "-n", "team").stdout
    blocks = {block.splitlines()[1].split()[0].split("/")[0]: block.splitlines()
              for block in output.strip().split("\n\n")}
    assert blocks["service"][0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert blocks["service"][1].split()[:2] == ["service/web", "ClusterIP"]
    assert blocks["service"][1].split()[3:5] == ["<none>", "80/TCP"]
    assert blocks["deployment.apps"][0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert blocks["deployment.apps"][1].split()[:2] == ["deployment.apps/web", "0/2"]
    assert "configmap" not in output  # not in the category


def test_chunked_get_lists_everything(kubectl: Kubectl) -> None:
    for index in range(4):
        kubectl.kube.create(FLUX_KUSTOMIZE, "team", kustomization(f"k{index}"))
    done = kubectl.run("get", "ks", "-n", "team", "--chunk-size=1", "-o", "name", "-v=6")
    assert done.stdout.split() == [f"kustomization.kustomize.toolkit.fluxcd.io/k{i}" for i in range(4)]
    pages = re.findall(r'url="[^"]*/kustomizations\?([^"]*)"', done.stderr)
    assert len(pages) == 4 and all("limit=1" in page for page in pages)
    assert ["continue=" in page for page in pages] == [False, True, True, True]

    table = kubectl.run("get", "ks", "-n", "team", "--chunk-size=2").stdout.splitlines()
    assert [line.split()[0] for line in table] == ["NAME", "k0", "k1", "k2", "k3"]  # one header over all pages


def test_get_watch_sees_a_change(kubectl: Kubectl) -> None:
    kube = kubectl.kube
    kube.create(FLUX_KUSTOMIZE, "team", kustomization("web"))
    process = kubectl.start("get", "ks", "-n", "team", "-w")
    try:
        lines = lines_of(process)
        assert next_line(lines, r"^NAME\s").split() == ["NAME", "AGE", "READY", "STATUS"]
        assert next_line(lines, r"^web\s").split()[0] == "web"
        wait_for(lambda: kubectl.cluster.active_watches == 1, timeout=30, what="kubectl's watch")
        set_ready(kube, FLUX_KUSTOMIZE, "web", READY_MESSAGE)
        assert re.fullmatch(rf"web\s+\d+s\s+True\s+{READY_MESSAGE}", next_line(lines, r"^web\s+\S+\s+True"))
        kube.create(FLUX_KUSTOMIZE, "team", kustomization("api"))
        next_line(lines, r"^api\s")
    finally:
        process.kill()
        process.wait(timeout=10)


def test_wait_returns_when_the_kustomization_turns_ready(kubectl: Kubectl) -> None:
    kube = kubectl.kube
    kube.create(FLUX_KUSTOMIZE, "team", kustomization("web"))
    early = kubectl.run("wait", "--for=condition=Ready", "kustomization/web", "-n", "team", "--timeout=1s",
                        check=False)
    assert early.returncode == 1 and "timed out waiting for the condition" in early.stderr

    process = kubectl.start("wait", "--for=condition=Ready", "kustomization/web", "-n", "team", "--timeout=60s")
    try:
        wait_for(lambda: kubectl.cluster.active_watches == 1 or process.poll() is not None, timeout=30,
                 what="kubectl wait's watch (metadata.name field selector)")
        assert process.poll() is None, process.communicate()
        set_ready(kube, FLUX_KUSTOMIZE, "web", READY_MESSAGE)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert stdout.strip() == "kustomization.kustomize.toolkit.fluxcd.io/web condition met"


def test_watch_from_a_forgotten_resource_version_is_410_expired(kubectl: Kubectl) -> None:
    for index in range(60):  # more changes than the fixture's 50-event history
        kubectl.kube.create(FLUX_KUSTOMIZE, "team", kustomization(f"k{index}"))
    done = kubectl.run("get", "--raw", "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/team/kustomizations"
                                       "?watch=true&resourceVersion=2")
    [event] = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert event["type"] == "ERROR"
    floor = int(kubectl.cluster.store.resource_version) - 50
    assert {k: event["object"][k] for k in ("code", "reason", "message")} == {
        "code": 410, "reason": "Expired", "message": f"too old resource version: 2 ({floor})"}
