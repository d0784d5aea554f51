"""Fixtures for the git tests: a real `GitHttpServer` on an ephemeral port and a hermetic `git` CLI."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dulwich.repo import Repo

from provisioner.gitserver import GitHttpServer
from provisioner.settings import Secret

TOKEN = "tok-3f9a1c7e5b2d"  # distinctive, so a leak is easy to spot in messages


def git_env() -> dict[str, str]:
    """The caller's environment minus any user/system git config, with a fixed identity and no prompts."""
    return {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Test Author",
        "GIT_AUTHOR_EMAIL": "author@example.test",
        "GIT_COMMITTER_NAME": "Test Author",
        "GIT_COMMITTER_EMAIL": "author@example.test",
        # An empty repository advertises no HEAD over protocol v0, so clones fall back to init.defaultBranch.
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "init.defaultBranch",
        "GIT_CONFIG_VALUE_0": "main",
    }


def git(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the git CLI; on failure with check=True the assertion shows git's own output."""
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=git_env(), capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert result.returncode == 0, f"git {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def init_bare(path: Path, branch: str = "main") -> Path:
    Repo.init_bare(str(path), mkdir=True, default_branch=branch.encode()).close()
    return path


def with_credentials(url: str, username: str, password: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{username}:{password}@{rest}"


@pytest.fixture
def repos_dir(tmp_path: Path) -> Path:
    path = tmp_path / "repos"
    path.mkdir()
    return path


@pytest.fixture
def git_server(repos_dir: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(repos_dir) as server:
        yield server


@pytest.fixture
def token_server(repos_dir: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(repos_dir, token=Secret(TOKEN)) as server:
        yield server
