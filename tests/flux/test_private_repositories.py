"""Private repositories: the credentials Secret and the GitRepository's secretRef, against the sandbox cluster.

The deploy token comes from the worker's settings; the workflow payloads (the activity's request and result, as the
data converter encodes them) never hold it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube
from temporalio.exceptions import ApplicationError

from activities.flux import GIT_CREDENTIALS_SECRET, FluxActivities
from kubesim.cluster import FluxSimulatorConfig, SandboxCluster
from provisioner.contracts import (
    ErrorType,
    FluxApplyRequest,
    FluxApplyResult,
    ProjectSpec,
    ReadinessRequest,
    ReadinessState,
    RepositoryInfo,
)
from provisioner.gitserver import GitHttpServer
from provisioner.settings import Secret, Settings
from provisioner.temporal import DATA_CONVERTER
from tests.git.conftest import git, init_bare

PUSH_TOKEN = "tok-push-5e1d0c9b"
DEPLOY_TOKEN = "tok-deploy-8a7f6e2c"


def settings_for(kubeconfig: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "kubeconfig": str(kubeconfig),
        "field_manager": "provisioner",
        "git_token": Secret(PUSH_TOKEN),
        "git_deploy_username": "flux-reader",
        "git_deploy_token": Secret(DEPLOY_TOKEN),
    }
    return Settings(**(values | overrides))


def request_for(slug: str, url: str, *, private: bool, commit: str = "a" * 40) -> FluxApplyRequest:
    spec = ProjectSpec(slug=slug, display_name="Shop", template="web-service", parameters={"owner": "x"})
    repository = RepositoryInfo(slug, url, "main", True, requires_credentials=private)
    return FluxApplyRequest(spec, repository, commit, "k8s/overlays/development", f"token-{commit[:8]}")


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(flux=FluxSimulatorConfig(enabled=False)) as sandbox:
        yield sandbox


def test_a_private_repository_gets_the_secret_and_the_secret_ref(cluster: SandboxCluster, tmp_path: Path) -> None:
    flux = FluxActivities(settings_for(cluster.write_kubeconfig(tmp_path / "kubeconfig")))
    result = flux.apply_flux_resources(request_for("shop", "https://git.example.test/acme/shop.git", private=True))

    assert [(o.kind, o.name) for o in result.objects] == [
        ("Namespace", "shop"),
        ("Secret", GIT_CREDENTIALS_SECRET),
        ("GitRepository", "shop"),
        ("Kustomization", "shop"),
    ]
    api = cluster.api_client()
    secret = kube.CoreV1Api(api).read_namespaced_secret(GIT_CREDENTIALS_SECRET, "shop")
    assert secret.metadata is not None and secret.data is not None
    assert secret.metadata.labels == {"app.kubernetes.io/managed-by": "provisioner", "provisioner.dev/project": "shop"}
    assert [(f.manager, f.operation) for f in secret.metadata.managed_fields or []] == [("provisioner", "Apply")]
    decoded = {key: base64.b64decode(value).decode() for key, value in secret.data.items()}
    assert decoded == {"username": "flux-reader", "password": DEPLOY_TOKEN}
    source = kube.CustomObjectsApi(api).get_namespaced_custom_object(
        "source.toolkit.fluxcd.io", "v1", "shop", "gitrepositories", "shop"
    )
    assert isinstance(source, dict)
    assert source["spec"]["secretRef"] == {"name": GIT_CREDENTIALS_SECRET}

    again = flux.apply_flux_resources(request_for("shop", "https://git.example.test/acme/shop.git", private=True))
    assert [o.resource_version for o in again.objects] == [o.resource_version for o in result.objects]


def test_the_token_never_travels_in_the_payloads(cluster: SandboxCluster, tmp_path: Path) -> None:
    flux = FluxActivities(settings_for(cluster.write_kubeconfig(tmp_path / "kubeconfig")))
    request = request_for("shop", "https://git.example.test/acme/shop.git", private=True)
    result = flux.apply_flux_resources(request)

    [secret_ref] = [o for o in result.objects if o.kind == "Secret"]
    assert (secret_ref.namespace, secret_ref.name) == ("shop", GIT_CREDENTIALS_SECRET)
    payloads = DATA_CONVERTER.payload_converter.to_payloads([request, result])
    encoded = b"".join(payload.SerializeToString() for payload in payloads)
    for token in (DEPLOY_TOKEN, PUSH_TOKEN):
        assert token.encode() not in encoded
        assert base64.b64encode(token.encode()) not in encoded
    [decoded] = DATA_CONVERTER.payload_converter.from_payloads(payloads[1:], [FluxApplyResult])
    assert decoded == result


def test_the_push_token_is_the_fallback_deploy_credential(cluster: SandboxCluster, tmp_path: Path) -> None:
    settings = settings_for(cluster.write_kubeconfig(tmp_path / "kubeconfig"), git_deploy_token=Secret(""),
                            git_deploy_username="", git_username="pusher")  # fmt: skip
    FluxActivities(settings).apply_flux_resources(request_for("shop", "https://git.example.test/s.git", private=True))
    secret = kube.CoreV1Api(cluster.api_client()).read_namespaced_secret(GIT_CREDENTIALS_SECRET, "shop")
    assert secret.data is not None
    assert base64.b64decode(secret.data["username"]).decode() == "pusher"
    assert base64.b64decode(secret.data["password"]).decode() == PUSH_TOKEN


def test_a_public_repository_gets_neither(cluster: SandboxCluster, tmp_path: Path) -> None:
    flux = FluxActivities(settings_for(cluster.write_kubeconfig(tmp_path / "kubeconfig")))
    result = flux.apply_flux_resources(request_for("shop", "https://git.example.test/acme/shop.git", private=False))
    assert "Secret" not in [o.kind for o in result.objects]
    source = kube.CustomObjectsApi(cluster.api_client()).get_namespaced_custom_object(
        "source.toolkit.fluxcd.io", "v1", "shop", "gitrepositories", "shop"
    )
    assert isinstance(source, dict) and "secretRef" not in source["spec"]
    with pytest.raises(kube.ApiException) as missing:
        kube.CoreV1Api(cluster.api_client()).read_namespaced_secret(GIT_CREDENTIALS_SECRET, "shop")
    assert missing.value.status == 404


def test_a_private_repository_without_a_credential_is_a_permanent_error(
    cluster: SandboxCluster, tmp_path: Path
) -> None:
    settings = Settings(kubeconfig=str(cluster.write_kubeconfig(tmp_path / "kubeconfig")))
    with pytest.raises(ApplicationError) as caught:
        FluxActivities(settings).apply_flux_resources(request_for("shop", "https://g.test/s.git", private=True))
    assert caught.value.non_retryable and caught.value.type == ErrorType.INVALID_INPUT
    assert "PROVISIONER_GIT_DEPLOY_TOKEN" in caught.value.message


def test_flux_clones_with_the_secret(tmp_path: Path) -> None:
    """The sandbox's source-controller reads the Secret the way Flux does and reaches Ready with it."""
    repos = tmp_path / "repos"
    repos.mkdir()
    init_bare(repos / "shop.git")
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", str(work))
    (work / "README.md").write_text("shop\n")
    git("add", "README.md", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    git("push", "-q", str(repos / "shop.git"), "main", cwd=work)
    commit = git("rev-parse", "HEAD", cwd=work).stdout.strip()
    with GitHttpServer(repos) as server, SandboxCluster(flux=FluxSimulatorConfig(source_retry_interval=0.2)) as cluster:
        flux = FluxActivities(settings_for(cluster.write_kubeconfig(tmp_path / "kubeconfig")))
        apply = request_for("shop", f"{server.base_url}/shop.git", private=True, commit=commit)
        flux.apply_flux_resources(apply)
        expected = ReadinessRequest("shop", "shop", revision=f"main@sha1:{commit}", requested_at=apply.requested_at)
        deadline = time.monotonic() + 15
        while True:
            report = flux.check_flux_readiness(expected)
            source = report.objects[0]
            if source.state is ReadinessState.READY or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert (source.kind, source.state) == ("GitRepository", ReadinessState.READY), source
