"""GitHttpServer against real git clients (the CLI and GitPython) over real HTTP."""

from __future__ import annotations

import base64
import http.client
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import git as gitpython
import pytest

from provisioner.gitserver import GitHttpServer
from tests.git.conftest import TOKEN, git, git_env, init_bare, with_credentials


def http_get(server: GitHttpServer, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """A raw GET: http.client sends `path` verbatim (no client-side normalisation of `..` or `%2e`)."""
    parts = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def commit_file(workdir: Path, name: str, content: str, message: str) -> str:
    (workdir / name).write_text(content)
    git("add", name, cwd=workdir)
    git("commit", "-q", "-m", message, cwd=workdir)
    return git("rev-parse", "HEAD", cwd=workdir).stdout.strip()


def remote_head(url: str, branch: str = "main") -> str | None:
    out = git("ls-remote", url, f"refs/heads/{branch}").stdout.split()
    return out[0] if out else None


def test_git_cli_clone_push_round_trip(git_server: GitHttpServer, repos_dir: Path, tmp_path: Path) -> None:
    init_bare(repos_dir / "demo.git")
    url = f"{git_server.base_url}/demo.git"

    git("clone", "-q", url, str(tmp_path / "a"))  # an empty repository clones fine
    sha = commit_file(tmp_path / "a", "hello.txt", "hello\n", "first")
    git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=tmp_path / "a")

    assert remote_head(url) == sha
    git("clone", "-q", url, str(tmp_path / "b"))
    assert (tmp_path / "b" / "hello.txt").read_text() == "hello\n"
    assert git("rev-parse", "HEAD", cwd=tmp_path / "b").stdout.strip() == sha
    # The push landed in the bare repository on disk, not in some server-side copy.
    assert (repos_dir / "demo.git" / "refs" / "heads" / "main").read_text().strip() == sha

    # A follow-up push (incremental pack on top of existing history) works too.
    sha2 = commit_file(tmp_path / "b", "hello.txt", "hello again\n", "second")
    git("push", "-q", "origin", "HEAD:main", cwd=tmp_path / "b")
    git("pull", "-q", "--ff-only", cwd=tmp_path / "a")
    assert git("rev-parse", "HEAD", cwd=tmp_path / "a").stdout.strip() == sha2


def test_gitpython_clone_push_round_trip(git_server: GitHttpServer, repos_dir: Path, tmp_path: Path) -> None:
    init_bare(repos_dir / "py.git")
    url = f"{git_server.base_url}/py.git"
    env = git_env()

    repo = gitpython.Repo.clone_from(url, tmp_path / "work", env=env)
    (tmp_path / "work" / "a.txt").write_text("from GitPython\n")
    repo.index.add(["a.txt"])
    commit = repo.index.commit("via GitPython")
    repo.remote("origin").push(f"{commit.hexsha}:refs/heads/main").raise_if_error()

    again = gitpython.Repo.clone_from(url, tmp_path / "again", env=env)
    assert again.head.commit.hexsha == commit.hexsha
    assert (tmp_path / "again" / "a.txt").read_text() == "from GitPython\n"


def test_unknown_repository_is_404(git_server: GitHttpServer, tmp_path: Path) -> None:
    for path in ("/missing.git/info/refs?service=git-upload-pack", "/missing.git/HEAD", "/", "/info/refs"):
        assert http_get(git_server, path).status == 404, path
    result = git("clone", "-q", f"{git_server.base_url}/missing.git", str(tmp_path / "x"), check=False)
    assert result.returncode != 0
    assert "not found" in result.stderr.lower()


def test_a_directory_that_is_not_a_bare_repository_is_404(git_server: GitHttpServer, repos_dir: Path) -> None:
    (repos_dir / "plain.git").mkdir()
    (repos_dir / "plain.git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert http_get(git_server, "/plain.git/info/refs?service=git-upload-pack").status == 404


def test_no_path_traversal(git_server: GitHttpServer, repos_dir: Path, tmp_path: Path) -> None:
    # A perfectly valid repository right next to repos_dir, and a symlink to it inside repos_dir.
    init_bare(tmp_path / "outside.git")
    (repos_dir / "link.git").symlink_to(tmp_path / "outside.git")
    init_bare(repos_dir / ".creating-half-built")  # staging directories are never served
    init_bare(repos_dir / "inside.git")
    assert http_get(git_server, "/inside.git/info/refs?service=git-upload-pack").status == 200

    for path in (
        "/../outside.git/info/refs?service=git-upload-pack",
        "/%2e%2e/outside.git/info/refs?service=git-upload-pack",
        "/..%2Foutside.git/info/refs?service=git-upload-pack",
        "/inside.git/../../outside.git/info/refs?service=git-upload-pack",
        "/inside.git/../../outside.git/HEAD",
        "//outside.git/info/refs?service=git-upload-pack",
        f"/{tmp_path}/outside.git/info/refs?service=git-upload-pack",
        "/link.git/info/refs?service=git-upload-pack",
        "/.creating-half-built/info/refs?service=git-upload-pack",
        "/inside.git/config",
        "/inside.git/objects/../config",
    ):
        assert http_get(git_server, path).status == 404, path


def test_push_requires_the_token_but_clone_does_not(
    token_server: GitHttpServer, repos_dir: Path, tmp_path: Path
) -> None:
    init_bare(repos_dir / "guarded.git")
    url = f"{token_server.base_url}/guarded.git"

    refs = "/guarded.git/info/refs?service=git-receive-pack"
    unauthenticated = http_get(token_server, refs)
    assert unauthenticated.status == 401
    assert (unauthenticated.getheader("WWW-Authenticate") or "").startswith("Basic")
    assert http_get(token_server, refs, basic("anyone", "wrong")).status == 401
    assert http_get(token_server, refs, {"Authorization": "Bearer " + TOKEN}).status == 401
    assert http_get(token_server, refs, basic("anyone", TOKEN)).status == 200
    assert http_get(token_server, "/guarded.git/info/refs?service=git-upload-pack").status == 200

    git("clone", "-q", url, str(tmp_path / "work"))  # anonymous
    sha = commit_file(tmp_path / "work", "f.txt", "x\n", "guarded")

    denied = git("push", "origin", "HEAD:refs/heads/main", cwd=tmp_path / "work", check=False)
    assert denied.returncode != 0
    wrong = with_credentials(url, "someone", "not-the-token")
    assert git("push", wrong, "HEAD:refs/heads/main", cwd=tmp_path / "work", check=False).returncode != 0
    assert remote_head(url) is None

    git("push", "-q", with_credentials(url, "whoever", TOKEN), "HEAD:refs/heads/main", cwd=tmp_path / "work")
    assert remote_head(url) == sha
    # Credentials sent as a header (the way the activities do) work as well.
    git("commit", "-q", "--allow-empty", "-m", "header", cwd=tmp_path / "work")
    header = "Authorization: " + basic("x", TOKEN)["Authorization"]
    git("-c", f"http.extraHeader={header}", "push", "-q", url, "HEAD:main", cwd=tmp_path / "work")
    assert remote_head(url) == git("rev-parse", "HEAD", cwd=tmp_path / "work").stdout.strip()


def test_a_push_based_on_a_stale_ref_is_rejected_not_silently_dropped(
    git_server: GitHttpServer, repos_dir: Path, tmp_path: Path
) -> None:
    """The branch moves between the client's ref advertisement and its pack upload: the server must refuse."""
    init_bare(repos_dir / "race.git")
    url = f"{git_server.base_url}/race.git"
    git("clone", "-q", url, str(tmp_path / "winner"))
    git("clone", "-q", url, str(tmp_path / "loser"))
    base = commit_file(tmp_path / "winner", "base.txt", "base\n", "base")
    git("push", "-q", "origin", "HEAD:main", cwd=tmp_path / "winner")
    git("pull", "-q", "origin", "main", cwd=tmp_path / "loser")
    winner = commit_file(tmp_path / "winner", "w.txt", "w\n", "winner")
    loser = commit_file(tmp_path / "loser", "l.txt", "l\n", "loser")
    assert git("rev-parse", "HEAD~1", cwd=tmp_path / "loser").stdout.strip() == base

    # pre-push runs after the loser read the refs (main == base) and before it sends its pack:
    # the winner's push lands exactly in that window.
    hook = tmp_path / "loser" / ".git" / "hooks" / "pre-push"
    hook.write_text(f"#!/bin/sh\ncd '{tmp_path / 'winner'}' && git push -q origin HEAD:main\n")
    hook.chmod(hook.stat().st_mode | stat.S_IEXEC)

    result = git("push", "--porcelain", "origin", "HEAD:main", cwd=tmp_path / "loser", check=False)
    assert result.returncode != 0
    assert "[remote rejected]" in result.stdout
    assert remote_head(url) == winner != loser


def test_concurrent_pushes_never_fail_the_server_nor_lose_an_update(
    git_server: GitHttpServer, repos_dir: Path, tmp_path: Path
) -> None:
    """8 clients push 8 different commits on the same parent at once: whoever is told "ok" is the branch head."""
    init_bare(repos_dir / "contended.git")
    url = f"{git_server.base_url}/contended.git"
    work = tmp_path / "work"
    git("clone", "-q", url, str(work))
    base = commit_file(work, "base.txt", "base\n", "base")
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    candidates = []
    for index in range(8):
        git("checkout", "-q", "--detach", base, cwd=work)
        candidates.append(commit_file(work, "base.txt", f"candidate {index}\n", f"candidate {index}"))
    barrier = threading.Barrier(len(candidates))

    def push(sha: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        barrier.wait()
        return sha, git("push", "--porcelain", url, f"{sha}:refs/heads/main", cwd=work, check=False)

    with ThreadPoolExecutor(max_workers=len(candidates)) as pool:
        outcomes = list(pool.map(push, candidates))
    for _, result in outcomes:
        assert "HTTP 500" not in result.stderr and "RPC failed" not in result.stderr, result.stderr
    accepted = [sha for sha, result in outcomes if result.returncode == 0]
    assert accepted == [remote_head(url)]
    for sha, result in outcomes:
        if sha not in accepted:
            assert "[rejected]" in result.stdout or "[remote rejected]" in result.stdout, result.stdout


def test_parallel_clones_are_served_concurrently(git_server: GitHttpServer, repos_dir: Path, tmp_path: Path) -> None:
    init_bare(repos_dir / "busy.git")
    url = f"{git_server.base_url}/busy.git"
    git("clone", "-q", url, str(tmp_path / "seed"))
    sha = commit_file(tmp_path / "seed", "a.txt", "a\n", "seed")
    git("push", "-q", "origin", "HEAD:main", cwd=tmp_path / "seed")

    def clone(index: int) -> str:
        target = tmp_path / f"clone-{index}"
        git("clone", "-q", url, str(target))
        return git("rev-parse", "HEAD", cwd=target).stdout.strip()

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(clone, range(8))) == {sha}


def test_pushing_a_thousand_files_is_fast(git_server: GitHttpServer, repos_dir: Path, tmp_path: Path) -> None:
    init_bare(repos_dir / "big.git")
    url = f"{git_server.base_url}/big.git"
    work = tmp_path / "work"
    git("clone", "-q", url, str(work))
    for index in range(1000):
        path = work / f"dir-{index % 25}" / f"file-{index}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"index: {index}\n" + "payload: " + "x" * 400 + "\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "a thousand files", cwd=work)

    started = time.monotonic()
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    pushed = time.monotonic() - started
    started = time.monotonic()
    git("clone", "-q", url, str(tmp_path / "check"))
    cloned = time.monotonic() - started
    print(f"\ngit CLI push of 1000 files: {pushed:.2f} s, clone: {cloned:.2f} s")

    assert len(list((tmp_path / "check").glob("dir-*/file-*.yaml"))) == 1000
    assert pushed < 10, f"push of 1000 files took {pushed:.1f} s"


@pytest.mark.parametrize("port", [0])
def test_server_restarts_on_a_fresh_port_and_stops_cleanly(repos_dir: Path, port: int) -> None:
    server = GitHttpServer(repos_dir, port=port)
    with pytest.raises(RuntimeError):
        _ = server.base_url
    server.start()
    init_bare(repos_dir / "r.git")
    url = server.base_url
    assert http_get(server, "/r.git/info/refs?service=git-upload-pack").status == 200
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(OSError):
        http.client.HTTPConnection(urlsplit(url).hostname or "", urlsplit(url).port, timeout=2).request("GET", "/")
