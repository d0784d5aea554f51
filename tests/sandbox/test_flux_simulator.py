"""The flux simulator against a real git smart-HTTP server, observed through the official kubernetes client."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kubesim import FluxSimulatorConfig, SandboxCluster
from kubesim.flux_simulator import go_duration, parse_duration
from kubesim.store import KUSTOMIZATIONS
from tests.sandbox.conftest import FLUX_KUSTOMIZE, FLUX_SOURCE, GitServer, Kube, wait_for

OVERLAY = "k8s/overlays/development"
DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
"""
GOOD_TREE = {
    f"{OVERLAY}/kustomization.yaml": "resources:\n  - ../../base\n",
    "k8s/base/kustomization.yaml": "resources:\n  - deployment.yaml\n",
    "k8s/base/deployment.yaml": DEPLOYMENT,
}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def provision(kube: Kube, namespace: str, url: str, path: str = f"./{OVERLAY}", **ks_spec: Any) -> None:
    """What the project's flux activity does: namespace, GitRepository and Kustomization by server-side apply."""
    kube.create_namespace(namespace)
    source = {
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": namespace, "namespace": namespace},
        "spec": {"interval": "1m", "url": url, "ref": {"branch": "main"}},
    }
    ks = {
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": namespace, "namespace": namespace},
        "spec": {"interval": "5m", "prune": True, "path": path, "targetNamespace": namespace,
                 "sourceRef": {"kind": "GitRepository", "name": namespace}, **ks_spec},
    }
    for body, gvp in ((source, FLUX_SOURCE), (ks, FLUX_KUSTOMIZE)):
        kube.patch(gvp, namespace, namespace, body, field_manager="provisioner", force=True,
                   _content_type="application/apply-patch+yaml")


def wait_ready(kube: Kube, gvp: tuple[str, str, str], namespace: str, name: str,
               status: str = "True", reason: str | None = None, timeout: float = 10.0,
               message: str = "") -> dict[str, Any]:
    """Wait for a Ready condition; `message` (a prefix) tells apart failures that share a reason."""
    def probe() -> dict[str, Any] | None:
        obj = kube.get(gvp, namespace, name)
        ready = condition(obj, "Ready")
        if (ready and ready["status"] == status and (reason is None or ready["reason"] == reason)
                and ready["message"].startswith(message)):
            return obj
        return None

    return wait_for(probe, timeout, what=f"{name} Ready={status} {reason or ''}")


def test_durations() -> None:
    assert parse_duration("1m30s", 0) == 90
    assert parse_duration("500ms", 0) == 0.5
    assert parse_duration("bogus", 7) == 7
    assert [go_duration(s) for s in (300, 30, 3600, 90, 0.5)] == ["5m0s", "30s", "1h0m0s", "1m30s", "500ms"]


def test_ready_path_reports_the_applied_revision(kube: Kube, git_server: GitServer) -> None:
    sha = git_server.commit("ready", GOOD_TREE)
    provision(kube, "ready", git_server.url("ready"))

    ks = wait_ready(kube, FLUX_KUSTOMIZE, "ready", "ready")
    revision = f"main@sha1:{sha}"
    ready = condition(ks, "Ready")
    assert ready is not None
    assert (ready["reason"], ready["message"]) == ("ReconciliationSucceeded", f"Applied revision: {revision}")
    assert ready["observedGeneration"] == ks["metadata"]["generation"] == ks["status"]["observedGeneration"]
    assert condition(ks, "Reconciling") is None
    assert ks["status"]["lastAppliedRevision"] == ks["status"]["lastAttemptedRevision"] == revision
    assert ks["status"]["inventory"] == {"entries": [{"id": "ready_web_apps_Deployment", "v": "v1"}]}
    assert ks["metadata"]["finalizers"] == ["finalizers.fluxcd.io"]
    managers = {(e["manager"], e.get("subresource", "")) for e in ks["metadata"]["managedFields"]}
    assert ("kustomize-controller", "status") in managers

    source = kube.get(FLUX_SOURCE, "ready", "ready")
    artifact = source["status"]["artifact"]
    assert artifact["revision"] == revision
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", artifact["digest"])
    assert artifact["path"] == f"gitrepository/ready/ready/{sha}.tar.gz"
    assert artifact["url"].endswith(artifact["path"]) and artifact["size"] > 0
    for type_ in ("Ready", "ArtifactInStorage"):
        cond = condition(source, type_)
        assert cond is not None
        assert (cond["status"], cond["reason"], cond["message"]) == (
            "True", "Succeeded", f"stored artifact for revision '{revision}'")


def test_settled_objects_are_not_rewritten(git_server: GitServer) -> None:
    """Periodic reconciles that find nothing new leave resourceVersions alone (the idempotency tests rely on it)."""
    sha = git_server.commit("settled", GOOD_TREE)
    with SandboxCluster(flux=FluxSimulatorConfig(interval_cap=0.1)) as cluster:
        kube = Kube.connect(cluster)
        provision(kube, "settled", git_server.url("settled"))
        ks = wait_ready(kube, FLUX_KUSTOMIZE, "settled", "settled")
        source = kube.get(FLUX_SOURCE, "settled", "settled")
        reconciles = cluster.flux.reconcile_count
        wait_for(lambda: cluster.flux.reconcile_count >= reconciles + 6, what="periodic reconciles")
        assert kube.get(FLUX_KUSTOMIZE, "settled", "settled") == ks
        assert kube.get(FLUX_SOURCE, "settled", "settled") == source
        assert ks["status"]["lastAppliedRevision"] == f"main@sha1:{sha}"


def test_missing_path_is_artifact_failed(kube: Kube, git_server: GitServer) -> None:
    git_server.commit("nopath", GOOD_TREE)
    # retryInterval 100ms: the failed Kustomization is retried ten times a second (Flux: every spec.interval).
    provision(kube, "nopath", git_server.url("nopath"), path="./k8s/overlays/staging", retryInterval="100ms")

    # Until the source is fetched the reason is ArtifactFailed too ("Source artifact not found"): wait for the path.
    ks = wait_ready(kube, FLUX_KUSTOMIZE, "nopath", "nopath", status="False", reason="ArtifactFailed",
                    message="kustomization path not found")
    ready = condition(ks, "Ready")
    assert ready is not None
    assert re.fullmatch(r"kustomization path not found: stat /tmp/kustomization-\d+/k8s/overlays/staging: "
                        r"no such file or directory", ready["message"])
    reconciling = condition(ks, "Reconciling")
    assert reconciling is not None and reconciling["reason"] == "ProgressingWithRetry"
    rv = ks["metadata"]["resourceVersion"]
    # Several retries later (each builds the path again and finds it missing), the same failure is not rewritten.
    retried = kube.cluster.flux.reconciles_of(KUSTOMIZATIONS, "nopath", "nopath") + 3
    wait_for(lambda: kube.cluster.flux.reconciles_of(KUSTOMIZATIONS, "nopath", "nopath") >= retried,
             what="three more reconciles of the failed Kustomization")
    assert kube.get(FLUX_KUSTOMIZE, "nopath", "nopath")["metadata"]["resourceVersion"] == rv


def test_missing_resource_is_build_failed(kube: Kube, git_server: GitServer) -> None:
    tree = dict(GOOD_TREE)
    tree["k8s/base/kustomization.yaml"] = "resources:\n  - deployment.yaml\n  - service.yaml\n"
    sha = git_server.commit("nobuild", tree)
    provision(kube, "nobuild", git_server.url("nobuild"))

    ks = wait_ready(kube, FLUX_KUSTOMIZE, "nobuild", "nobuild", status="False", reason="BuildFailed")
    ready = condition(ks, "Ready")
    assert ready is not None
    # kustomize's own words (api/internal/target kusttarget.go accumulateResources), in the artifact's tmp dir.
    expected = (
        "kustomize build failed: accumulating resources: accumulation err='accumulating resources from "
        "'../../base': read {root}/k8s/base: is a directory': recursed accumulation of path '{root}/k8s/base': "
        "accumulating resources: accumulation err='accumulating resources from 'service.yaml': open "
        "{root}/k8s/base/service.yaml: no such file or directory': must build at directory: not a valid directory: "
        "evalsymlink failure on '{root}/k8s/base/service.yaml' : lstat {root}/k8s/base/service.yaml: no such file "
        "or directory"
    )
    root = re.match(r".*?'(/tmp/kustomization-\d+)/", ready["message"])
    assert root is not None and ready["message"] == expected.format(root=root.group(1))
    assert ks["status"]["lastAttemptedRevision"] == f"main@sha1:{sha}"
    assert "lastAppliedRevision" not in ks["status"]


def test_missing_repository_is_git_operation_failed(kube: Kube, git_server: GitServer) -> None:
    url = git_server.url("does-not-exist")
    provision(kube, "norepo", url)

    source = wait_ready(kube, FLUX_SOURCE, "norepo", "norepo", status="False", reason="GitOperationFailed")
    expected = f"failed to checkout and determine revision: unable to clone '{url}': repository not found"
    fetch_failed = condition(source, "FetchFailed")
    assert fetch_failed is not None
    assert (fetch_failed["status"], fetch_failed["message"]) == ("True", expected)
    assert condition(source, "Ready")["message"] == expected  # type: ignore[index]

    ks = wait_ready(kube, FLUX_KUSTOMIZE, "norepo", "norepo", status="False", reason="ArtifactFailed")
    assert condition(ks, "Ready")["message"] == "Source artifact not found, retrying in 30s"  # type: ignore[index]


def test_source_appearing_later_is_picked_up(kube: Kube, git_server: GitServer) -> None:
    sha = git_server.commit("late", GOOD_TREE)
    kube.create_namespace("late")
    ks_body = {
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": "late", "namespace": "late"},
        "spec": {"interval": "5m", "prune": True, "path": f"./{OVERLAY}", "targetNamespace": "late",
                 "sourceRef": {"kind": "GitRepository", "name": "late"}},
    }
    kube.create(FLUX_KUSTOMIZE, "late", ks_body)
    ks = wait_ready(kube, FLUX_KUSTOMIZE, "late", "late", status="False", reason="ArtifactFailed")
    assert condition(ks, "Ready")["message"] == (  # type: ignore[index]
        'GitRepository.source.toolkit.fluxcd.io "late" not found')

    kube.create(FLUX_SOURCE, "late", {
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": "late", "namespace": "late"},
        "spec": {"interval": "1m", "url": git_server.url("late"), "ref": {"branch": "main"}},
    })
    ks = wait_ready(kube, FLUX_KUSTOMIZE, "late", "late")
    assert ks["status"]["lastAppliedRevision"] == f"main@sha1:{sha}"


def test_reconcile_request_picks_up_a_new_commit(kube: Kube, git_server: GitServer) -> None:
    git_server.commit("bump", GOOD_TREE)
    provision(kube, "bump", git_server.url("bump"))
    wait_ready(kube, FLUX_KUSTOMIZE, "bump", "bump")

    tree = dict(GOOD_TREE)
    tree["k8s/base/deployment.yaml"] = DEPLOYMENT.replace("replicas: 1", "replicas: 2")
    new_sha = git_server.commit("bump", tree)
    annotation = {"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "2025-01-01T00:00:00Z"}}}
    kube.patch(FLUX_SOURCE, "bump", "bump", annotation)

    def applied() -> dict[str, Any] | None:
        obj = kube.get(FLUX_KUSTOMIZE, "bump", "bump")
        return obj if obj["status"].get("lastAppliedRevision") == f"main@sha1:{new_sha}" else None

    ks = wait_for(applied, what="the new revision applied")
    assert condition(ks, "Ready")["message"] == f"Applied revision: main@sha1:{new_sha}"  # type: ignore[index]
    assert kube.get(FLUX_SOURCE, "bump", "bump")["status"]["lastHandledReconcileAt"] == "2025-01-01T00:00:00Z"


def test_stall_knob(kube: Kube, git_server: GitServer) -> None:
    git_server.commit("stall", GOOD_TREE)
    kube.cluster.flux.stall("stall", "stall", reason="InvalidCELExpression", message="boom")
    provision(kube, "stall", git_server.url("stall"))

    ks = wait_ready(kube, FLUX_KUSTOMIZE, "stall", "stall", status="False", reason="InvalidCELExpression")
    stalled = condition(ks, "Stalled")
    assert stalled is not None and (stalled["status"], stalled["message"]) == ("True", "boom")
    assert condition(ks, "Reconciling") is None
    assert ks["status"]["observedGeneration"] == ks["metadata"]["generation"]

    kube.cluster.flux.unstall("stall", "stall")
    ks = wait_ready(kube, FLUX_KUSTOMIZE, "stall", "stall")
    assert condition(ks, "Stalled") is None


def test_hold_and_release(kube: Kube, git_server: GitServer) -> None:
    sha = git_server.commit("held", GOOD_TREE)
    kube.cluster.flux.hold("held")
    provision(kube, "held", git_server.url("held"))

    ks = wait_ready(kube, FLUX_KUSTOMIZE, "held", "held", status="Unknown", reason="Progressing")
    assert condition(ks, "Ready")["message"] == "Reconciliation in progress"  # type: ignore[index]
    reconciling = condition(ks, "Reconciling")
    assert reconciling is not None and reconciling["message"] == (
        f"Fetching manifests for revision main@sha1:{sha} with a timeout of 4m30s")
    wait_for(lambda: kube.cluster.flux.held_count == 1, what="the held Kustomization")

    # A reconcile request makes the simulator look at it again: it stays held, Progressing, its request unhandled.
    looked_at = kube.cluster.flux.reconciles_of(KUSTOMIZATIONS, "held", "held") + 1
    token = "2025-01-02T00:00:00Z"
    request = {"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": token}}}
    kube.patch(FLUX_KUSTOMIZE, "held", "held", request)
    wait_for(lambda: kube.cluster.flux.reconciles_of(KUSTOMIZATIONS, "held", "held") >= looked_at,
             what="the held Kustomization reconciled again")
    ks = kube.get(FLUX_KUSTOMIZE, "held", "held")
    ready = condition(ks, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("Unknown", "Progressing")
    assert "lastAppliedRevision" not in ks["status"] and "lastHandledReconcileAt" not in ks["status"]
    assert kube.cluster.flux.held_count == 1

    kube.cluster.flux.release()
    ks = wait_ready(kube, FLUX_KUSTOMIZE, "held", "held")
    assert (ks["status"]["lastAppliedRevision"], ks["status"]["lastHandledReconcileAt"]) == (f"main@sha1:{sha}", token)
    assert kube.cluster.flux.held_count == 0


def test_fail_clone_knob(kube: Kube, git_server: GitServer) -> None:
    git_server.commit("flaky", GOOD_TREE)
    kube.cluster.flux.fail_clone("flaky", "authentication required")
    provision(kube, "flaky", git_server.url("flaky"))
    source = wait_ready(kube, FLUX_SOURCE, "flaky", "flaky", status="False", reason="GitOperationFailed")
    assert condition(source, "Ready")["message"].endswith(": authentication required")  # type: ignore[index]

    kube.cluster.flux.clear_clone_failures()
    wait_ready(kube, FLUX_KUSTOMIZE, "flaky", "flaky")


def test_reconcile_delay_shows_progress_first(git_server: GitServer) -> None:
    git_server.commit("slow", GOOD_TREE)
    with SandboxCluster(flux=FluxSimulatorConfig(reconcile_delay=0.4)) as cluster:
        kube = Kube.connect(cluster)
        provision(kube, "slow", git_server.url("slow"))
        wait_ready(kube, FLUX_SOURCE, "slow", "slow", status="Unknown", reason="Progressing")
        wait_ready(kube, FLUX_KUSTOMIZE, "slow", "slow", status="Unknown", reason="Progressing")
        wait_ready(kube, FLUX_KUSTOMIZE, "slow", "slow")


def _push_and_request(kube: Kube, git_server: GitServer, name: str, token: str) -> str:
    """A second commit (replicas: 2) and a reconcile request on the GitRepository, as `flux reconcile` does."""
    tree = dict(GOOD_TREE)
    tree["k8s/base/deployment.yaml"] = DEPLOYMENT.replace("replicas: 1", "replicas: 2")
    sha = git_server.commit(name, tree)
    kube.patch(FLUX_SOURCE, name, name, {"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": token}}})
    return sha


def test_a_slow_fetch_keeps_the_old_artifact_ready_while_reconciling(kube: Kube, git_server: GitServer) -> None:
    """source-controller keeps Ready=True for the stored artifact while it fetches; only a new revision changes it."""
    old = f"main@sha1:{git_server.commit('slowfetch', GOOD_TREE)}"
    provision(kube, "slowfetch", git_server.url("slowfetch"))
    wait_ready(kube, FLUX_KUSTOMIZE, "slowfetch", "slowfetch")
    delay = 1.5
    kube.cluster.flux.delay_fetch("slowfetch", delay)
    requested_at = time.monotonic()
    new = f"main@sha1:{_push_and_request(kube, git_server, 'slowfetch', '2025-02-01T00:00:00Z')}"

    def fetching() -> tuple[dict[str, Any], dict[str, Any]] | None:
        ks = kube.get(FLUX_KUSTOMIZE, "slowfetch", "slowfetch")  # read first: the source below is no newer
        source = kube.get(FLUX_SOURCE, "slowfetch", "slowfetch")
        reconciling = condition(source, "Reconciling")
        if source["status"]["artifact"]["revision"] == old and reconciling and reconciling["status"] == "True":
            return source, ks
        return None

    source, ks = wait_for(fetching, what="the GitRepository reconciling at its old artifact")
    ready, reconciling = condition(source, "Ready"), condition(source, "Reconciling")
    assert ready is not None and reconciling is not None
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "True", "Succeeded", f"stored artifact for revision '{old}'")
    assert (reconciling["reason"], reconciling["message"]) == ("Progressing", "reconciliation in progress")
    assert condition(source, "ArtifactOutdated") is None
    assert "lastHandledReconcileAt" not in source["status"]  # written when the reconcile ends
    assert ks["status"]["lastAppliedRevision"] == old
    assert condition(ks, "Ready")["status"] == "True"  # type: ignore[index]

    def stored() -> dict[str, Any] | None:
        obj = kube.get(FLUX_SOURCE, "slowfetch", "slowfetch")
        return obj if obj["status"]["artifact"]["revision"] == new else None

    source = wait_for(stored, what="the new artifact")
    assert time.monotonic() - requested_at >= delay
    ready = condition(source, "Ready")
    assert ready is not None and (ready["status"], ready["message"]) == (
        "True", f"stored artifact for revision '{new}'")
    assert condition(source, "Reconciling") is None and condition(source, "ArtifactOutdated") is None
    assert source["status"]["lastHandledReconcileAt"] == "2025-02-01T00:00:00Z"

    def applied() -> dict[str, Any] | None:
        obj = kube.get(FLUX_KUSTOMIZE, "slowfetch", "slowfetch")
        return obj if obj["status"].get("lastAppliedRevision") == new and condition(obj, "Reconciling") is None \
            else None

    ks = wait_for(applied, what="the new revision applied")
    assert condition(ks, "Ready")["message"] == f"Applied revision: {new}"  # type: ignore[index]
    source = kube.get(FLUX_SOURCE, "slowfetch", "slowfetch")
    # One cluster-wide resourceVersion counter: the artifact was stored before the Kustomization applied it.
    assert int(source["metadata"]["resourceVersion"]) < int(ks["metadata"]["resourceVersion"])


def test_a_new_revision_marks_the_artifact_outdated(git_server: GitServer) -> None:
    """Once the checkout finds a new revision: ArtifactOutdated=True NewRevision and Ready=Unknown until stored."""
    old = f"main@sha1:{git_server.commit('outdated', GOOD_TREE)}"
    with SandboxCluster(flux=FluxSimulatorConfig(reconcile_delay=0.6, source_retry_interval=0.2)) as cluster:
        kube = Kube.connect(cluster)
        provision(kube, "outdated", git_server.url("outdated"))
        wait_ready(kube, FLUX_KUSTOMIZE, "outdated", "outdated")
        new = f"main@sha1:{_push_and_request(kube, git_server, 'outdated', '2025-02-02T00:00:00Z')}"

        source = wait_ready(kube, FLUX_SOURCE, "outdated", "outdated", status="Unknown", reason="Progressing",
                            message="building artifact: new upstream revision")
        building = f"building artifact: new upstream revision '{new}'"
        assert condition(source, "Ready")["message"] == building  # type: ignore[index]
        assert condition(source, "Reconciling")["message"] == building  # type: ignore[index]
        outdated = condition(source, "ArtifactOutdated")
        assert outdated is not None and (outdated["status"], outdated["reason"], outdated["message"]) == (
            "True", "NewRevision", f"new upstream revision '{new}'")
        assert source["status"]["artifact"]["revision"] == old
        assert kube.get(FLUX_KUSTOMIZE, "outdated", "outdated")["status"]["lastAppliedRevision"] == old

        source = wait_ready(kube, FLUX_SOURCE, "outdated", "outdated", message=f"stored artifact for revision '{new}'")
        assert condition(source, "ArtifactOutdated") is None and condition(source, "Reconciling") is None
        ks = wait_ready(kube, FLUX_KUSTOMIZE, "outdated", "outdated", message=f"Applied revision: {new}")
        assert ks["status"]["lastAppliedRevision"] == new


def test_a_reconcile_request_with_nothing_new_keeps_ready_true(git_server: GitServer) -> None:
    revision = f"main@sha1:{git_server.commit('samerev', GOOD_TREE)}"
    with SandboxCluster(flux=FluxSimulatorConfig(reconcile_delay=0.6, source_retry_interval=0.2)) as cluster:
        kube = Kube.connect(cluster)
        provision(kube, "samerev", git_server.url("samerev"))
        wait_ready(kube, FLUX_KUSTOMIZE, "samerev", "samerev")
        token = "2025-02-03T00:00:00Z"
        kube.patch(FLUX_SOURCE, "samerev", "samerev",
                   {"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": token}}})
        seen: list[tuple[str, str | None]] = []

        def handled() -> dict[str, Any] | None:
            obj = kube.get(FLUX_SOURCE, "samerev", "samerev")
            ready, reconciling = condition(obj, "Ready"), condition(obj, "Reconciling")
            assert ready is not None
            seen.append((str(ready["status"]), str(reconciling["message"]) if reconciling else None))
            return obj if obj["status"].get("lastHandledReconcileAt") == token else None

        source = wait_for(handled, what="the reconcile request handled")
        assert ("True", "reconciliation in progress") in seen
        assert {ready for ready, _ in seen} == {"True"}
        assert source["status"]["artifact"]["revision"] == revision
        assert condition(source, "Reconciling") is None and condition(source, "ArtifactOutdated") is None


def test_first_fetch_is_building_artifact_and_a_fetch_delay_holds_no_worker(git_server: GitServer) -> None:
    """No artifact yet: Ready=Unknown "building artifact" while fetching; the delay is a requeue, not a sleep."""
    git_server.commit("firstslow", GOOD_TREE)
    fast = f"main@sha1:{git_server.commit('firstfast', GOOD_TREE)}"
    with SandboxCluster(flux=FluxSimulatorConfig(workers=1, source_retry_interval=0.2)) as cluster:
        kube = Kube.connect(cluster)
        cluster.flux.delay_fetch("firstslow", 600)
        provision(kube, "firstslow", git_server.url("firstslow"))
        source = wait_ready(kube, FLUX_SOURCE, "firstslow", "firstslow", status="Unknown", reason="Progressing")
        reconciling = condition(source, "Reconciling")
        assert condition(source, "Ready")["message"] == "building artifact"  # type: ignore[index]
        assert reconciling is not None and (reconciling["status"], reconciling["message"]) == (
            "True", "building artifact")
        assert "artifact" not in source["status"] and condition(source, "ArtifactOutdated") is None

        # The only worker is free: another namespace (no delay) is fetched and applied meanwhile.
        provision(kube, "firstfast", git_server.url("firstfast"))
        ks = wait_ready(kube, FLUX_KUSTOMIZE, "firstfast", "firstfast")
        assert ks["status"]["lastAppliedRevision"] == fast
        assert "artifact" not in kube.get(FLUX_SOURCE, "firstslow", "firstslow")["status"]

        cluster.flux.clear_fetch_delay("firstslow")
        source = wait_ready(kube, FLUX_SOURCE, "firstslow", "firstslow")
        assert condition(source, "Reconciling") is None
        wait_ready(kube, FLUX_KUSTOMIZE, "firstslow", "firstslow")


def test_deletion_removes_finalizers_and_lets_the_namespace_go(kube: Kube, git_server: GitServer) -> None:
    git_server.commit("gone", GOOD_TREE)
    provision(kube, "gone", git_server.url("gone"))
    wait_ready(kube, FLUX_KUSTOMIZE, "gone", "gone")

    kube.delete(FLUX_KUSTOMIZE, "gone", "gone")
    wait_for(lambda: _missing(kube, FLUX_KUSTOMIZE, "gone"), what="the Kustomization to go")

    kube.core.delete_namespace("gone")
    wait_for(lambda: _namespace_missing(kube, "gone"), what="the namespace to go")
    assert not (kube.cluster.flux.artifact_root / "gitrepository" / "gone" / "gone").exists()


def _missing(kube: Kube, gvp: tuple[str, str, str], name: str) -> bool:
    try:
        kube.get(gvp, name, name)
    except ApiException as error:
        return bool(error.status == 404 and json.loads(error.body or "{}")["reason"] == "NotFound")
    return False


def _namespace_missing(kube: Kube, name: str) -> bool:
    try:
        kube.core.read_namespace(name)
    except ApiException as error:
        return bool(error.status == 404)
    return False


@pytest.mark.parametrize("count", [200])
def test_many_held_kustomizations_cost_no_threads(git_server: GitServer, count: int) -> None:
    import threading

    git_server.commit("many", GOOD_TREE)
    with SandboxCluster(flux=FluxSimulatorConfig(workers=2)) as cluster:
        cluster.flux.hold()
        store = cluster.store
        from kubesim.store import GIT_REPOSITORIES, KUSTOMIZATIONS, NAMESPACES

        store.create(NAMESPACES, None, {"metadata": {"name": "many"}})
        store.create(GIT_REPOSITORIES, "many", {
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "metadata": {"name": "many"},
            "spec": {"interval": "1m", "url": git_server.url("many"), "ref": {"branch": "main"}}})
        threads_before = threading.active_count()
        for index in range(count):
            store.create(KUSTOMIZATIONS, "many", {
                "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                "metadata": {"name": f"k{index}"},
                "spec": {"interval": "5m", "prune": True, "path": f"./{OVERLAY}", "targetNamespace": "many",
                         "sourceRef": {"kind": "GitRepository", "name": "many"}}})
        wait_for(lambda: cluster.flux.held_count == count, timeout=20, what="all Kustomizations held")
        assert threading.active_count() <= threads_before + 1
        cluster.flux.release()

        def all_ready() -> bool:
            items = store.list_objects(KUSTOMIZATIONS, "many")["items"]
            return all((condition(i, "Ready") or {}).get("status") == "True" for i in items)

        wait_for(all_ready, timeout=20, what="all Kustomizations ready")


def test_a_restarted_cluster_keeps_its_settled_flux_objects(git_server: GitServer, tmp_path: Path) -> None:
    git_server.commit("restart", GOOD_TREE)
    state = tmp_path / "cluster.json"
    with SandboxCluster(state_file=state) as cluster:
        kube = Kube.connect(cluster)
        provision(kube, "restart", git_server.url("restart"))
        ks = wait_ready(kube, FLUX_KUSTOMIZE, "restart", "restart")
        source = kube.get(FLUX_SOURCE, "restart", "restart")

    with SandboxCluster(state_file=state) as cluster:
        kube = Kube.connect(cluster)
        wait_for(lambda: cluster.flux.reconcile_count >= 2, what="the simulator to revisit both objects")
        assert kube.get(FLUX_KUSTOMIZE, "restart", "restart") == ks
        assert kube.get(FLUX_SOURCE, "restart", "restart") == source
