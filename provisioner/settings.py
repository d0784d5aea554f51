"""Worker-side configuration, read from the environment.

Secrets (the git token, the database password inside the URL) live only here, on the worker, and never travel in
workflow payloads. `Secret` keeps them out of reprs and logs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Secret:
    """A string that never shows itself in `repr`, `str` or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _secret(env: Mapping[str, str], name: str) -> Secret:
    """Read `NAME` or, for Docker/Kubernetes secrets, the file named by `NAME_FILE`."""
    file_name = env.get(f"{name}_FILE")
    if file_name:
        return Secret(Path(file_name).read_text().strip())
    return Secret(env.get(name, ""))


def _flag(name: str, raw: str, default: bool) -> bool:
    """The boolean variable `name` whose text is `raw` (read at the call, so the doc test finds the name)."""
    value = raw.strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


def _hosted_git_settings(env: Mapping[str, str], defaults: Settings) -> dict[str, Any]:
    """The hosted Git providers block of `Settings`, from PROVISIONER_GIT_* variables."""
    return {
        "git_api_url": env.get("PROVISIONER_GIT_API_URL", defaults.git_api_url).rstrip("/"),
        "git_owner": env.get("PROVISIONER_GIT_OWNER", defaults.git_owner),
        "git_owner_is_org": _flag(
            "PROVISIONER_GIT_OWNER_IS_ORG", env.get("PROVISIONER_GIT_OWNER_IS_ORG", ""), defaults.git_owner_is_org
        ),
        "git_private": _flag("PROVISIONER_GIT_PRIVATE", env.get("PROVISIONER_GIT_PRIVATE", ""), defaults.git_private),
        "git_deploy_username": env.get("PROVISIONER_GIT_DEPLOY_USERNAME", defaults.git_deploy_username),
        "git_deploy_token": _secret(env, "PROVISIONER_GIT_DEPLOY_TOKEN"),
        "git_api_timeout_seconds": float(
            env.get("PROVISIONER_GIT_API_TIMEOUT_SECONDS", str(defaults.git_api_timeout_seconds))
        ),
    }


def _telemetry_settings(env: Mapping[str, str], defaults: Settings) -> dict[str, Any]:
    """The telemetry block of `Settings`, from PROVISIONER_METRICS_* variables."""
    return {
        "metrics_port": int(env.get("PROVISIONER_METRICS_PORT", "") or defaults.metrics_port),
        "metrics_host": env.get("PROVISIONER_METRICS_HOST", defaults.metrics_host),
    }


def _codec_settings(env: Mapping[str, str], defaults: Settings) -> dict[str, Any]:
    """The payload encryption block of `Settings` (provisioner/codec.py)."""
    origins = env.get("PROVISIONER_CODEC_CORS_ORIGINS", ",".join(defaults.codec_cors_origins))
    return {
        "codec_keys": _secret(env, "PROVISIONER_CODEC_KEYS"),
        "codec_cors_origins": tuple(origin.strip().rstrip("/") for origin in origins.split(",") if origin.strip()),
    }


@dataclass(frozen=True)
class Settings:
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    task_queue: str = "provisioner"
    data_dir: Path = PROJECT_ROOT / ".data"
    database_url: Secret = field(default_factory=lambda: Secret(""))
    templates_dir: Path = PROJECT_ROOT / "templates"
    # Git: the local provider keeps bare repositories under git_repos_dir and serves them at git_base_url.
    git_provider: str = "local"
    git_base_url: str = "http://127.0.0.1:18080"
    git_username: str = "provisioner"
    git_token: Secret = field(default_factory=lambda: Secret(""))
    git_default_branch: str = "main"
    git_author_name: str = "provisioner"
    git_author_email: str = "provisioner@localhost"
    # ---- Hosted Git providers (`gitea`, `github`; docs/operations.md) --------------------------------------------
    # The REST API root (Gitea: https://gitea.example.com/api/v1, GitHub: https://api.github.com, GitHub Enterprise
    # Server: https://ghe.example.com/api/v3); empty: Gitea derives it from git_base_url, GitHub uses api.github.com.
    git_api_url: str = ""
    git_owner: str = ""  # the user or organisation owning the repositories
    git_owner_is_org: bool = False
    git_private: bool = True
    # What Flux clones private repositories with (a read-only token is enough); empty: git_username / git_token.
    git_deploy_username: str = ""
    git_deploy_token: Secret = field(default_factory=lambda: Secret(""))
    git_api_timeout_seconds: float = 30.0
    # ---- end of the hosted Git providers block -------------------------------------------------------------------
    # Kubernetes: a kubeconfig (the sandbox writes one) and the field manager for server-side apply.
    kubeconfig: str | None = None
    kube_context: str | None = None
    field_manager: str = "provisioner"
    flux_interval: str = "1m"
    activity_threads: int = 16
    # ---- Telemetry (docs/operations.md, "Telemetry"; provisioner/telemetry.py) -----------------------------------
    # The worker's Prometheus /metrics endpoint, served by Temporal's core runtime; port 0 leaves it off.
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"
    # ---- end of the telemetry block -------------------------------------------------------------------------------
    # Payload encryption (provisioner/codec.py): `id:base64key,...`, the first is current; empty: payloads in clear.
    codec_keys: Secret = field(default_factory=lambda: Secret(""))
    # Browser origins (the Temporal UI) allowed to call the codec endpoint.
    codec_cors_origins: tuple[str, ...] = ("http://localhost:8233", "http://127.0.0.1:8233")

    @property
    def git_repos_dir(self) -> Path:
        return self.data_dir / "git"

    @property
    def effective_database_url(self) -> str:
        return self.database_url.reveal() or f"sqlite:///{self.data_dir / 'provisioner.db'}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        data_dir = Path(env.get("PROVISIONER_DATA_DIR", str(defaults.data_dir)))
        return cls(
            temporal_address=env.get("TEMPORAL_ADDRESS", defaults.temporal_address),
            temporal_namespace=env.get("TEMPORAL_NAMESPACE", defaults.temporal_namespace),
            task_queue=env.get("PROVISIONER_TASK_QUEUE", defaults.task_queue),
            data_dir=data_dir,
            database_url=_secret(env, "PROVISIONER_DATABASE_URL"),
            templates_dir=Path(env.get("PROVISIONER_TEMPLATES_DIR", str(defaults.templates_dir))),
            git_provider=env.get("PROVISIONER_GIT_PROVIDER", defaults.git_provider),
            git_base_url=env.get("PROVISIONER_GIT_BASE_URL", defaults.git_base_url).rstrip("/"),
            git_username=env.get("PROVISIONER_GIT_USERNAME", defaults.git_username),
            git_token=_secret(env, "PROVISIONER_GIT_TOKEN"),
            git_default_branch=env.get("PROVISIONER_GIT_DEFAULT_BRANCH", defaults.git_default_branch),
            git_author_name=env.get("PROVISIONER_GIT_AUTHOR_NAME", defaults.git_author_name),
            git_author_email=env.get("PROVISIONER_GIT_AUTHOR_EMAIL", defaults.git_author_email),
            **_hosted_git_settings(env, defaults),
            kubeconfig=env.get("KUBECONFIG") or None,
            kube_context=env.get("PROVISIONER_KUBE_CONTEXT") or None,
            field_manager=env.get("PROVISIONER_FIELD_MANAGER", defaults.field_manager),
            flux_interval=env.get("PROVISIONER_FLUX_INTERVAL", defaults.flux_interval),
            activity_threads=int(env.get("PROVISIONER_ACTIVITY_THREADS", str(defaults.activity_threads))),
            **_telemetry_settings(env, defaults),
            **_codec_settings(env, defaults),
        )
