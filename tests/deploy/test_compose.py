"""docker-compose.yml, read as Compose would read it (YAML with merge keys), checked for what a stack needs to come
up in order and be wired the way the code reads its configuration. No Docker engine runs here: see
docs/operations.md, "What is not verified here"."""

from __future__ import annotations

import re
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest

from provisioner.contracts import SEARCH_ATTRIBUTES
from tests.deploy.artefacts import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    IMAGE_RUNTIME_DIR,
    REPO_ROOT,
    RUNTIME_DIR,
    load_yaml,
    provisioner_env_names,
    secret_literals_in_env,
    secret_literals_in_text,
)

REQUIRED_SERVICES = {
    "postgres",
    "temporal",
    "temporal-search-attributes",
    "temporal-ui",
    "worker",
    "api",
    "git-server",
    "gitea",
    "k3s",
    "cluster-setup",
}
ONE_SHOTS = {"temporal-search-attributes", "cluster-setup"}
PROVISIONER_SERVICES = {"worker", "api", "git-server"}
CONDITIONS = {"service_healthy", "service_completed_successfully"}

Compose = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Compose:
    document = load_yaml(COMPOSE_FILE)
    assert isinstance(document, dict)
    return document


def services(compose: Compose) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def interpolate_defaults(value: str) -> str:
    """`${NAME:-default}` as Compose resolves it when NAME is unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment must be a mapping (KEY: value), so it can be checked"
    return {key: interpolate_defaults(str(value)) for key, value in env.items()}


def test_the_required_services_exist(compose: Compose) -> None:
    assert set(services(compose)) >= REQUIRED_SERVICES


def test_every_long_running_service_has_a_healthcheck(compose: Compose) -> None:
    for name, service in services(compose).items():
        if name in ONE_SHOTS:
            continue
        test = (service.get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"


def test_one_shots_run_once_and_are_awaited_to_completion(compose: Compose) -> None:
    all_services = services(compose)
    for name in ONE_SHOTS:
        assert all_services[name].get("restart") == "no", f"{name} must not be restarted after it succeeded"
        waiters = [
            other
            for other, service in all_services.items()
            if (service.get("depends_on") or {}).get(name, {}).get("condition") == "service_completed_successfully"
        ]
        assert waiters, f"nothing waits for the one-shot {name} to complete"


def test_every_dependency_waits_for_health_or_completion(compose: Compose) -> None:
    all_services = services(compose)
    for name, service in all_services.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: depends_on must be a mapping with conditions"
        for target, rule in depends_on.items():
            assert target in all_services, f"{name} depends on unknown service {target}"
            expected = "service_completed_successfully" if target in ONE_SHOTS else "service_healthy"
            assert rule == {"condition": expected}, f"{name} -> {target}: {rule}"


def test_images_are_pinned(compose: Compose) -> None:
    for name, service in services(compose).items():
        image = interpolate_defaults(service["image"])
        if "build" in service:
            assert service["build"]["dockerfile"] == "Dockerfile", f"{name} builds something else"
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and re.search(r"\d", tag) and tag != "latest", f"{name}: image {image!r} is not pinned"


def test_the_provisioner_services_run_the_image_built_from_the_dockerfile(compose: Compose) -> None:
    all_services = services(compose)
    images = {all_services[name]["image"] for name in PROVISIONER_SERVICES}
    assert len(images) == 1
    assert all_services["worker"]["command"] == ["worker"]
    assert all_services["api"]["command"][:1] == ["api"]
    assert {"--host", "--port"} <= set(all_services["api"]["command"])


def test_scripts_and_manifests_mounted_into_containers_exist(compose: Compose) -> None:
    for name, service in services(compose).items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists(), f"{name} mounts missing {source}"
        entrypoint = service.get("entrypoint") or []
        for argument in entrypoint:
            if argument.startswith("/scripts/"):
                assert (COMPOSE_DIR / "scripts" / argument.removeprefix("/scripts/")).is_file()
            if argument.startswith(f"{IMAGE_RUNTIME_DIR}/"):
                assert (RUNTIME_DIR / argument.removeprefix(f"{IMAGE_RUNTIME_DIR}/")).is_file()


def test_the_provisioner_services_set_only_variables_the_code_reads(compose: Compose) -> None:
    known = provisioner_env_names()
    for name in PROVISIONER_SERVICES:
        unknown = set(environment(services(compose)[name])) - known
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"


def test_the_worker_is_wired_to_temporal_database_git_and_cluster(compose: Compose) -> None:
    all_services = services(compose)
    worker = all_services["worker"]
    env = environment(worker)

    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert "PROVISIONER_DATABASE_URL" not in env, "the database URL holds a password: pass it as a file"
    assert env["PROVISIONER_DATABASE_URL_FILE"] == "/run/secrets/provisioner_database_url"

    # The git server serves the very directory the worker's `local` provider writes: the same volume, same path.
    git_server = all_services["git-server"]
    assert env["PROVISIONER_GIT_PROVIDER"] == "local"
    assert environment(git_server)["PROVISIONER_DATA_DIR"] == env["PROVISIONER_DATA_DIR"] == "/data"
    assert "provisioner-data:/data" in worker["volumes"]
    assert "provisioner-data:/data" in git_server["volumes"]
    # Flux (inside K3s) clones by IP: the base URL must name the git server's fixed address and listen port.
    base_url = urlsplit(env["PROVISIONER_GIT_BASE_URL"])
    assert base_url.hostname == interpolate_defaults(git_server["networks"]["default"]["ipv4_address"])
    assert git_server["command"] == ["--listen", f"0.0.0.0:{base_url.port}"]
    assert env["PROVISIONER_GIT_TOKEN_FILE"] == environment(git_server)["PROVISIONER_GIT_TOKEN_FILE"]

    # The kubeconfig is the one cluster-setup writes into the shared `kube` volume.
    setup_env = environment(all_services["cluster-setup"])
    assert env["KUBECONFIG"] == setup_env["WORKER_KUBECONFIG"] == "/kube/config"
    assert "kube:/kube:ro" in worker["volumes"]
    assert "kube:/kube" in all_services["cluster-setup"]["volumes"]
    assert setup_env["WORKER_UID"] == "10001"


def test_secret_files_are_declared_mounted_and_git_ignored(compose: Compose) -> None:
    declared = compose["secrets"]
    for service_name, service in services(compose).items():
        mounted = set(service.get("secrets") or [])
        assert mounted <= set(declared), f"{service_name} mounts undeclared secrets"
        for variable, value in environment(service).items():
            if variable.endswith("FILE") and value.startswith("/run/secrets/"):
                secret = value.removeprefix("/run/secrets/")
                assert secret in mounted, f"{service_name}: {variable} points at unmounted secret {secret}"
    for name, secret in declared.items():
        path = REPO_ROOT / secret["file"]
        assert path.parent == COMPOSE_DIR / "secrets"
        assert path.with_name(f"{name}.example").is_file(), f"no example for secret {name}"
        ignored = subprocess.run(["git", "check-ignore", "--quiet", str(path)], cwd=REPO_ROOT, check=False)
        assert ignored.returncode == 0, f"{path} is not git-ignored"
        example = subprocess.run(
            ["git", "check-ignore", "--quiet", str(path.with_name(f"{name}.example"))], cwd=REPO_ROOT, check=False
        )
        assert example.returncode == 1, f"the example of {name} must be committed"


def test_no_secret_literal_in_the_compose_file(compose: Compose) -> None:
    assert secret_literals_in_text(COMPOSE_FILE.read_text(encoding="utf-8")) == []
    for name, service in services(compose).items():
        assert secret_literals_in_env(environment(service)) == [], name


def test_the_secret_detectors_catch_literals() -> None:
    assert secret_literals_in_text("url: postgresql://app:hunter2@db/app")
    assert not secret_literals_in_text("url: postgresql://app:${DB_PASSWORD}@db/app")
    assert secret_literals_in_env({"POSTGRES_PASSWORD": "hunter2"})
    assert not secret_literals_in_env({"POSTGRES_PASSWORD_FILE": "/run/secrets/x", "K3S_KUBECONFIG_MODE": "600"})


def test_host_ports_bind_to_localhost(compose: Compose) -> None:
    published = {}
    for name, service in services(compose).items():
        for port in service.get("ports") or []:
            host_ip, host_port, container_port = interpolate_defaults(port).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {port} on every interface"
            published[name] = (int(host_port), int(container_port))
    assert published["api"] == (8000, 8000)
    assert published["temporal-ui"] == (8080, 8080)
    assert published["temporal"] == (7233, 7233)


def test_the_registered_search_attributes_are_the_ones_the_code_uses() -> None:
    script = (COMPOSE_DIR / "scripts" / "register-search-attributes.sh").read_text(encoding="utf-8")
    match = re.search(r'^attributes="([^"]+)"', script, re.MULTILINE)
    assert match is not None
    assert match.group(1).split() == [key.name for key in SEARCH_ATTRIBUTES]


def test_cluster_setup_applies_manifests_that_exist() -> None:
    script = (COMPOSE_DIR / "scripts" / "cluster-setup.sh").read_text(encoding="utf-8")
    applied = re.findall(r'"\$MANIFESTS/([a-z-]+\.yaml)"', script)
    assert applied == ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"]
    for name in applied:
        assert (REPO_ROOT / "deploy" / "kubernetes" / name).is_file()
