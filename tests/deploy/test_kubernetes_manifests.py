"""deploy/kubernetes, built with the venv's kubectl (`kubectl kustomize`) and checked offline: every field exists in
the Kubernetes API (against the official client's models), the pods are wired to the ConfigMap, the Secret and the
ServiceAccounts they need, every container has probes, and the in-cluster kubeconfig loads in the real client.
No cluster runs here: see docs/operations.md, "What is not verified here"."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube
from kubernetes import config as kube_config

from provisioner.binaries import bundled_binary
from tests.deploy.artefacts import (
    IMAGE_RUNTIME_DIR,
    KUBERNETES_DIR,
    RUNTIME_DIR,
    load_yaml,
    load_yaml_documents,
    provisioner_env_names,
    secret_literals_in_text,
)

Manifest = dict[str, Any]
NAMESPACE = "provisioner-system"
SECRET_NAME = "provisioner-secrets"


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    built = subprocess.run(
        [bundled_binary("kubectl"), "kustomize", str(KUBERNETES_DIR)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert built.returncode == 0, built.stderr
    return load_yaml_documents(built.stdout)


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_specs(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m["spec"]["template"]["spec"] for m in manifests if m["kind"] == "Deployment"}


# ---- Schema: every key is a field of the Kubernetes API -----------------------------------------------------

_LIST = re.compile(r"list\[(.+)\]\Z")
_DICT = re.compile(r"dict\(str, (.+)\)\Z")


def unknown_fields(value: Any, type_name: str, path: str) -> list[str]:
    """Keys of `value` that the client's model `type_name` does not have, recursively."""
    if (match := _LIST.match(type_name)) is not None:
        return [e for i, item in enumerate(value) for e in unknown_fields(item, match.group(1), f"{path}[{i}]")]
    if (match := _DICT.match(type_name)) is not None:
        return [e for key, item in value.items() for e in unknown_fields(item, match.group(1), f"{path}.{key}")]
    model = getattr(kube, type_name, None)
    if model is None:  # str, int, bool, object (IntOrString, quantities): no structure to check
        return []
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({type_name})"]
    fields = {json_name: attribute for attribute, json_name in model.attribute_map.items()}
    errors = []
    for key, item in value.items():
        if key not in fields:
            errors.append(f"{path}.{key}: not a field of {type_name}")
        else:
            errors.extend(unknown_fields(item, model.openapi_types[fields[key]], f"{path}.{key}"))
    return errors


def test_the_schema_check_finds_misspelt_fields() -> None:
    probe = {"exec": {"command": ["true"]}, "periodSecond": 5}
    assert unknown_fields({"readinessProbe": probe}, "V1Container", "c") == [
        "c.readinessProbe.periodSecond: not a field of V1Probe"
    ]


def test_every_object_uses_only_real_api_fields(manifests: list[Manifest]) -> None:
    kinds = {m["kind"] for m in manifests}
    assert kinds == {
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Service",
        "PersistentVolumeClaim", "Deployment",
    }  # fmt: skip
    for manifest in manifests:
        assert unknown_fields(manifest, f"V1{manifest['kind']}", manifest["kind"]) == []


def test_namespaced_objects_live_in_the_provisioner_namespace(manifests: list[Manifest]) -> None:
    for manifest in manifests:
        if manifest["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert manifest["metadata"]["namespace"] == NAMESPACE, manifest["metadata"]["name"]


# ---- Pods -------------------------------------------------------------------------------------------------------


def test_every_container_has_liveness_and_readiness_probes(manifests: list[Manifest]) -> None:
    for name, spec in pod_specs(manifests).items():
        for container in spec["containers"]:
            assert "livenessProbe" in container, f"{name}/{container['name']}"
            assert "readinessProbe" in container, f"{name}/{container['name']}"


def test_exec_probes_and_commands_run_helpers_the_image_has(manifests: list[Manifest]) -> None:
    referenced = set()
    for spec in pod_specs(manifests).values():
        for container in spec["containers"]:
            words = list(container.get("command") or [])
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                words += (container.get(probe) or {}).get("exec", {}).get("command", [])
            referenced |= {w.removeprefix(f"{IMAGE_RUNTIME_DIR}/") for w in words if w.startswith(IMAGE_RUNTIME_DIR)}
    assert referenced == {"worker_healthcheck.py", "git_server.py"}
    for script in referenced:
        assert (RUNTIME_DIR / script).is_file()


def test_pods_run_unprivileged(manifests: list[Manifest]) -> None:
    for name, spec in pod_specs(manifests).items():
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
            assert "/tmp" in mounts, "a read-only root needs a writable /tmp (git clones, temporary files)"


def test_the_configmap_sets_only_variables_the_code_reads(manifests: list[Manifest]) -> None:
    config = find(manifests, "ConfigMap", "provisioner-config")["data"]
    assert set(config) <= provisioner_env_names(), sorted(set(config) - provisioner_env_names())
    assert secret_literals_in_text("\n".join(f"{k}: {v}" for k, v in config.items())) == []
    for name, spec in pod_specs(manifests).items():
        for container in spec["containers"]:
            variables = {e["name"] for e in container.get("env", [])}
            assert variables <= provisioner_env_names(), f"{name}/{container['name']}"
            assert [source["configMapRef"]["name"] for source in container["envFrom"]] == ["provisioner-config"]


def test_secret_files_are_mounted_where_the_file_variables_point(manifests: list[Manifest]) -> None:
    template = load_yaml(KUBERNETES_DIR / "secret.template.yaml")
    assert template["metadata"]["name"] == SECRET_NAME
    secret_keys = set(template["stringData"])
    for name, spec in pod_specs(manifests).items():
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for container in spec["containers"]:
            files = {}
            for mount in container["volumeMounts"]:
                secret = volumes[mount["name"]].get("secret")
                if secret is not None:
                    assert secret["secretName"] == SECRET_NAME
                    for item in secret["items"]:
                        assert item["key"] in secret_keys, f"{name}: no key {item['key']} in the Secret"
                        files[f"{mount['mountPath']}/{item['path']}"] = item["key"]
            for variable in container.get("env", []):
                if variable["name"].endswith("_FILE"):
                    assert variable["value"] in files, f"{name}/{container['name']}: {variable['name']} unmounted"


def test_the_secret_template_is_not_applied_by_the_kustomization(manifests: list[Manifest]) -> None:
    kustomization = load_yaml(KUBERNETES_DIR / "kustomization.yaml")
    assert "secret.template.yaml" not in kustomization["resources"]
    assert not [m for m in manifests if m["kind"] == "Secret"]


def test_services_select_pods_and_name_their_ports(manifests: list[Manifest]) -> None:
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    for service in (m for m in manifests if m["kind"] == "Service"):
        selector = service["spec"]["selector"]
        targets = [d for d in deployments if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, service["metadata"]["name"]
        ports = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports


def test_the_git_base_url_names_the_git_service(manifests: list[Manifest]) -> None:
    config = find(manifests, "ConfigMap", "provisioner-config")["data"]
    service = find(manifests, "Service", "provisioner-git")
    port = service["spec"]["ports"][0]["port"]
    assert config["PROVISIONER_GIT_BASE_URL"] == f"http://provisioner-git.{NAMESPACE}.svc.cluster.local:{port}"
    assert config["PROVISIONER_GIT_LISTEN"] == f"0.0.0.0:{port}"


def test_only_the_worker_holds_kubernetes_credentials(manifests: list[Manifest]) -> None:
    specs = pod_specs(manifests)
    worker, api = specs["provisioner-worker"], specs["provisioner-api"]
    binding = find(manifests, "ClusterRoleBinding", "provisioner-worker")
    subject = {"kind": "ServiceAccount", "name": worker["serviceAccountName"], "namespace": NAMESPACE}
    assert binding["subjects"] == [subject]
    assert binding["roleRef"]["name"] == find(manifests, "ClusterRole", "provisioner-worker")["metadata"]["name"]
    assert api["automountServiceAccountToken"] is False
    assert find(manifests, "ServiceAccount", api["serviceAccountName"])["automountServiceAccountToken"] is False
    bound = {s["name"] for m in manifests if m["kind"].endswith("RoleBinding") for s in m["subjects"]}
    assert api["serviceAccountName"] not in bound


def test_the_worker_replaces_itself_rather_than_sharing_its_volume(manifests: list[Manifest]) -> None:
    deployment = find(manifests, "Deployment", "provisioner-worker")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert find(manifests, "PersistentVolumeClaim", "provisioner-data")["spec"]["accessModes"] == ["ReadWriteOnce"]
    # Longer than the worker's graceful shutdown (20 s), so in-flight activities finish.
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 20


def test_the_in_cluster_kubeconfig_loads_in_the_real_client(manifests: list[Manifest], tmp_path: Path) -> None:
    """The pod's token and CA, as the kubelet mounts them, reach the client that FluxActivities builds."""
    text = find(manifests, "ConfigMap", "provisioner-kubeconfig")["data"]["config"]
    token_dir = tmp_path / "serviceaccount"
    token_dir.mkdir()
    (token_dir / "token").write_text("pod-token")
    (token_dir / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(text.replace("/var/run/secrets/kubernetes.io/serviceaccount", str(token_dir)))
    api_client = kube_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    configuration = api_client.configuration
    assert configuration.host == "https://kubernetes.default.svc"
    assert configuration.api_key["BearerToken"] == "Bearer pod-token"
    assert Path(configuration.ssl_ca_cert).read_text() == "-----BEGIN CERTIFICATE-----\n"
    config = find(manifests, "ConfigMap", "provisioner-config")["data"]
    worker = pod_specs(manifests)["provisioner-worker"]
    mounts = {m["name"]: m["mountPath"] for c in worker["containers"] for m in c["volumeMounts"]}
    assert config["KUBECONFIG"] == f"{mounts['kubeconfig']}/config"
