"""Deleting a project's repository from the local Git host: only the project's own, missing is done, and the
repository really stops being served over HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.git import GitActivities, LocalRepositoryProvider
from provisioner.contracts import ErrorType, ProjectSpec, RepositoryDeletionRequest, RepositoryDeletionResult
from provisioner.gitserver import GitHttpServer
from provisioner.settings import Settings
from tests.git.conftest import git, init_bare


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Settings, GitHttpServer]]:
    settings = Settings(data_dir=tmp_path / "data", templates_dir=tmp_path / "templates")
    settings.git_repos_dir.mkdir(parents=True)
    with GitHttpServer(settings.git_repos_dir) as server:
        yield replace(settings, git_base_url=server.base_url), server


@pytest.fixture
def provider(served: tuple[Settings, GitHttpServer]) -> LocalRepositoryProvider:
    return LocalRepositoryProvider(served[0])


@pytest.fixture
def repos_dir(served: tuple[Settings, GitHttpServer]) -> Path:
    return served[0].git_repos_dir


def spec(slug: str = "billing-api") -> ProjectSpec:
    return ProjectSpec(slug=slug, display_name="Billing API", template="web-service")


def test_deletes_the_projects_repository_which_then_is_no_longer_served(
    provider: LocalRepositoryProvider, repos_dir: Path, tmp_path: Path
) -> None:
    repository = provider.ensure_repository("billing-api", "Billing API")
    assert git("ls-remote", repository.clone_url, check=False).returncode == 0

    assert provider.delete_repository("billing-api") is True
    assert not (repos_dir / "billing-api.git").exists()
    assert list(repos_dir.iterdir()) == []  # nothing left behind, not even hidden
    assert git("ls-remote", repository.clone_url, check=False).returncode != 0

    assert provider.delete_repository("billing-api") is False  # again: done already


def test_a_missing_repository_is_nothing_to_delete(provider: LocalRepositoryProvider) -> None:
    assert provider.delete_repository("never-created") is False


def test_the_activity_deletes_once_and_then_reports_nothing_to_delete(served: tuple[Settings, GitHttpServer]) -> None:
    settings, _ = served
    activities = GitActivities(settings)
    ActivityEnvironment().run(activities.create_repository, spec())
    request = RepositoryDeletionRequest(slug="billing-api")
    first = ActivityEnvironment().run(activities.delete_repository, request)
    second = ActivityEnvironment().run(activities.delete_repository, request)
    assert (first, second) == (
        RepositoryDeletionResult(name="billing-api", deleted=True),
        RepositoryDeletionResult(name="billing-api", deleted=False),
    )


def test_an_unmarked_repository_is_never_deleted(provider: LocalRepositoryProvider, repos_dir: Path) -> None:
    init_bare(repos_dir / "billing-api.git")
    with pytest.raises(ApplicationError) as caught:
        provider.delete_repository("billing-api")
    assert caught.value.type == ErrorType.REPOSITORY_CONFLICT and caught.value.non_retryable
    assert "not managed by provisioner" in caught.value.message
    assert (repos_dir / "billing-api.git" / "HEAD").is_file()


def test_another_projects_repository_is_never_deleted(provider: LocalRepositoryProvider, repos_dir: Path) -> None:
    provider.ensure_repository("other-app", "Other")
    (repos_dir / "other-app.git").rename(repos_dir / "billing-api.git")
    with pytest.raises(ApplicationError) as caught:
        provider.delete_repository("billing-api")
    assert caught.value.type == ErrorType.REPOSITORY_CONFLICT
    assert "belongs to project 'other-app'" in caught.value.message
    assert (repos_dir / "billing-api.git" / "HEAD").is_file()


def test_a_symbolic_link_is_never_followed(provider: LocalRepositoryProvider, repos_dir: Path, tmp_path: Path) -> None:
    provider.ensure_repository("billing-api", "Billing API")
    elsewhere = tmp_path / "elsewhere.git"
    (repos_dir / "billing-api.git").rename(elsewhere)
    os.symlink(elsewhere, repos_dir / "billing-api.git")
    with pytest.raises(ApplicationError) as caught:
        provider.delete_repository("billing-api")
    assert caught.value.type == ErrorType.REPOSITORY_CONFLICT
    assert (elsewhere / "HEAD").is_file()


def test_an_invalid_name_is_refused(provider: LocalRepositoryProvider) -> None:
    with pytest.raises(ApplicationError) as caught:
        provider.delete_repository("../escape")
    assert caught.value.type == ErrorType.INVALID_INPUT and caught.value.non_retryable
