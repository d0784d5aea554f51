"""Where the deployment artefacts live, and what the code reads from the environment, for the deploy tests.

The environment variable names are read from the code itself (Settings.from_env, the API's auth module), so a new
setting shows up in these tests without anyone remembering to list it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from provisioner.api import auth
from provisioner.settings import PROJECT_ROOT
from tests.postgres import TEST_DATABASE_URL_ENV

REPO_ROOT = PROJECT_ROOT
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
DEPLOY_DIR = REPO_ROOT / "deploy"
COMPOSE_DIR = DEPLOY_DIR / "compose"
KUBERNETES_DIR = DEPLOY_DIR / "kubernetes"
RUNTIME_DIR = DEPLOY_DIR / "runtime"
OPERATIONS_DOC = REPO_ROOT / "docs" / "operations.md"
SETTINGS_SOURCE = REPO_ROOT / "provisioner" / "settings.py"

# Where the Dockerfile puts deploy/runtime inside the image.
IMAGE_RUNTIME_DIR = "/opt/provisioner/bin"

# Temporal's client env config (temporalio.envconfig), as far as this project documents it.
TEMPORAL_ENV_CONFIG = frozenset(
    {
        "TEMPORAL_ADDRESS",
        "TEMPORAL_NAMESPACE",
        "TEMPORAL_API_KEY",
        "TEMPORAL_TLS",
        "TEMPORAL_TLS_CLIENT_CERT_PATH",
        "TEMPORAL_TLS_CLIENT_CERT_DATA",
        "TEMPORAL_TLS_CLIENT_KEY_PATH",
        "TEMPORAL_TLS_CLIENT_KEY_DATA",
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
        "TEMPORAL_TLS_SERVER_CA_CERT_DATA",
        "TEMPORAL_TLS_SERVER_NAME",
        "TEMPORAL_CONFIG_FILE",
        "TEMPORAL_PROFILE",
    }
)
# Read by the deploy/runtime helpers only.
DEPLOY_ENV = frozenset({"PROVISIONER_GIT_LISTEN"})
API_ENV = frozenset({auth.TOKENS_ENV, auth.TOKENS_FILE_ENV, auth.INSECURE_ENV})
TEST_ONLY_ENV = frozenset({TEST_DATABASE_URL_ENV})

_PLAIN_SETTING = re.compile(r'env\.get\(\s*"([A-Z0-9_]+)"')
_SECRET_SETTING = re.compile(r'_secret\(\s*env\s*,\s*"([A-Z0-9_]+)"\s*\)')


def settings_env_names() -> frozenset[str]:
    """Every variable `Settings.from_env` reads, secrets with their `_FILE` twin."""
    source = SETTINGS_SOURCE.read_text(encoding="utf-8")
    plain = set(_PLAIN_SETTING.findall(source))
    secrets = set(_SECRET_SETTING.findall(source))
    return frozenset(plain | secrets | {f"{name}_FILE" for name in secrets})


def provisioner_env_names() -> frozenset[str]:
    """Every variable the provisioner's processes (worker, API, runtime helpers) understand."""
    return settings_env_names() | TEMPORAL_ENV_CONFIG | DEPLOY_ENV | API_ENV


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


# A credential written into a file: `scheme://user:password@` (not a `${...}` reference), or `KEY=value` /
# `KEY: value` where KEY names a secret and is not a `_FILE` pointer.
_URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:(?P<password>[^\s/@'\"]+)@", re.IGNORECASE)
_SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|PWD|TOKEN|SECRET|API_KEY|PRIVATE_KEY)", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not name.upper().endswith("FILE")


def secret_literals_in_text(text: str) -> list[str]:
    """Passwords embedded in URLs, other than references (`$VAR`, `${VAR}`) and obvious placeholders."""
    found = []
    for match in _URL_PASSWORD.finditer(text):
        password = match.group("password")
        if password.startswith("$") or "CHANGE-ME" in password or "REPLACE-WITH" in password:
            continue
        found.append(match.group(0))
    return found


def secret_literals_in_env(environment: dict[str, Any]) -> list[str]:
    """`NAME=value` pairs whose name says secret and whose value is a literal rather than a file or reference."""
    found = []
    for name, value in environment.items():
        text = "" if value is None else str(value)
        if is_secret_name(name) and text and not text.startswith(("$", "/run/secrets/")):
            found.append(f"{name}={text}")
    return found
