"""docs/operations.md documents every variable the code and the deployment read, and only Temporal env config
variables that the SDK really understands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from temporalio.envconfig import ClientConfigProfile

from provisioner.contracts import SEARCH_ATTRIBUTES
from tests.deploy.artefacts import (
    COMPOSE_FILE,
    OPERATIONS_DOC,
    TEMPORAL_ENV_CONFIG,
    TEST_ONLY_ENV,
    provisioner_env_names,
    settings_env_names,
)


@pytest.fixture(scope="module")
def doc() -> str:
    return OPERATIONS_DOC.read_text(encoding="utf-8")


def test_the_settings_parser_finds_the_variables() -> None:
    names = settings_env_names()
    assert {"TEMPORAL_ADDRESS", "KUBECONFIG", "PROVISIONER_GIT_TOKEN", "PROVISIONER_GIT_TOKEN_FILE"} <= names
    assert {"PROVISIONER_DATABASE_URL", "PROVISIONER_DATABASE_URL_FILE", "PROVISIONER_ACTIVITY_THREADS"} <= names


def test_every_variable_is_documented(doc: str) -> None:
    compose_variables = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text(encoding="utf-8")))
    expected = provisioner_env_names() | TEST_ONLY_ENV | compose_variables | {"COMPOSE_PROJECT_NAME"}
    missing = sorted(name for name in expected if f"`{name}`" not in doc)
    assert missing == []


def test_the_documented_temporal_variables_are_understood_by_the_sdk(tmp_path: Path) -> None:
    empty = ClientConfigProfile.load(override_env_vars={}, disable_file=True)
    for name in TEMPORAL_ENV_CONFIG - {"TEMPORAL_CONFIG_FILE", "TEMPORAL_PROFILE"}:
        value = "true" if name == "TEMPORAL_TLS" else "value"
        loaded = ClientConfigProfile.load(override_env_vars={name: value}, disable_file=True)
        assert loaded != empty, f"{name} changes nothing"
    config_file = tmp_path / "temporal.toml"
    config_file.write_text('[profile.prod]\naddress = "temporal.example:7233"\n')
    profile = ClientConfigProfile.load(
        override_env_vars={"TEMPORAL_CONFIG_FILE": str(config_file), "TEMPORAL_PROFILE": "prod"}
    )
    assert profile.address == "temporal.example:7233"


def test_search_attribute_registration_is_documented_for_each_attribute(doc: str) -> None:
    for key in SEARCH_ATTRIBUTES:
        assert f"temporal operator search-attribute create --namespace <ns> --name {key.name} --type Keyword" in doc


def test_the_limits_of_what_was_verified_are_stated(doc: str) -> None:
    assert "## What is not verified here" in doc
    section = doc.split("## What is not verified here", 1)[1]
    assert "docker compose up" in section and "kubectl apply" in section
    assert "### How to verify it yourself" in section
