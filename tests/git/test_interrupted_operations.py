"""What a killed `create_repository` or `delete_repository` leaves in the local Git host's directory, and how the
retry deals with it: the scratch directories are named after the project (`.creating-<slug>`, `.deleting-<slug>`),
so the retry finds them, cleans up a half-built repository and finishes a half-done deletion. A second call for the
same project while the first is still working waits for it instead of taking its scratch directory away.

The leftovers are made both by hand and by really killing a process held at the crash point (provisioner/testhold.py).
"""

from __future__ import annotations

import errno
import fcntl
import locale
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from dulwich.repo import Repo
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.git as git_activities
from activities.git import GitActivities, LocalRepositoryProvider
from provisioner.contracts import ErrorType, ProjectSpec, RepositoryDeletionRequest, RepositoryDeletionResult
from provisioner.settings import PROJECT_ROOT, Settings
from provisioner.testhold import HOLD_AT_ENV, HOLD_MARKER_ENV
from tests.git.conftest import git, init_bare

SLUG = "billing-api"
DEADLINE_SECONDS = 30.0
T = TypeVar("T")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", templates_dir=tmp_path / "templates")


@pytest.fixture
def repos_dir(settings: Settings) -> Path:
    settings.git_repos_dir.mkdir(parents=True)
    return settings.git_repos_dir


@pytest.fixture
def provider(settings: Settings, repos_dir: Path) -> LocalRepositoryProvider:
    return LocalRepositoryProvider(settings)


def entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def staged_repository(path: Path, slug: str = SLUG) -> Path:
    """A repository as a killed create leaves it in its staging directory: complete, marked, never renamed."""
    repo = Repo.init_bare(str(path), mkdir=True, default_branch=b"main")
    try:
        config = repo.get_config()
        config.set((b"provisioner",), b"project", slug.encode())
        config.set((b"provisioner",), b"managed", b"true")
        config.write_to_path()
    finally:
        repo.close()
    (path / "stale-file").write_text("from the killed attempt\n")
    return path


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# ---- a killed create -----------------------------------------------------------------------------------------


def test_the_retried_create_replaces_the_half_built_repository_of_a_killed_one(
    provider: LocalRepositoryProvider, repos_dir: Path
) -> None:
    staged_repository(repos_dir / f".creating-{SLUG}")

    assert provider.ensure_repository(SLUG, "Billing API").created is True
    assert entries(repos_dir) == [f"{SLUG}.git"]
    repository = repos_dir / f"{SLUG}.git"
    assert not (repository / "stale-file").exists()  # built afresh, not the killed attempt's directory
    assert "Billing API" in (repository / "description").read_text()
    assert git("config", "--file", str(repository / "config"), "provisioner.project").stdout.strip() == SLUG


def test_deleting_removes_the_half_built_repository_of_a_killed_create(
    provider: LocalRepositoryProvider, repos_dir: Path
) -> None:
    staged_repository(repos_dir / f".creating-{SLUG}")
    assert provider.delete_repository(SLUG) is False  # no repository was ever served under the name
    assert entries(repos_dir) == []


def test_deleting_removes_a_killed_creates_leftover_next_to_the_repository(
    provider: LocalRepositoryProvider, repos_dir: Path
) -> None:
    provider.ensure_repository(SLUG, "Billing API")
    staged_repository(repos_dir / f".creating-{SLUG}")
    assert provider.delete_repository(SLUG) is True
    assert entries(repos_dir) == []


def test_another_projects_leftovers_are_left_alone(provider: LocalRepositoryProvider, repos_dir: Path) -> None:
    staged_repository(repos_dir / ".creating-other-app", "other-app")
    (repos_dir / ".deleting-other-app").mkdir()
    provider.ensure_repository(SLUG, "Billing API")
    assert provider.delete_repository(SLUG) is True
    assert entries(repos_dir) == [".creating-other-app", ".deleting-other-app"]


# ---- a killed delete -----------------------------------------------------------------------------------------


def test_the_retried_delete_finishes_the_deletion_of_a_killed_one(
    provider: LocalRepositoryProvider, repos_dir: Path
) -> None:
    provider.ensure_repository(SLUG, "Billing API")
    doomed = repos_dir / f".deleting-{SLUG}"
    doomed.mkdir()
    (repos_dir / f"{SLUG}.git").rename(doomed / "repository")
    (doomed / "repository" / "HEAD").unlink()  # killed half-way through removing it

    assert provider.delete_repository(SLUG) is True
    assert entries(repos_dir) == []
    assert provider.delete_repository(SLUG) is False  # and now it is done


def test_a_delete_killed_after_removing_the_repository_still_counts_as_the_deletion(
    provider: LocalRepositoryProvider, repos_dir: Path
) -> None:
    # Killed between removing `repository` and removing its (then empty) scratch directory.
    (repos_dir / f".deleting-{SLUG}").mkdir()
    assert provider.delete_repository(SLUG) is True
    assert entries(repos_dir) == []


def test_a_delete_killed_before_the_rename_is_finished_by_the_retry(
    provider: LocalRepositoryProvider, repos_dir: Path
) -> None:
    provider.ensure_repository(SLUG, "Billing API")
    (repos_dir / f".deleting-{SLUG}").mkdir()
    assert provider.delete_repository(SLUG) is True
    assert entries(repos_dir) == []


def test_the_leftover_of_a_killed_delete_and_a_new_repository_are_both_deleted(
    provider: LocalRepositoryProvider, repos_dir: Path
) -> None:
    provider.ensure_repository(SLUG, "Billing API")
    doomed = repos_dir / f".deleting-{SLUG}"
    doomed.mkdir()
    (repos_dir / f"{SLUG}.git").rename(doomed / "repository")
    provider.ensure_repository(SLUG, "Billing API, again")

    assert provider.delete_repository(SLUG) is True
    assert entries(repos_dir) == []


def test_the_activity_reports_the_finished_deletion_as_deleted(settings: Settings, repos_dir: Path) -> None:
    activities = GitActivities(settings)
    ActivityEnvironment().run(
        activities.create_repository, ProjectSpec(slug=SLUG, display_name="Billing API", template="web-service")
    )
    doomed = repos_dir / f".deleting-{SLUG}"
    doomed.mkdir()
    (repos_dir / f"{SLUG}.git").rename(doomed / "repository")

    request = RepositoryDeletionRequest(slug=SLUG)
    assert ActivityEnvironment().run(activities.delete_repository, request) == RepositoryDeletionResult(
        name=SLUG, deleted=True
    )
    assert entries(repos_dir) == []


def test_a_refused_delete_leaves_no_scratch_directory_behind(
    provider: LocalRepositoryProvider, repos_dir: Path
) -> None:
    init_bare(repos_dir / f"{SLUG}.git")  # not marked: someone else's
    with pytest.raises(ApplicationError) as caught:
        provider.delete_repository(SLUG)
    assert caught.value.type == ErrorType.REPOSITORY_CONFLICT
    assert entries(repos_dir) == [f"{SLUG}.git"]
    # The owner removes it by hand; a later delete finds nothing and does not claim to have deleted it.
    os.rename(repos_dir / f"{SLUG}.git", repos_dir.parent / "moved-away.git")
    assert provider.delete_repository(SLUG) is False


def test_a_repository_removed_by_hand_between_the_ownership_check_and_the_rename_is_not_reported_deleted(
    provider: LocalRepositoryProvider, repos_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider.ensure_repository(SLUG, "Billing API")
    check_owned_by = provider._check_owned_by

    def checked_then_removed_by_hand(path: Path, slug: str) -> str:
        branch = check_owned_by(path, slug)
        shutil.rmtree(path)
        return branch

    monkeypatch.setattr(provider, "_check_owned_by", checked_then_removed_by_hand)
    assert provider.delete_repository(SLUG) is False
    assert entries(repos_dir) == []


# ---- races and intruders around the scratch directories -------------------------------------------------------


@pytest.mark.parametrize("intruder", ["repository", "file"])
def test_something_put_in_the_repositorys_place_while_staging_is_never_replaced(
    provider: LocalRepositoryProvider, repos_dir: Path, monkeypatch: pytest.MonkeyPatch, intruder: str
) -> None:
    """Someone else's repository (or a file) appears under the name between the check and the rename."""
    path = repos_dir / f"{SLUG}.git"

    def someone_else_puts_it_there(name: str) -> None:
        if name == "create_repository.staged":
            if intruder == "repository":
                init_bare(path)
            else:
                path.write_text("not a repository\n")

    monkeypatch.setattr(git_activities, "hold_point", someone_else_puts_it_there)
    with pytest.raises(ApplicationError) as caught:
        provider.ensure_repository(SLUG, "Billing API")
    assert caught.value.type == ErrorType.REPOSITORY_CONFLICT
    assert "is not managed by provisioner" in caught.value.message
    assert entries(repos_dir) == [f"{SLUG}.git"]  # the staged repository is gone, the intruder untouched
    assert (path / "HEAD").is_file() if intruder == "repository" else path.read_text() == "not a repository\n"


def test_a_scratch_directory_gone_between_finding_it_and_opening_it_is_made_afresh(
    provider: LocalRepositoryProvider, repos_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`.creating-<slug>` was there at the `mkdir` but its holder renamed it into place before the `open`."""
    real_mkdir = os.mkdir
    raced: list[str] = []

    def mkdir(path: str | os.PathLike[str], mode: int = 0o777) -> None:
        if os.path.basename(path) == f".creating-{SLUG}" and not raced:
            raced.append(os.fspath(path))
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
        real_mkdir(path, mode)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert provider.ensure_repository(SLUG, "Billing API").created is True
    assert raced == [str(repos_dir / f".creating-{SLUG}")]
    assert entries(repos_dir) == [f"{SLUG}.git"]


def test_a_call_interrupted_while_waiting_for_the_lock_raises_the_interruption_and_the_retry_takes_over(
    provider: LocalRepositoryProvider, repos_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Interrupted(Exception):
        pass

    def flock(fd: int, operation: int) -> None:
        raise Interrupted

    monkeypatch.setattr(git_activities, "fcntl", types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX))
    with pytest.raises(Interrupted):
        provider.ensure_repository(SLUG, "Billing API")
    assert entries(repos_dir) == [f".creating-{SLUG}"]  # as a killed call leaves it
    monkeypatch.undo()
    assert provider.ensure_repository(SLUG, "Billing API").created is True
    assert entries(repos_dir) == [f"{SLUG}.git"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scratch", [".creating", ".deleting"])
def test_a_symbolic_link_in_the_place_of_a_scratch_directory_is_never_followed(
    provider: LocalRepositoryProvider, repos_dir: Path, tmp_path: Path, scratch: str
) -> None:
    """Taking a scratch directory over empties it: through a link that would empty a directory elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("kept\n")
    (repos_dir / f"{scratch}-{SLUG}").symlink_to(elsewhere)
    call = provider.delete_repository if scratch == ".deleting" else lambda slug: provider.ensure_repository(slug, "")
    with pytest.raises(OSError) as caught:
        call(SLUG)
    assert caught.value.errno in (errno.ENOTDIR, errno.ELOOP)  # O_DIRECTORY | O_NOFOLLOW on a link
    assert (repos_dir / f"{scratch}-{SLUG}").is_symlink()
    assert os.listdir(elsewhere) == ["precious"]


# ---- a second call while the first is still working ----------------------------------------------------------


class Paused:
    """Pauses the calls that reach `point` (provisioner/testhold.py's hook) until released, and signals when a call
    starts waiting for a scratch directory's lock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
        self.point = point
        self.reached = threading.Event()
        self.released = threading.Event()
        self.lock_waits = 0
        self._count = threading.Lock()
        real_flock = fcntl.flock

        def flock(fd: int, operation: int) -> None:
            with self._count:
                self.lock_waits += 1
            real_flock(fd, operation)

        def hold_point(name: str) -> None:
            if name == self.point:
                self.reached.set()
                assert self.released.wait(DEADLINE_SECONDS)

        monkeypatch.setattr(git_activities, "fcntl", types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX))
        monkeypatch.setattr(git_activities, "hold_point", hold_point)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def second_call_waits(paused: Paused, pool: ThreadPoolExecutor, call: Callable[[], T]) -> Future[T]:
    """Once the first call is paused, start `call` and return once it waits for the scratch directory's lock."""
    assert paused.reached.wait(DEADLINE_SECONDS)
    second = pool.submit(call)
    wait_for(lambda: paused.lock_waits == 2, "the second call to wait for the lock")
    return second


def test_a_second_create_waits_for_the_first_instead_of_clearing_its_staging_directory(
    provider: LocalRepositoryProvider, repos_dir: Path, monkeypatch: pytest.MonkeyPatch, pool: ThreadPoolExecutor
) -> None:
    paused = Paused(monkeypatch, "create_repository.staged")
    first = pool.submit(provider.ensure_repository, SLUG, "Billing API")
    second = second_call_waits(paused, pool, lambda: provider.ensure_repository(SLUG, "Billing API"))

    # The first call's repository is still whole in its staging directory, and nothing is served yet.
    assert entries(repos_dir) == [f".creating-{SLUG}"]
    assert (repos_dir / f".creating-{SLUG}" / "description").is_file()
    assert stat.S_IMODE((repos_dir / f".creating-{SLUG}").stat().st_mode) == 0o700  # and no one else may read it
    paused.released.set()
    assert first.result(DEADLINE_SECONDS).created is True
    assert second.result(DEADLINE_SECONDS).created is False
    assert entries(repos_dir) == [f"{SLUG}.git"]


def test_a_second_delete_waits_for_the_first_and_then_finds_nothing(
    provider: LocalRepositoryProvider, repos_dir: Path, monkeypatch: pytest.MonkeyPatch, pool: ThreadPoolExecutor
) -> None:
    provider.ensure_repository(SLUG, "Billing API")
    paused = Paused(monkeypatch, "delete_repository.renamed")
    first = pool.submit(provider.delete_repository, SLUG)
    second = second_call_waits(paused, pool, lambda: provider.delete_repository(SLUG))

    assert entries(repos_dir) == [f".deleting-{SLUG}"]
    assert (repos_dir / f".deleting-{SLUG}" / "repository" / "HEAD").is_file()
    paused.released.set()
    assert (first.result(DEADLINE_SECONDS), second.result(DEADLINE_SECONDS)) == (True, False)
    assert entries(repos_dir) == []


# ---- really killed -------------------------------------------------------------------------------------------

KILLED_CALL = """
import sys
from activities.git import LocalRepositoryProvider
from provisioner.settings import Settings
from pathlib import Path
provider = LocalRepositoryProvider(Settings(data_dir=Path(sys.argv[1]), templates_dir=Path(sys.argv[1])))
getattr(provider, sys.argv[2])(*sys.argv[3:])
"""


@pytest.fixture
def c_locale() -> Iterator[None]:
    """The worker's locale set to C (ASCII), in this process: a text file written without an explicit encoding
    cannot hold a non-ASCII character then. (In-process, so that mutmut relates the test to the code it runs.)"""
    assert not sys.flags.utf8_mode, "Python's UTF-8 mode makes every default encoding UTF-8: the C locale is moot"
    previous = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        assert locale.getpreferredencoding(False) == "ANSI_X3.4-1968"
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)


@pytest.mark.usefixtures("c_locale")
def test_the_description_is_written_in_utf8_whatever_the_workers_locale(
    provider: LocalRepositoryProvider, repos_dir: Path
) -> None:
    provider.ensure_repository(SLUG, "Z\u00fcrich API")

    assert (repos_dir / f"{SLUG}.git" / "description").read_bytes() == "Z\u00fcrich API\n".encode()


def held_at(marker: Path) -> str:
    """The point named in the hook's marker file once the line is complete; "" before."""
    text = marker.read_text() if marker.exists() else ""
    return text.split()[0] if text.endswith("\n") else ""


def kill_at(point: str, settings: Settings, tmp_path: Path, *call: str) -> None:
    """Run `provider.<call>` in a process held at `point`, and kill -9 it there."""
    marker = tmp_path / "held"
    env = {**os.environ, HOLD_AT_ENV: point, HOLD_MARKER_ENV: str(marker)}
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_CALL, str(settings.data_dir), *call], cwd=PROJECT_ROOT, env=env
    )
    try:
        wait_for(lambda: held_at(marker) != "" or process.poll() is not None, f"the call to reach {point}")
        assert process.poll() is None, f"the call ended (status {process.returncode}) instead of holding at {point}"
        assert held_at(marker) == point
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)


def test_a_create_killed_after_staging_is_completed_by_the_retry(
    provider: LocalRepositoryProvider, settings: Settings, repos_dir: Path, tmp_path: Path
) -> None:
    kill_at("create_repository.staged", settings, tmp_path, "ensure_repository", SLUG, "Billing API")
    assert entries(repos_dir) == [f".creating-{SLUG}"]  # the crash window

    assert provider.ensure_repository(SLUG, "Billing API").created is True
    assert entries(repos_dir) == [f"{SLUG}.git"]


def test_a_delete_killed_after_the_rename_is_completed_by_the_retry(
    provider: LocalRepositoryProvider, settings: Settings, repos_dir: Path, tmp_path: Path
) -> None:
    provider.ensure_repository(SLUG, "Billing API")
    kill_at("delete_repository.renamed", settings, tmp_path, "delete_repository", SLUG)
    assert entries(repos_dir) == [f".deleting-{SLUG}"]  # the crash window
    assert (repos_dir / f".deleting-{SLUG}" / "repository" / "HEAD").is_file()

    assert provider.delete_repository(SLUG) is True
    assert entries(repos_dir) == []
