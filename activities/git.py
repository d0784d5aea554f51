"""Activities against the Git host: create the project's repository, push the rendered template, delete it.

All are idempotent. `create_repository` returns the existing repository when it already belongs to the project.
`push_template` renders the template again from the spec (activities may run on different hosts), builds the Git
tree from exactly the rendered bytes and commits only when that tree differs from the branch head, so re-running
it returns the same commit.

Credentials never travel on a command line or in a remote URL: a provider's push URL may embed them, but they are
split off and handed to git as an `http.<url>.extraHeader` through `GIT_CONFIG_*` environment variables, and every
error message is scrubbed before it leaves this module.

`delete_repository` removes only a repository that carries the project's ownership marker; a missing one is done.

The local provider builds and removes repositories in scratch directories named after the project
(`.creating-<slug>`, `.deleting-<slug>`), so a retry after a killed attempt finds what that attempt left and cleans
it up or finishes it (see `_ScratchDirectory`).

The provider comes from `Settings.git_provider`: `local` (below), `gitea` or `github` (activities/git_providers.py).
"""

from __future__ import annotations

import base64
import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from dulwich.config import ConfigFile
from dulwich.index import commit_tree
from dulwich.object_store import MemoryObjectStore
from dulwich.objects import Blob, ObjectID
from dulwich.repo import Repo
from git import Git
from git.exc import GitCommandError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.git_providers import (
    GiteaRepositoryProvider,
    GitHubRepositoryProvider,
    check_repository_name,
    ownership_marker,
    repository_conflict,
)
from provisioner.contracts import (
    MANAGED_BY,
    ErrorType,
    ProjectSpec,
    PushRequest,
    PushResult,
    RepositoryDeletionRequest,
    RepositoryDeletionResult,
    RepositoryInfo,
    UpdatePreview,
)
from provisioner.settings import Settings
from provisioner.templating import RenderedTree, TemplateError, render_project
from provisioner.testhold import hold_point

log = logging.getLogger(__name__)

MARKER_SECTION = (MANAGED_BY.encode(),)  # `[provisioner]` in the bare repository's config
MAX_PUSH_ATTEMPTS = 5
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's well-known empty tree: a branch with no commit yet
GIT_COMMAND_TIMEOUT_SECONDS = 300.0
# Abort transfers that crawl below 1 KB/s for a minute instead of hanging the activity.
LOW_SPEED_LIMIT_BYTES, LOW_SPEED_TIME_SECONDS = 1000, 60
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]*@")

Render = Callable[[ProjectSpec, Path], RenderedTree]


# ---- Credentials -------------------------------------------------------------------------------------------


def scrub_credentials(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without URL user-info (`user:token@`) and without any of `secrets`."""
    text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class _Remote:
    """A push URL split into a credential-free URL and the Authorization header git sends to it."""

    url: str
    authorization: str | None
    secrets: tuple[str, ...]

    @classmethod
    def from_push_url(cls, push_url: str) -> _Remote:
        parts = urlsplit(push_url)
        if parts.username is None and parts.password is None:
            return cls(push_url, None, ())
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=host))
        username, password = unquote(parts.username or ""), unquote(parts.password or "")
        encoded = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        return cls(url, f"Basic {encoded}", (password, parts.password or "", encoded))


class GitOperationError(RuntimeError):
    """A git command failed (network, server, local git); retryable. The message holds no credentials."""

    def __init__(self, message: str, *, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected  # the remote refused a ref update (e.g. the branch moved meanwhile)


# ---- Repository providers ----------------------------------------------------------------------------------


class RepositoryProvider(Protocol):
    def ensure_repository(self, slug: str, description: str) -> RepositoryInfo:
        """Create the project's repository, or return it when it already exists for this project."""
        ...

    def find_repository(self, slug: str) -> RepositoryInfo | None:
        """The project's existing repository, or None; never creates one. Someone else's is a RepositoryConflict."""
        ...

    def push_url(self, repository: RepositoryInfo) -> str:
        """The URL to push to; may embed credentials, so it is never logged nor returned from an activity."""
        ...

    def delete_repository(self, slug: str) -> bool:
        """Delete the project's repository; False when there is none. Someone else's is a RepositoryConflict."""
        ...


class LocalRepositoryProvider:
    """Bare repositories under `Settings.git_repos_dir`, served at `Settings.git_base_url` by `GitHttpServer`."""

    def __init__(self, settings: Settings) -> None:
        self._repos_dir = settings.git_repos_dir
        self._base_url = settings.git_base_url.rstrip("/")
        self._default_branch = settings.git_default_branch
        self._username = settings.git_username
        self._token = settings.git_token

    def repository_path(self, slug: str) -> Path:
        return self._repos_dir / f"{slug}.git"

    def ensure_repository(self, slug: str, description: str) -> RepositoryInfo:
        check_repository_name(slug)
        path = self.repository_path(slug)
        created = not os.path.lexists(path) and self._create(path, slug, description)
        if created:
            log.info("created repository %s", path.name)
            branch = self._default_branch
        else:
            branch = self._check_owned_by(path, slug)
        return RepositoryInfo(name=slug, clone_url=self._url(slug), default_branch=branch, created=created)

    def find_repository(self, slug: str) -> RepositoryInfo | None:
        check_repository_name(slug)
        path = self.repository_path(slug)
        if not os.path.lexists(path):
            return None
        branch = self._check_owned_by(path, slug)
        return RepositoryInfo(name=slug, clone_url=self._url(slug), default_branch=branch, created=False)

    def delete_repository(self, slug: str) -> bool:
        check_repository_name(slug)
        path = self.repository_path(slug)
        self._discard_creating(slug)
        deleting = self._repos_dir / f".deleting-{slug}"
        if not os.path.lexists(path) and not os.path.lexists(deleting):
            return False
        # Renamed out of the served name first (the leading dot hides it), so no client ever sees a half-deleted
        # repository; then removed. A concurrent delete waits for this one and then finds nothing. A
        # `.deleting-<slug>` that was already there is what a killed delete left: that one had checked the owner,
        # so finishing it is this deletion.
        with _ScratchDirectory.hold(deleting) as doomed:
            deleted = doomed.left_over
            if os.path.lexists(path):
                if path.is_symlink():
                    raise repository_conflict(
                        f"repository {path.name!r} is a symbolic link, not a repository created by {MANAGED_BY}; "
                        "refusing to delete it"
                    )
                self._check_owned_by(path, slug)
                try:
                    os.rename(path, doomed.path / "repository")
                except FileNotFoundError:
                    pass  # removed by hand meanwhile (a concurrent delete of ours waits for this one)
                else:
                    deleted = True
                    hold_point("delete_repository.renamed")
        if deleted:
            log.info("deleted repository %s", path.name)
        return deleted

    def push_url(self, repository: RepositoryInfo) -> str:
        url = self._url(repository.name)
        if not self._token:
            return url
        parts = urlsplit(url)
        userinfo = f"{quote(self._username, safe='')}:{quote(self._token.reveal(), safe='')}"
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))

    def _url(self, slug: str) -> str:
        return f"{self._base_url}/{slug}.git"

    def _create(self, path: Path, slug: str, description: str) -> bool:
        """Build the repository in a staging directory and rename it into place; False if another call won."""
        self._repos_dir.mkdir(parents=True, exist_ok=True)
        # The leading dot keeps a half-built repository from ever being served.
        with _ScratchDirectory.hold(self._repos_dir / f".creating-{slug}") as staging:
            if os.path.lexists(path):
                return False  # created by the call this one waited for
            repo = Repo.init_bare(str(staging.path), default_branch=self._default_branch.encode())
            try:
                config = repo.get_config()
                config.set(MARKER_SECTION, b"project", slug.encode())
                config.set(MARKER_SECTION, b"managed", b"true")
                config.set((b"http",), b"receivepack", b"true")  # lets `git http-backend` serve it as well
                config.write_to_path()
            finally:
                repo.close()
            (staging.path / "description").write_text(f"{description}\n", encoding="utf-8")
            hold_point("create_repository.staged")
            try:
                os.rename(staging.path, path)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    return False
                raise
            return True

    def _discard_creating(self, slug: str) -> None:
        """Remove what a killed `_create` left (waiting for a live one to finish)."""
        if os.path.lexists(self._repos_dir / f".creating-{slug}"):
            with _ScratchDirectory.hold(self._repos_dir / f".creating-{slug}"):
                pass

    def _check_owned_by(self, path: Path, slug: str) -> str:
        """The default branch of the existing repository at `path`, which must carry `slug`'s ownership marker."""
        try:
            config = ConfigFile.from_path(str(path / "config"))
            managed = config.get_boolean(MARKER_SECTION, b"managed")
            owner = config.get(MARKER_SECTION, b"project").decode("utf-8", errors="replace") if managed else ""
        except (OSError, KeyError, ValueError):
            owner = ""  # not a repository, or no (readable) marker
        if not owner:
            raise repository_conflict(
                f"repository {path.name!r} already exists and is not managed by {MANAGED_BY}; "
                "refusing to take it over (choose another slug or remove the repository)"
            )
        if owner != slug:
            raise repository_conflict(
                f"repository {path.name!r} already exists and belongs to project {owner!r}, not {slug!r}"
            )
        return _head_branch(path) or self._default_branch


@dataclass(frozen=True)
class _ScratchDirectory:
    """A scratch directory with a fixed name (`.creating-<slug>`, `.deleting-<slug>`) that one call holds at a time.

    Holding it is an exclusive `flock` on the directory itself, so a second call for the same project waits for the
    first, while the directory of a killed call (its lock died with its process) is taken over by the retry:
    `left_over` says so, and its contents are removed before the holder gets it, empty. On leaving, the directory
    is removed unless the holder renamed it away (into place as the repository). Only the holder ever renames or
    removes it; anyone may create it when it is missing, which is why a call checks, once it holds the lock, that
    the directory it locked is still the one at `path`, and starts over when it is not.
    """

    path: Path
    left_over: bool
    _fd: int

    @classmethod
    @contextmanager
    def hold(cls, path: Path) -> Iterator[_ScratchDirectory]:
        scratch = cls._acquire(path)
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
            yield scratch
        finally:
            try:
                if scratch._is_at_path():
                    shutil.rmtree(path)
            finally:
                os.close(scratch._fd)  # releases the lock

    @classmethod
    def _acquire(cls, path: Path) -> _ScratchDirectory:
        while True:
            try:
                os.mkdir(path, 0o700)
                made = True
            except FileExistsError:
                made = False
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue  # renamed into place or removed by its holder in between: start over
            scratch = cls(path, left_over=not made, _fd=fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # waits for a live holder; a killed one's lock is gone
                if scratch._is_at_path():
                    return scratch
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder we waited for renamed or removed it: start over

    def _is_at_path(self) -> bool:
        try:
            current = os.lstat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(self._fd)
        return (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino)


def _head_branch(bare_repo: Path) -> str | None:
    try:
        head = (bare_repo / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    prefix = "ref: refs/heads/"
    return head.removeprefix(prefix) if head.startswith(prefix) else None


PROVIDERS: dict[str, Callable[[Settings], RepositoryProvider]] = {
    "local": LocalRepositoryProvider,
    "gitea": GiteaRepositoryProvider,
    "github": GitHubRepositoryProvider,
}


def repository_provider(settings: Settings) -> RepositoryProvider:
    """The provider `Settings.git_provider` names; a misconfiguration fails here, when the worker starts."""
    try:
        make = PROVIDERS[settings.git_provider]
    except KeyError:
        raise ValueError(
            f"unknown Git provider {settings.git_provider!r} (PROVISIONER_GIT_PROVIDER): "
            f"choose one of {', '.join(PROVIDERS)}"
        ) from None
    return make(settings)


# ---- git command runner ------------------------------------------------------------------------------------


def _git_environment(settings: Settings, remote: _Remote) -> dict[str, str]:
    """A hermetic git: no user/system config (no gpg signing, hooks, insteadOf...), no prompts, our identity."""
    config = [
        ("credential.helper", ""),
        ("http.lowSpeedLimit", str(LOW_SPEED_LIMIT_BYTES)),
        ("http.lowSpeedTime", str(LOW_SPEED_TIME_SECONDS)),
    ]
    if remote.authorization:
        # Scoped to the repository URL so the header is never sent to another host.
        config.append((f"http.{remote.url}.extraHeader", f"Authorization: {remote.authorization}"))
    env = {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
        "GIT_AUTHOR_NAME": settings.git_author_name,
        "GIT_AUTHOR_EMAIL": settings.git_author_email,
        "GIT_COMMITTER_NAME": settings.git_author_name,
        "GIT_COMMITTER_EMAIL": settings.git_author_email,
        "GIT_CONFIG_COUNT": str(len(config)),
    }
    for index, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


class _GitRunner:
    """Runs git (through GitPython) in one directory and turns failures into scrubbed `GitOperationError`s."""

    def __init__(self, cwd: Path, env: dict[str, str], secrets: Sequence[str]) -> None:
        self._git = Git(str(cwd))
        self._git.update_environment(**env)
        self._secrets = secrets

    def __call__(self, *args: str) -> str:
        try:
            output: str = self._git.execute(["git", *args], kill_after_timeout=GIT_COMMAND_TIMEOUT_SECONDS)
        except GitCommandError as exc:
            # `from None`: the original exception carries the raw command output; it must not travel as a cause.
            raise self._error(args[0], exc) from None
        return output

    def _error(self, subcommand: str, exc: GitCommandError) -> GitOperationError:
        stdout = _raw_output(exc.stdout, "stdout")
        stderr = _raw_output(exc.stderr, "stderr")
        rejected = subcommand == "push" and any(line.startswith("!") for line in stdout.splitlines())
        details = "; ".join(part for part in (stderr, stdout if rejected else "") if part)
        message = f"git {subcommand} failed (exit status {exc.status})" + (f": {details}" if details else "")
        return GitOperationError(scrub_credentials(message, self._secrets), rejected=rejected)


def _raw_output(formatted: str, label: str) -> str:
    """Undo GitPython's "\\n  stdout: '...'" framing of captured output."""
    text = formatted.strip()
    prefix = f"{label}: '"
    if text.startswith(prefix) and text.endswith("'"):
        text = text[len(prefix) : -1]
    return text.strip()


# ---- Activities --------------------------------------------------------------------------------------------


def commit_message(spec: ProjectSpec, tree: RenderedTree) -> str:
    return (
        f"Render template {tree.template} for project {spec.slug}\n\n"
        f"Environment: {tree.environment}\n"
        f"Tree digest: sha256:{tree.digest}\n"
    )


def repository_description(spec: ProjectSpec) -> str:
    return f"{spec.display_name} (template {spec.template}, {ownership_marker(spec.slug)})"


def _rendered_path(path: str) -> bytes:
    """`path` as a Git tree path; refuses anything that is not a plain relative path outside `.git`."""
    # An empty or absolute path has an empty part too.
    if any(part in ("", ".", "..") or part.lower() == ".git" for part in path.split("/")) or any(
        ord(char) < 0x20 for char in path
    ):
        raise ApplicationError(
            f"the rendered template contains an unsafe path {path!r}",
            type=ErrorType.TEMPLATE_RENDER_FAILED,
            non_retryable=True,
        )
    return path.encode("utf-8")


def _store_tree(repository: Path, tree: RenderedTree) -> str:
    """Write the rendered files as blobs and trees into `repository`; returns the root tree id.

    Built from the exact rendered bytes: no work tree, so no .gitignore, .gitattributes or line-ending filter of
    the template can alter what gets committed.
    """
    staged = MemoryObjectStore()
    entries: list[tuple[bytes, ObjectID, int]] = []
    for path in sorted(tree.files):
        blob = Blob.from_string(tree.files[path])
        staged.add_object(blob)
        entries.append((_rendered_path(path), blob.id, tree.mode(path)))
    tree_id: bytes = commit_tree(staged, entries)
    repo = Repo(str(repository))
    try:
        repo.object_store.add_objects([(staged[object_id], None) for object_id in staged])
    finally:
        repo.close()
    return tree_id.decode("ascii")


class GitActivities:
    """The git activities; `render` defaults to the real template engine (tests inject a stand-in)."""

    def __init__(
        self, settings: Settings, provider: RepositoryProvider | None = None, render: Render | None = None
    ) -> None:
        self._settings = settings
        self._provider = provider if provider is not None else repository_provider(settings)
        self._render = render if render is not None else render_project

    @activity.defn(name="create_repository")
    def create_repository(self, spec: ProjectSpec) -> RepositoryInfo:
        return self._provider.ensure_repository(spec.slug, repository_description(spec))

    @activity.defn(name="delete_repository")
    def delete_repository(self, request: RepositoryDeletionRequest) -> RepositoryDeletionResult:
        deleted = self._provider.delete_repository(request.slug)
        return RepositoryDeletionResult(name=request.slug, deleted=deleted)

    @activity.defn(name="push_template")
    def push_template(self, request: PushRequest) -> PushResult:
        tree = self._rendered(request.spec)
        remote = _Remote.from_push_url(self._provider.push_url(request.repository))
        branch = request.repository.default_branch
        job = _PushJob(
            remote=remote,
            env=_git_environment(self._settings, remote),
            branch=branch,
            tree=tree,
            message=commit_message(request.spec, tree),
        )
        with tempfile.TemporaryDirectory(prefix="provisioner-push-") as scratch:
            for attempt in range(1, MAX_PUSH_ATTEMPTS + 1):
                result = _push_once(job, Path(scratch) / f"attempt-{attempt}")
                if result is not None:
                    log.info(
                        "push_template %s: %s on %s (pushed=%s)",
                        request.repository.name,
                        result.commit_sha,
                        branch,
                        result.pushed,
                    )
                    return result
                log.info("push_template %s: %s moved during the push, re-evaluating", request.repository.name, branch)
        raise GitOperationError(
            f"branch {branch!r} of repository {request.repository.name!r} kept moving; "
            f"gave up after {MAX_PUSH_ATTEMPTS} attempts"
        )

    @activity.defn(name="preview_push")
    def preview_push(self, spec: ProjectSpec) -> UpdatePreview:
        """What `push_template` of `spec` would change: the unified diff of the rendered tree against the branch
        head. Writes nothing anywhere (the rendered objects go only into a scratch clone)."""
        repository = self._provider.find_repository(spec.slug)
        if repository is None:
            raise ApplicationError(
                f"project {spec.slug!r} has no repository to compare with",
                type=ErrorType.NO_SUCH_PROJECT.value,
                non_retryable=True,
            )
        tree = self._rendered(spec)
        remote = _Remote.from_push_url(self._provider.push_url(repository))
        env = _git_environment(self._settings, remote)
        with tempfile.TemporaryDirectory(prefix="provisioner-preview-") as scratch:
            workdir = Path(scratch) / "clone"
            _GitRunner(Path(scratch), env, remote.secrets)(
                "clone", "--quiet", "--no-checkout", "--no-tags", "--", remote.url, str(workdir)
            )
            git = _GitRunner(workdir, env, remote.secrets)
            head = _remote_head(git, repository.default_branch)
            tree_id = _store_tree(workdir, tree)
            base = f"{head}^{{tree}}" if head is not None else EMPTY_TREE
            changed = git("diff-tree", "-r", "--name-only", "--no-commit-id", base, tree_id).splitlines()
            diff = git("diff-tree", "-r", "-p", "--no-commit-id", "--src-prefix=a/", "--dst-prefix=b/", base, tree_id)
        return UpdatePreview(
            slug=spec.slug,
            base_commit=head or "",
            changed_files=[name for name in changed if name],
            diff=diff + "\n" if diff else "",
            spec=spec,
        )

    def _rendered(self, spec: ProjectSpec) -> RenderedTree:
        try:
            return self._render(spec, self._settings.templates_dir)
        except TemplateError as exc:
            raise ApplicationError(str(exc), type=exc.error_type, non_retryable=True) from None


@dataclass(frozen=True)
class _PushJob:
    remote: _Remote
    env: dict[str, str]
    branch: str
    tree: RenderedTree
    message: str


def _push_once(job: _PushJob, workdir: Path) -> PushResult | None:
    """Clone, commit the tree on top of the branch unless it holds it already, push; None if the push lost a race."""
    _GitRunner(workdir.parent, job.env, job.remote.secrets)(
        "clone", "--quiet", "--no-checkout", "--no-tags", "--", job.remote.url, str(workdir)
    )
    git = _GitRunner(workdir, job.env, job.remote.secrets)
    head = _remote_head(git, job.branch)
    tree_id = _store_tree(workdir, job.tree)
    if head is not None and git("rev-parse", f"{head}^{{tree}}") == tree_id:
        return PushResult(commit_sha=head, branch=job.branch, pushed=False)
    parents = ["-p", head] if head is not None else []
    commit = git("commit-tree", tree_id, *parents, "-m", job.message)
    try:
        report = git("push", "--porcelain", "origin", f"{commit}:refs/heads/{job.branch}")
    except GitOperationError as exc:
        if exc.rejected:
            return None
        raise
    # "=" : another worker pushed the very same commit (same tree, parent, message and second) in the meantime.
    up_to_date = any(line.startswith("=\t") for line in report.splitlines())
    return PushResult(commit_sha=commit, branch=job.branch, pushed=not up_to_date)


def _remote_head(git: _GitRunner, branch: str) -> str | None:
    """The commit the freshly cloned remote branch points at, or None when the branch (or repository) is empty."""
    wanted = f"refs/remotes/origin/{branch}"
    # for-each-ref matches by prefix (`main` would also match `main/x`): keep the exact ref only.
    for line in git("for-each-ref", "--format=%(refname) %(objectname)", wanted).splitlines():
        refname, _, object_id = line.partition(" ")
        if refname == wanted:
            return object_id
    return None
