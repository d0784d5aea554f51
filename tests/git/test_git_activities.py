"""The git activities against a real `GitHttpServer` (token-protected pushes), verified by cloning with git."""

from __future__ import annotations

import base64
import logging
import os
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.git as git_activities
from activities.git import (
    GitActivities,
    GitOperationError,
    LocalRepositoryProvider,
    scrub_credentials,
)
from provisioner.contracts import ErrorType, ProjectSpec, PushRequest, PushResult, RepositoryInfo
from provisioner.gitserver import GitHttpServer
from provisioner.settings import Secret, Settings
from provisioner.templating import RenderedTree, TemplateRenderFailed, tree_digest
from tests.git.conftest import TOKEN, git, init_bare

EXECUTABLE = "scripts/run.sh"
NOT_MANAGED = (
    "repository 'billing-api.git' already exists and is not managed by provisioner; "
    "refusing to take it over (choose another slug or remove the repository)"
)


def fake_render(spec: ProjectSpec, templates_dir: Path) -> RenderedTree:
    """A stand-in template whose output depends on the parameters: `replicas`, `with_docs`, `extra_files`."""
    files = {
        "README.md": f"# {spec.display_name}\n".encode(),
        "k8s/kustomization.yaml": b"resources:\n  - deployment.yaml\n",
        "k8s/deployment.yaml": f"replicas: {spec.parameters.get('replicas', 1)}\n".encode(),
        EXECUTABLE: b"#!/bin/sh\necho run\n",
        # Bytes a work-tree based commit would alter: CRLF under `text=auto`, and an ignored file.
        ".gitattributes": b"* text=auto\n",
        ".gitignore": b"*.log\n",
        "logs/keep.log": b"kept\r\nverbatim\r\n",
    }
    if spec.parameters.get("with_docs", True):
        files["docs/guide.md"] = b"guide\n"
    for index in range(int(spec.parameters.get("extra_files", 0))):
        files[f"generated/part-{index % 20}/file-{index}.yaml"] = f"index: {index}\n".encode() + b"x" * 300 + b"\n"
    executable = frozenset({EXECUTABLE})
    return RenderedTree(
        template=spec.template,
        environment=spec.environment,
        files=dict(sorted(files.items())),
        kustomize_path="k8s",
        digest=tree_digest(files, executable),
        executable=executable,
    )


def make_spec(slug: str = "billing-api", **parameters: str | int | bool) -> ProjectSpec:
    return ProjectSpec(slug=slug, display_name="Billing API", template="web-service", parameters=dict(parameters))


def cloned_files(url: str, destination: Path, branch: str = "main") -> dict[str, bytes]:
    git("clone", "-q", "--branch", branch, url, str(destination))
    return {
        path.relative_to(destination).as_posix(): path.read_bytes()
        for path in destination.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(destination).parts
    }


def commit_count(url: str, workdir: Path) -> int:
    if not workdir.exists():
        git("clone", "-q", "--bare", url, str(workdir))
    else:
        git("fetch", "-q", url, "+refs/heads/*:refs/heads/*", cwd=workdir)
    return int(git("rev-list", "--count", "main", cwd=workdir).stdout)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        templates_dir=tmp_path / "templates",
        git_base_url="http://unused.invalid",
        git_username="provisioner",
        git_token=Secret(TOKEN),
        git_author_name="Provisioner Bot",
        git_author_email="bot@provisioner.test",
    )


@pytest.fixture
def server(settings: Settings) -> Iterator[GitHttpServer]:
    with GitHttpServer(settings.git_repos_dir, token=settings.git_token) as running:
        yield running


@pytest.fixture
def live_settings(settings: Settings, server: GitHttpServer) -> Settings:
    return replace(settings, git_base_url=server.base_url)


@pytest.fixture
def activities(live_settings: Settings) -> GitActivities:
    return GitActivities(live_settings, render=fake_render)


def push(activities: GitActivities, spec: ProjectSpec) -> tuple[RepositoryInfo, PushResult]:
    repository = activities.create_repository(spec)
    return repository, activities.push_template(PushRequest(spec=spec, repository=repository))


# ---- create_repository ---------------------------------------------------------------------------------------


def test_create_repository_creates_a_marked_bare_repository_once(
    activities: GitActivities, live_settings: Settings
) -> None:
    first = activities.create_repository(make_spec())
    assert first == RepositoryInfo(
        name="billing-api",
        clone_url=f"{live_settings.git_base_url}/billing-api.git",
        default_branch="main",
        created=True,
    )
    path = live_settings.git_repos_dir / "billing-api.git"
    assert git("rev-parse", "--is-bare-repository", cwd=path).stdout.strip() == "true"
    assert git("symbolic-ref", "HEAD", cwd=path).stdout.strip() == "refs/heads/main"
    assert git("config", "--file", str(path / "config"), "provisioner.project").stdout.strip() == "billing-api"
    assert git("config", "--file", str(path / "config"), "--bool", "provisioner.managed").stdout.strip() == "true"
    assert git("config", "--file", str(path / "config"), "--bool", "http.receivepack").stdout.strip() == "true"
    assert "Billing API" in (path / "description").read_text()

    second = activities.create_repository(make_spec())
    assert second == replace(first, created=False)
    assert sorted(p.name for p in live_settings.git_repos_dir.iterdir()) == ["billing-api.git"]  # no staging left


def test_create_repository_through_the_activity_environment(activities: GitActivities) -> None:
    env = ActivityEnvironment()
    assert env.run(activities.create_repository, make_spec()).created is True
    assert env.run(activities.create_repository, make_spec()).created is False


def test_an_existing_unmarked_repository_is_a_non_retryable_conflict(
    activities: GitActivities, live_settings: Settings
) -> None:
    live_settings.git_repos_dir.mkdir(parents=True, exist_ok=True)
    init_bare(live_settings.git_repos_dir / "billing-api.git")
    with pytest.raises(ApplicationError) as caught:
        activities.create_repository(make_spec())
    assert caught.value.type == ErrorType.REPOSITORY_CONFLICT
    assert caught.value.non_retryable
    assert caught.value.message == NOT_MANAGED


def test_another_projects_repository_is_a_non_retryable_conflict(
    activities: GitActivities, live_settings: Settings
) -> None:
    activities.create_repository(make_spec("other-app"))
    # Someone copied other-app's repository to billing-api's name: the marker still says other-app.
    repos = live_settings.git_repos_dir
    (repos / "other-app.git").rename(repos / "billing-api.git")
    with pytest.raises(ApplicationError) as caught:
        ActivityEnvironment().run(activities.create_repository, make_spec())
    assert caught.value.type == ErrorType.REPOSITORY_CONFLICT
    assert caught.value.non_retryable
    assert "belongs to project 'other-app'" in str(caught.value)


@pytest.mark.parametrize("managed", [None, "false"], ids=["no-managed-flag", "managed-false"])
def test_a_repository_marked_with_the_project_but_not_managed_is_never_adopted(
    activities: GitActivities, live_settings: Settings, managed: str | None
) -> None:
    """The project name alone is not ownership: without `managed = true` the repository is someone else's."""
    live_settings.git_repos_dir.mkdir(parents=True, exist_ok=True)
    path = init_bare(live_settings.git_repos_dir / "billing-api.git")
    git("config", "--file", str(path / "config"), "provisioner.project", "billing-api")
    if managed is not None:
        git("config", "--file", str(path / "config"), "provisioner.managed", managed)

    for attempt in (
        lambda: activities.create_repository(make_spec()),
        lambda: LocalRepositoryProvider(live_settings).find_repository("billing-api"),
        lambda: LocalRepositoryProvider(live_settings).delete_repository("billing-api"),
    ):
        with pytest.raises(ApplicationError) as caught:
            attempt()
        assert caught.value.type == ErrorType.REPOSITORY_CONFLICT
        assert caught.value.non_retryable
        assert caught.value.message == NOT_MANAGED
    assert (path / "HEAD").is_file()


def test_a_non_repository_in_the_way_is_a_conflict(activities: GitActivities, live_settings: Settings) -> None:
    live_settings.git_repos_dir.mkdir(parents=True, exist_ok=True)
    (live_settings.git_repos_dir / "billing-api.git").write_text("not a directory")
    with pytest.raises(ApplicationError) as caught:
        activities.create_repository(make_spec())
    assert caught.value.type == ErrorType.REPOSITORY_CONFLICT
    assert caught.value.message == NOT_MANAGED


def test_a_marker_naming_the_owner_in_bytes_that_are_not_utf8_still_names_another_project(settings: Settings) -> None:
    provider = LocalRepositoryProvider(settings)
    provider.ensure_repository("billing-api", "Billing API")
    config = settings.git_repos_dir / "billing-api.git" / "config"
    config.write_bytes(b"[core]\n\tbare = true\n[provisioner]\n\tproject = \xffbilling-api\n\tmanaged = true\n")
    attempts: list[Callable[[], object]] = [
        lambda: provider.ensure_repository("billing-api", "Billing API"),
        lambda: provider.find_repository("billing-api"),
        lambda: provider.delete_repository("billing-api"),
    ]
    for attempt in attempts:
        with pytest.raises(ApplicationError) as caught:
            attempt()
        assert caught.value.type == ErrorType.REPOSITORY_CONFLICT
        assert caught.value.message == (
            "repository 'billing-api.git' already exists and belongs to project '\ufffdbilling-api', not 'billing-api'"
        )
    assert config.is_file()


def test_find_repository_reports_the_projects_repository_and_never_creates_one(settings: Settings) -> None:
    provider = LocalRepositoryProvider(settings)
    assert provider.find_repository("billing-api") is None
    assert not settings.git_repos_dir.exists()
    provider.ensure_repository("billing-api", "Billing API")
    assert provider.find_repository("billing-api") == RepositoryInfo(
        name="billing-api",
        clone_url="http://unused.invalid/billing-api.git",
        default_branch="main",
        created=False,
    )


@pytest.mark.parametrize(
    ("head", "branch"),
    [
        ("ref: refs/heads/trunk\n", "trunk"),
        ("0123456789abcdef0123456789abcdef01234567\n", "develop"),
        (None, "develop"),
    ],
    ids=["on-a-branch", "detached", "no-head"],
)
def test_an_existing_repository_reports_the_branch_its_head_names_else_the_configured_one(
    settings: Settings, head: str | None, branch: str
) -> None:
    LocalRepositoryProvider(settings).ensure_repository("billing-api", "Billing API")
    head_file = settings.git_repos_dir / "billing-api.git" / "HEAD"
    if head is None:
        head_file.unlink()
    else:
        head_file.write_text(head)
    provider = LocalRepositoryProvider(replace(settings, git_default_branch="develop"))
    found = provider.find_repository("billing-api")
    assert found is not None and found.default_branch == branch
    assert provider.ensure_repository("billing-api", "Billing API") == replace(found, created=False)


def test_creating_and_deleting_a_repository_is_logged_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    provider = LocalRepositoryProvider(settings)
    with caplog.at_level(logging.INFO, logger="activities.git"):
        provider.ensure_repository("billing-api", "Billing API")
        provider.ensure_repository("billing-api", "Billing API")  # there already: nothing done, nothing logged
        provider.delete_repository("billing-api")
        provider.delete_repository("billing-api")
    assert [(record.name, record.levelno, record.getMessage()) for record in caplog.records] == [
        ("activities.git", logging.INFO, "created repository billing-api.git"),
        ("activities.git", logging.INFO, "deleted repository billing-api.git"),
    ]


def test_a_symbolic_link_in_the_repositorys_place_is_never_deleted(settings: Settings, tmp_path: Path) -> None:
    provider = LocalRepositoryProvider(settings)
    provider.ensure_repository("billing-api", "Billing API")  # marked as the project's: the link itself is refused
    elsewhere = tmp_path / "elsewhere.git"
    (settings.git_repos_dir / "billing-api.git").rename(elsewhere)
    (settings.git_repos_dir / "billing-api.git").symlink_to(elsewhere)
    with pytest.raises(ApplicationError) as caught:
        provider.delete_repository("billing-api")
    assert caught.value.type == ErrorType.REPOSITORY_CONFLICT
    assert caught.value.non_retryable
    assert caught.value.message == (
        "repository 'billing-api.git' is a symbolic link, not a repository created by provisioner; "
        "refusing to delete it"
    )
    assert (settings.git_repos_dir / "billing-api.git").is_symlink()
    assert (elsewhere / "HEAD").is_file()
    assert sorted(os.listdir(settings.git_repos_dir)) == ["billing-api.git"]


def test_an_invalid_slug_never_touches_the_file_system(activities: GitActivities, live_settings: Settings) -> None:
    with pytest.raises(ApplicationError) as caught:
        activities.create_repository(make_spec("../escape"))
    assert caught.value.type == ErrorType.INVALID_INPUT
    assert caught.value.non_retryable
    assert not (live_settings.data_dir / "escape.git").exists()


def test_concurrent_creation_creates_the_repository_exactly_once(
    activities: GitActivities, live_settings: Settings
) -> None:
    barrier = threading.Barrier(8)

    def create(_: int) -> bool:
        barrier.wait()
        return activities.create_repository(make_spec()).created

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(create, range(8)))
    assert results.count(True) == 1
    assert sorted(p.name for p in live_settings.git_repos_dir.iterdir()) == ["billing-api.git"]


# ---- push_template -------------------------------------------------------------------------------------------


def test_push_commits_exactly_the_rendered_tree(activities: GitActivities, tmp_path: Path) -> None:
    spec = make_spec(replicas=3)
    repository, result = push(activities, spec)

    assert result.pushed is True
    assert result.branch == "main"
    assert len(result.commit_sha) == 40
    clone = tmp_path / "clone"
    assert cloned_files(repository.clone_url, clone) == fake_render(spec, tmp_path).files  # byte for byte
    assert git("rev-parse", "HEAD", cwd=clone).stdout.strip() == result.commit_sha
    assert git("rev-list", "--count", "HEAD", cwd=clone).stdout.strip() == "1"
    log_line = git("log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", cwd=clone).stdout.strip()
    assert log_line == (
        "Provisioner Bot <bot@provisioner.test>|Provisioner Bot <bot@provisioner.test>|"
        "Render template web-service for project billing-api"
    )
    modes = dict(
        (line.split("\t")[1], line.split()[0]) for line in git("ls-tree", "-r", "HEAD", cwd=clone).stdout.splitlines()
    )
    assert modes[EXECUTABLE] == "100755"
    assert modes["README.md"] == "100644"


def test_pushing_the_same_spec_again_returns_the_same_commit(activities: GitActivities, tmp_path: Path) -> None:
    spec = make_spec()
    repository, first = push(activities, spec)
    second = ActivityEnvironment().run(activities.push_template, PushRequest(spec=spec, repository=repository))
    assert second == PushResult(commit_sha=first.commit_sha, branch="main", pushed=False)
    assert commit_count(repository.clone_url, tmp_path / "bare") == 1


def test_changed_parameters_make_a_new_commit_that_removes_deleted_files(
    activities: GitActivities, tmp_path: Path
) -> None:
    repository, first = push(activities, make_spec(replicas=1, with_docs=True))
    changed = make_spec(replicas=5, with_docs=False)
    second = activities.push_template(PushRequest(spec=changed, repository=repository))

    assert second.pushed is True
    assert second.commit_sha != first.commit_sha
    clone = tmp_path / "clone"
    files = cloned_files(repository.clone_url, clone)
    assert files == fake_render(changed, tmp_path).files
    assert "docs/guide.md" not in files
    assert git("rev-parse", "HEAD~1", cwd=clone).stdout.strip() == first.commit_sha
    diff = git("diff", "--name-status", "HEAD~1", "HEAD", cwd=clone).stdout.split("\n")
    assert sorted(line for line in diff if line) == ["D\tdocs/guide.md", "M\tk8s/deployment.yaml"]


def test_a_branch_that_moved_during_the_push_is_re_evaluated(
    activities: GitActivities, live_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Another worker pushes the same tree between our clone and our push: we adopt its commit."""
    spec = make_spec()
    repository = activities.create_repository(spec)
    request = PushRequest(spec=spec, repository=repository)
    real_store_tree = git_activities._store_tree
    competitor: list[PushResult] = []

    def store_tree_while_a_competitor_pushes(workdir: Path, tree: RenderedTree) -> str:
        if not competitor:
            competitor.append(PushResult("", "", False))  # guards the nested call
            competitor[0] = GitActivities(live_settings, render=fake_render).push_template(request)
        return real_store_tree(workdir, tree)

    monkeypatch.setattr(git_activities, "_store_tree", store_tree_while_a_competitor_pushes)
    result = activities.push_template(request)

    assert competitor[0].pushed is True
    assert result == PushResult(commit_sha=competitor[0].commit_sha, branch="main", pushed=False)
    assert commit_count(repository.clone_url, tmp_path / "bare") == 1


def test_a_foreign_commit_pushed_meanwhile_is_built_upon(
    activities: GitActivities, live_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = make_spec(replicas=2)
    repository = activities.create_repository(spec)
    real_store_tree = git_activities._store_tree
    competitor: list[PushResult] = []

    def store_tree_while_a_competitor_pushes(workdir: Path, tree: RenderedTree) -> str:
        if not competitor:
            competitor.append(PushResult("", "", False))
            other = PushRequest(spec=make_spec(replicas=9), repository=repository)
            competitor[0] = GitActivities(live_settings, render=fake_render).push_template(other)
        return real_store_tree(workdir, tree)

    monkeypatch.setattr(git_activities, "_store_tree", store_tree_while_a_competitor_pushes)
    result = activities.push_template(PushRequest(spec=spec, repository=repository))

    assert result.pushed is True
    clone = tmp_path / "clone"
    assert cloned_files(repository.clone_url, clone) == fake_render(spec, tmp_path).files
    assert git("rev-parse", "HEAD~1", cwd=clone).stdout.strip() == competitor[0].commit_sha
    assert git("rev-parse", "HEAD", cwd=clone).stdout.strip() == result.commit_sha


def test_concurrent_pushes_of_the_same_spec_agree_on_one_commit(
    activities: GitActivities, live_settings: Settings, tmp_path: Path
) -> None:
    spec = make_spec()
    repository = activities.create_repository(spec)
    barrier = threading.Barrier(4)

    def push_concurrently(_: int) -> PushResult:
        barrier.wait()
        worker = GitActivities(live_settings, render=fake_render)  # as if on another worker
        return worker.push_template(PushRequest(spec=spec, repository=repository))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(push_concurrently, range(4)))
    assert len({result.commit_sha for result in results}) == 1
    assert commit_count(repository.clone_url, tmp_path / "bare") == 1


def test_credentials_never_appear_in_errors_or_logs(
    live_settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    encoded = base64.b64encode(f"provisioner:{TOKEN}".encode()).decode()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    caplog.set_level(logging.DEBUG)
    spec = make_spec()
    GitActivities(live_settings, render=fake_render).create_repository(spec)

    def failure(settings: Settings) -> GitOperationError:
        acts = GitActivities(settings, render=fake_render)
        repository = acts.create_repository(spec)
        with pytest.raises(GitOperationError) as caught:
            ActivityEnvironment().run(acts.push_template, PushRequest(spec=spec, repository=repository))
        return caught.value

    # Nothing listens on the port: the clone fails with the URL in git's message.
    unreachable = failure(replace(live_settings, git_base_url="http://127.0.0.1:9"))
    # The server answers 401 to a wrong token.
    rejected = failure(replace(live_settings, git_token=Secret("wrong-" + TOKEN)))

    assert "127.0.0.1:9" in str(unreachable)
    assert "exit status" in str(rejected)
    for error in (unreachable, rejected):
        assert error.__cause__ is None
        rendered = "".join(traceback.format_exception(error)) + repr(error)
        for secret in (TOKEN, encoded, "wrong-"):
            assert secret not in rendered
    # ...nor anywhere in the logs, GitPython's DEBUG command lines included.
    GitActivities(live_settings, render=fake_render).push_template(
        PushRequest(spec=spec, repository=LocalRepositoryProvider(live_settings).ensure_repository(spec.slug, ""))
    )
    assert "Popen(" in caplog.text  # GitPython did log its command lines...
    assert TOKEN not in caplog.text
    assert encoded not in caplog.text
    assert list(scratch.iterdir()) == []  # temp clones removed after failures and successes alike


def test_scrub_credentials() -> None:
    text = "fatal: unable to access 'https://bot:s3cr%2Ft@git.example.com/x.git/': 403"
    assert scrub_credentials(text) == "fatal: unable to access 'https://***@git.example.com/x.git/': 403"
    assert scrub_credentials("token s3cr in stderr", ["s3cr"]) == "token *** in stderr"


def test_pushes_without_a_token_to_an_open_server(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "open", templates_dir=tmp_path)
    with GitHttpServer(settings.git_repos_dir) as open_server:
        settings = replace(settings, git_base_url=open_server.base_url)
        repository, result = push(GitActivities(settings, render=fake_render), make_spec())
        assert result.pushed
        assert cloned_files(repository.clone_url, tmp_path / "clone") == fake_render(make_spec(), tmp_path).files


def test_template_errors_are_non_retryable(live_settings: Settings) -> None:
    def broken_render(spec: ProjectSpec, templates_dir: Path) -> RenderedTree:
        raise TemplateRenderFailed("template 'web-service': files/x.yaml line 3: unexpected '}'")

    def escaping_render(spec: ProjectSpec, templates_dir: Path) -> RenderedTree:
        tree = fake_render(spec, templates_dir)
        return replace(tree, files={**tree.files, "../outside.txt": b"x"})

    spec = make_spec()
    repository = GitActivities(live_settings).create_repository(spec)
    for render, fragment in ((broken_render, "unexpected"), (escaping_render, "unsafe path")):
        with pytest.raises(ApplicationError) as caught:
            GitActivities(live_settings, render=render).push_template(PushRequest(spec=spec, repository=repository))
        assert caught.value.type == ErrorType.TEMPLATE_RENDER_FAILED
        assert caught.value.non_retryable
        assert fragment in str(caught.value)


@pytest.mark.parametrize(
    "unsafe",
    [
        *["", "/etc/passwd", "docs//guide.md", "docs/", "./README.md", "docs/./guide.md", "../outside", "docs/../x"],
        *[".git", "k8s/.GIT/x", "new\nline", "tab\tin/name", "unit\x1fseparator", "\x00"],
    ],
)
def test_anything_but_a_plain_relative_path_is_refused_as_a_tree_path(unsafe: str) -> None:
    with pytest.raises(ApplicationError) as caught:
        git_activities._rendered_path(unsafe)
    assert caught.value.type == ErrorType.TEMPLATE_RENDER_FAILED
    assert caught.value.non_retryable
    assert caught.value.message == f"the rendered template contains an unsafe path {unsafe!r}"


@pytest.mark.parametrize(
    "safe", ["README.md", "a b/c d.txt", "..hidden", "...", ".gitignore", ".github/workflows/ci.yml", "ünï/文件", "~"]
)
def test_a_plain_relative_path_is_its_utf8_tree_path(safe: str) -> None:
    assert git_activities._rendered_path(safe) == safe.encode("utf-8")


@pytest.mark.parametrize("unsafe", [".GIT/hooks/post-update", "docs/.Git/config", "k8s/.git"])
def test_a_git_directory_in_any_letter_case_is_an_unsafe_path(live_settings: Settings, unsafe: str) -> None:
    """`.GIT` is `.git` on a case-insensitive file system: a checkout there would write into the repository."""

    def render_into_git_dir(spec: ProjectSpec, templates_dir: Path) -> RenderedTree:
        tree = fake_render(spec, templates_dir)
        return replace(tree, files={**tree.files, unsafe: b"#!/bin/sh\n"})

    spec = make_spec()
    repository = GitActivities(live_settings).create_repository(spec)
    with pytest.raises(ApplicationError) as caught:
        GitActivities(live_settings, render=render_into_git_dir).push_template(
            PushRequest(spec=spec, repository=repository)
        )
    assert caught.value.type == ErrorType.TEMPLATE_RENDER_FAILED
    assert caught.value.non_retryable
    assert f"unsafe path {unsafe!r}" in str(caught.value)
    assert git("ls-remote", "--heads", repository.clone_url).stdout == ""  # nothing was pushed


def test_the_default_renderer_is_the_real_template_engine(live_settings: Settings, tmp_path: Path) -> None:
    template = live_settings.templates_dir / "tiny"
    (template / "files").mkdir(parents=True)
    (template / "template.yaml").write_text(
        "name: tiny\n"
        "description: A tiny test template.\n"
        "parameters:\n"
        "  greeting:\n"
        "    type: string\n"
        "    default: hello\n"
        "environments:\n"
        "  development:\n"
        "    kustomize_path: .\n"
    )
    (template / "files" / "kustomization.yaml").write_text("resources:\n  - configmap.yaml\n")
    (template / "files" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ project.slug }}\ndata:\n"
        "  greeting: {{ params.greeting }}\n"
    )
    spec = ProjectSpec(slug="tiny-app", display_name="Tiny", template="tiny", parameters={"greeting": "hi"})
    repository, result = push(GitActivities(live_settings), spec)

    assert result.pushed
    files = cloned_files(repository.clone_url, tmp_path / "clone")
    assert set(files) == {"kustomization.yaml", "configmap.yaml"}
    assert b"name: tiny-app" in files["configmap.yaml"]
    assert b"greeting: hi" in files["configmap.yaml"]


def test_a_thousand_file_tree_pushes_with_the_git_commands_of_a_small_one(
    activities: GitActivities, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What keeps a large push fast, without a clock: the files are written in-process as one commit, so a push of a
    thousand files runs the very git commands a push of a few runs (none per file), and an unchanged re-run neither
    commits nor pushes."""
    commands: list[str] = []
    real_git = git_activities._GitRunner.__call__

    def counting_git(runner: git_activities._GitRunner, *args: str) -> str:
        commands.append(args[0])
        return real_git(runner, *args)

    monkeypatch.setattr(git_activities._GitRunner, "__call__", counting_git)

    def push_twice(spec: ProjectSpec) -> tuple[RepositoryInfo, list[str], list[str]]:
        repository = activities.create_repository(spec)
        request = PushRequest(spec=spec, repository=repository)
        commands.clear()
        first = activities.push_template(request)
        first_commands = list(commands)
        commands.clear()
        again = activities.push_template(request)
        assert first.pushed and not again.pushed and again.commit_sha == first.commit_sha
        return repository, first_commands, list(commands)

    _, small_push, small_rerun = push_twice(make_spec("small-tree"))
    large = make_spec("large-tree", extra_files=1000)
    repository, large_push, large_rerun = push_twice(large)

    assert large_push == small_push == ["clone", "for-each-ref", "commit-tree", "push"]
    assert large_rerun == small_rerun == ["clone", "for-each-ref", "rev-parse"]
    rendered = fake_render(large, tmp_path).files
    assert len(rendered) > 1000
    assert cloned_files(repository.clone_url, tmp_path / "clone") == rendered
    assert commit_count(repository.clone_url, tmp_path / "bare") == 1
