"""The Gitea and GitHub providers against stand-in hosts that answer with the real status codes and bodies.

Every test captures all logs at DEBUG (httpx and httpcore included) and fails if the token shows up in them.
"""

from __future__ import annotations

import base64
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.git import GitActivities, LocalRepositoryProvider, repository_provider
from activities.git_providers import (
    GIT_HOST_RATE_LIMITED,
    GIT_HOST_UNAVAILABLE,
    GiteaRepositoryProvider,
    GitHubRepositoryProvider,
    marked_description,
    owner_named_by,
)
from provisioner.contracts import ErrorType, ProjectSpec, PushRequest, RepositoryDeletionRequest, RepositoryInfo
from provisioner.gitserver import GitHttpServer
from provisioner.settings import Secret, Settings
from tests.git.conftest import TOKEN, git
from tests.git.forges import CannedAnswer, Dialect, Forge
from tests.git.test_git_activities import fake_render

DESCRIPTION = "Billing API (template web-service)"
GITHUB_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"


@pytest.fixture(autouse=True)
def token_never_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    logged = caplog.text + "".join(repr(record.args) for record in caplog.records)
    assert TOKEN not in logged
    assert base64.b64encode(f"provisioner:{TOKEN}".encode()).decode() not in logged


# GitHub behind an Enterprise-style API root (`/api/v3`), so the configurable base is exercised too.
@pytest.fixture(params=["gitea", "github"])
def forge(request: pytest.FixtureRequest) -> Iterator[Forge]:
    dialect: Dialect = request.param
    with Forge(dialect, TOKEN, prefix="/api/v3" if dialect == "github" else None) as stand_in:
        yield stand_in


def settings_for(forge: Forge, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "git_provider": forge.dialect,
        "git_api_url": forge.api_url,
        "git_owner": "acme",
        "git_owner_is_org": True,
        "git_token": Secret(TOKEN),
        "git_private": True,
    }
    values.update(overrides)
    return Settings(**values)


def provider_for(forge: Forge, **overrides: Any) -> GiteaRepositoryProvider | GitHubRepositoryProvider:
    provider = repository_provider(settings_for(forge, **overrides))
    assert isinstance(provider, GiteaRepositoryProvider | GitHubRepositoryProvider)
    return provider


def raised(call: Any, *args: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        call(*args)
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value.details)
    return caught.value


# ---- choosing a provider ---------------------------------------------------------------------------------------


def test_the_provider_is_chosen_by_settings(tmp_path: Path) -> None:
    assert isinstance(repository_provider(Settings(data_dir=tmp_path)), LocalRepositoryProvider)
    gitea = Settings(git_provider="gitea", git_owner="acme", git_token=Secret(TOKEN))
    assert isinstance(repository_provider(gitea), GiteaRepositoryProvider)
    github = Settings(git_provider="github", git_owner="acme", git_token=Secret(TOKEN))
    assert isinstance(repository_provider(github), GitHubRepositoryProvider)
    with pytest.raises(ValueError, match=r"unknown Git provider 'gitlab'.*local, gitea, github"):
        repository_provider(Settings(git_provider="gitlab"))


def test_a_hosted_provider_needs_a_token_and_an_owner() -> None:
    with pytest.raises(ValueError, match="PROVISIONER_GIT_TOKEN"):
        repository_provider(Settings(git_provider="gitea", git_owner="acme"))
    with pytest.raises(ValueError, match="PROVISIONER_GIT_OWNER"):
        repository_provider(Settings(git_provider="github", git_token=Secret(TOKEN)))


def test_the_api_roots_default_per_host() -> None:
    assert GitHubRepositoryProvider.api_url(Settings()) == "https://api.github.com"
    assert GitHubRepositoryProvider.api_url(Settings(git_api_url="https://ghe.test/api/v3/")) == "https://ghe.test/api/v3"
    assert GiteaRepositoryProvider.api_url(Settings(git_base_url="https://gitea.test")) == "https://gitea.test/api/v1"


def test_the_settings_block_reads_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "deploy-token"
    token_file.write_text("deploy-secret\n")
    settings = Settings.from_env(
        {
            "PROVISIONER_GIT_PROVIDER": "github",
            "PROVISIONER_GIT_API_URL": "https://ghe.test/api/v3/",
            "PROVISIONER_GIT_OWNER": "acme",
            "PROVISIONER_GIT_OWNER_IS_ORG": "true",
            "PROVISIONER_GIT_PRIVATE": "no",
            "PROVISIONER_GIT_DEPLOY_USERNAME": "flux",
            "PROVISIONER_GIT_DEPLOY_TOKEN_FILE": str(token_file),
            "PROVISIONER_GIT_API_TIMEOUT_SECONDS": "5",
        }
    )
    assert settings.git_api_url == "https://ghe.test/api/v3"
    assert settings.git_owner == "acme" and settings.git_owner_is_org is True
    assert settings.git_private is False and settings.git_api_timeout_seconds == 5.0
    assert settings.git_deploy_username == "flux" and settings.git_deploy_token.reveal() == "deploy-secret"
    assert "deploy-secret" not in repr(settings)
    assert Settings.from_env({}).git_private is True
    with pytest.raises(ValueError, match="PROVISIONER_GIT_PRIVATE must be true or false"):
        Settings.from_env({"PROVISIONER_GIT_PRIVATE": "maybe"})


def test_the_ownership_marker_is_the_descriptions_last_words() -> None:
    marked = marked_description(DESCRIPTION, "billing-api")
    assert marked == f"{DESCRIPTION} (managed by provisioner: project billing-api)"
    assert marked_description(marked, "billing-api") == marked
    assert owner_named_by(marked) == "billing-api"
    # A display name quoting another project's marker does not make the repository that project's.
    spoof = marked_description("x (managed by provisioner: project payroll) y", "billing-api")
    assert owner_named_by(spoof) == "billing-api"
    assert owner_named_by("Billing API") is None and owner_named_by(None) is None


# ---- creating ------------------------------------------------------------------------------------------------


def test_create_answers_201_with_the_repository(forge: Forge) -> None:
    info = provider_for(forge).ensure_repository("billing-api", DESCRIPTION)

    assert info == RepositoryInfo(
        name="billing-api",
        clone_url="https://git.example.test/billing-api.git",
        default_branch="main",
        created=True,
        requires_credentials=True,
    )
    [request] = forge.requests
    assert (request.method, request.path) == ("POST", f"{forge.prefix}/orgs/acme/repos")
    assert request.authorization == (f"token {TOKEN}" if forge.dialect == "gitea" else f"Bearer {TOKEN}")
    assert request.body["description"] == f"{DESCRIPTION} (managed by provisioner: project billing-api)"
    assert request.body["private"] is True and request.body["auto_init"] is False


def test_create_as_the_tokens_user_and_public(forge: Forge) -> None:
    provider = provider_for(forge, git_owner="bot", git_owner_is_org=False, git_private=False)
    info = provider.ensure_repository("billing-api", DESCRIPTION)
    assert info.created and not info.requires_credentials
    assert forge.requests[0].path == f"{forge.prefix}/user/repos"
    assert ("bot", "billing-api") in forge.repositories


def test_gitea_creates_the_configured_default_branch() -> None:
    with Forge("gitea", TOKEN) as forge:
        info = provider_for(forge, git_default_branch="trunk").ensure_repository("billing-api", DESCRIPTION)
    assert info.default_branch == "trunk"
    assert forge.requests[0].body["default_branch"] == "trunk"


def test_an_existing_repository_of_the_same_project_is_success(forge: Forge) -> None:
    provider = provider_for(forge)
    first = provider.ensure_repository("billing-api", DESCRIPTION)
    again = provider.ensure_repository("billing-api", DESCRIPTION)

    assert again == RepositoryInfo(first.name, first.clone_url, first.default_branch, False, True)
    # The second run: the create call is refused as "already exists", then the repository is read.
    assert [(r.method, r.path.removeprefix(forge.prefix)) for r in forge.requests[1:]] == [
        ("POST", "/orgs/acme/repos"),
        ("GET", "/repos/acme/billing-api"),
    ]


def test_an_unmarked_repository_is_a_permanent_conflict(forge: Forge) -> None:
    forge.add_repository("acme", "billing-api", "the team's hand-made repository")
    error = raised(provider_for(forge).ensure_repository, "billing-api", DESCRIPTION)
    assert error.type == ErrorType.REPOSITORY_CONFLICT and error.non_retryable
    assert "'acme/billing-api' already exists" in error.message and "not managed by provisioner" in error.message


def test_another_projects_repository_is_a_permanent_conflict(forge: Forge) -> None:
    forge.add_repository("acme", "billing-api", "Payroll (managed by provisioner: project payroll)")
    error = raised(provider_for(forge).ensure_repository, "billing-api", DESCRIPTION)
    assert error.type == ErrorType.REPOSITORY_CONFLICT and error.non_retryable
    assert "belongs to project 'payroll'" in error.message


def test_a_taken_name_the_token_cannot_read_is_a_conflict(forge: Forge) -> None:
    forge.add_repository("acme", "billing-api", "hidden")
    forge.answer_next("GET", "/repos/acme/billing-api", forge._not_found())
    error = raised(provider_for(forge).ensure_repository, "billing-api", DESCRIPTION)
    assert error.type == ErrorType.REPOSITORY_CONFLICT and "cannot be read" in error.message


def test_github_validation_errors_other_than_a_taken_name_are_permanent() -> None:
    with Forge("github", TOKEN) as forge:
        invalid = {
            "message": "Repository creation failed.",
            "errors": [{"resource": "Repository", "code": "custom", "field": "name", "message": "name is too long"}],
            "documentation_url": "https://docs.github.com/rest/repos/repos",
            "status": "422",
        }
        forge.answer_next("POST", "/orgs/acme/repos", CannedAnswer(422, invalid))
        error = raised(provider_for(forge).ensure_repository, "billing-api", DESCRIPTION)
    assert error.type == ErrorType.GIT_HOST_REJECTED and error.non_retryable
    assert "422 (Repository creation failed.; name is too long)" in error.message


def test_an_invalid_slug_never_reaches_the_host(forge: Forge) -> None:
    error = raised(provider_for(forge).ensure_repository, "../etc", DESCRIPTION)
    assert error.type == ErrorType.INVALID_INPUT
    assert forge.requests == []


# ---- failures ------------------------------------------------------------------------------------------------


def test_a_refused_token_is_permanent_and_never_echoed(forge: Forge) -> None:
    provider = provider_for(forge, git_token=Secret("tok-wrong-0000"))
    error = raised(provider.ensure_repository, "billing-api", DESCRIPTION)
    assert error.type == ErrorType.GIT_HOST_REJECTED and error.non_retryable
    assert "answered 401" in error.message and "PROVISIONER_GIT_TOKEN" in error.message
    assert "tok-wrong-0000" not in error.message


def test_a_host_quoting_the_token_back_is_scrubbed(forge: Forge) -> None:
    forge.answer_next("POST", "/orgs/acme/repos", CannedAnswer(400, {"message": f"bad header token {TOKEN}"}))
    error = raised(provider_for(forge).ensure_repository, "billing-api", DESCRIPTION)
    assert "bad header token ***" in error.message


def test_a_missing_organisation_is_permanent(forge: Forge) -> None:
    error = raised(provider_for(forge, git_owner="nobody").ensure_repository, "billing-api", DESCRIPTION)
    assert error.type == ErrorType.GIT_HOST_REJECTED and error.non_retryable
    assert "answered 404" in error.message and "PROVISIONER_GIT_OWNER ('nobody', organisation)" in error.message


def test_a_forbidden_call_is_permanent_with_a_hint() -> None:
    with Forge("github", TOKEN) as forge:
        provider = provider_for(forge)
        provider.ensure_repository("billing-api", DESCRIPTION)
        admin = {"message": "Must have admin rights to Repository.", "documentation_url": "https://docs.github.com/rest"}
        forge.answer_next("DELETE", "/repos/acme/billing-api", CannedAnswer(403, admin))
        error = raised(provider.delete_repository, "billing-api")
    assert error.type == ErrorType.GIT_HOST_REJECTED and error.non_retryable
    assert "Must have admin rights" in error.message and "delete_repo" in error.message


def rate_limit_headers(reset_in: int) -> dict[str, str]:
    return {
        "x-ratelimit-limit": "5000",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-used": "5000",
        "x-ratelimit-reset": str(int(time.time()) + reset_in),
        "x-ratelimit-resource": "core",
    }


def test_github_primary_rate_limit_is_retryable_after_the_reset() -> None:
    with Forge("github", TOKEN) as forge:
        body = {"message": "API rate limit exceeded for user ID 1.", "documentation_url": GITHUB_DOCS}
        forge.answer_next("POST", "/orgs/acme/repos", CannedAnswer(403, body, rate_limit_headers(120)))
        error = raised(provider_for(forge).ensure_repository, "billing-api", DESCRIPTION)
    assert error.type == GIT_HOST_RATE_LIMITED and not error.non_retryable
    assert error.next_retry_delay is not None and 110 <= error.next_retry_delay.total_seconds() <= 121
    assert "rate limited; retry in 1" in error.message and "API rate limit exceeded" in error.message


@pytest.mark.parametrize("status", [403, 429])
def test_github_secondary_rate_limit_honours_retry_after(status: int) -> None:
    with Forge("github", TOKEN) as forge:
        body = {"message": "You have exceeded a secondary rate limit.", "documentation_url": GITHUB_DOCS}
        forge.answer_next("GET", "/repos/acme/billing-api", CannedAnswer(status, body, {"retry-after": "30"}))
        error = raised(provider_for(forge).delete_repository, "billing-api")
    assert error.type == GIT_HOST_RATE_LIMITED and not error.non_retryable
    assert error.next_retry_delay is not None and error.next_retry_delay.total_seconds() == 30
    assert "retry in 30 s" in error.message


def test_gitea_rate_limit_is_retryable() -> None:
    with Forge("gitea", TOKEN) as forge:
        answer = CannedAnswer(429, {"message": "rate limited"}, {"Retry-After": "7"})
        forge.answer_next("POST", "/orgs/acme/repos", answer)
        error = raised(provider_for(forge).ensure_repository, "billing-api", DESCRIPTION)
    assert error.type == GIT_HOST_RATE_LIMITED and not error.non_retryable
    assert error.next_retry_delay is not None and error.next_retry_delay.total_seconds() == 7
    assert "retry in 7 s" in error.message


def test_a_server_error_is_retryable(forge: Forge) -> None:
    forge.answer_next("POST", "/orgs/acme/repos", CannedAnswer(502, None))
    error = raised(provider_for(forge).ensure_repository, "billing-api", DESCRIPTION)
    assert error.type == GIT_HOST_UNAVAILABLE and not error.non_retryable
    assert "answered 502" in error.message and "retrying with the activity's backoff" in error.message
    assert error.next_retry_delay is None


def test_a_maintenance_window_names_its_end(forge: Forge) -> None:
    answer = CannedAnswer(503, {"message": "maintenance"}, {"Retry-After": "90"})
    forge.answer_next("GET", "/repos/acme/billing-api", answer)
    error = raised(provider_for(forge).delete_repository, "billing-api")
    assert error.type == GIT_HOST_UNAVAILABLE and not error.non_retryable
    assert error.next_retry_delay is not None and error.next_retry_delay.total_seconds() == 90


def test_an_unreachable_host_is_retryable() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = Settings(git_provider="gitea", git_api_url=f"http://127.0.0.1:{port}/api/v1", git_owner="acme",
                        git_token=Secret(TOKEN), git_api_timeout_seconds=5)  # fmt: skip
    error = raised(repository_provider(settings).ensure_repository, "billing-api", DESCRIPTION)
    assert error.type == GIT_HOST_UNAVAILABLE and not error.non_retryable
    assert f"could not reach Gitea at http://127.0.0.1:{port}/api/v1" in error.message


# ---- deleting ------------------------------------------------------------------------------------------------


def test_delete_removes_only_the_projects_repository(forge: Forge) -> None:
    provider = provider_for(forge)
    provider.ensure_repository("billing-api", DESCRIPTION)

    assert provider.delete_repository("billing-api") is True
    assert ("acme", "billing-api") not in forge.repositories
    assert provider.delete_repository("billing-api") is False  # a missing repository is done

    # Someone else's: refused, and no DELETE is ever sent for it.
    forge.add_repository("acme", "shop", "Payroll (managed by provisioner: project payroll)")
    assert "belongs to project 'payroll'" in raised(provider.delete_repository, "shop").message
    forge.add_repository("acme", "handmade", "by hand")
    assert raised(provider.delete_repository, "handmade").type == ErrorType.REPOSITORY_CONFLICT
    assert {("acme", "shop"), ("acme", "handmade")} <= set(forge.repositories)
    deletes = {path for method, path in forge.paths_seen() if method == "DELETE"}
    assert deletes == {f"{forge.prefix}/repos/acme/billing-api"}


# ---- through the activities, pushing to a real Git server --------------------------------------------------


def test_the_activities_create_push_and_delete_through_a_hosted_provider(
    token_server: GitHttpServer, repos_dir: Path, tmp_path: Path
) -> None:
    with Forge("gitea", TOKEN, clone_base_url=token_server.base_url, repos_dir=repos_dir) as forge:
        settings = settings_for(forge, data_dir=tmp_path / "data")
        activities = GitActivities(settings, render=fake_render)
        env = ActivityEnvironment()
        spec = ProjectSpec(slug="billing-api", display_name="Billing API", template="web-service")

        repository = env.run(activities.create_repository, spec)
        assert repository.created and repository.requires_credentials
        assert repository.clone_url == f"{token_server.base_url}/billing-api.git"
        assert TOKEN not in repr(repository)
        stored = forge.repositories[("acme", "billing-api")]
        assert stored.description == "Billing API (template web-service, managed by provisioner: project billing-api)"

        # The token server refuses anonymous pushes: this one went through with the token as basic auth.
        pushed = env.run(activities.push_template, PushRequest(spec=spec, repository=repository))
        assert pushed.pushed and TOKEN not in repr(pushed)
        checkout = tmp_path / "checkout"
        git("clone", "-q", repository.clone_url, str(checkout))
        assert (checkout / "README.md").read_text() == "# Billing API\n"

        again = env.run(activities.create_repository, spec)
        assert not again.created and again.clone_url == repository.clone_url

        deleted = env.run(activities.delete_repository, RepositoryDeletionRequest(slug="billing-api"))
        assert deleted.deleted and ("acme", "billing-api") not in forge.repositories
