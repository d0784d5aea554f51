"""A local Git host: the bare repositories under one directory, served over Git smart HTTP (clone and push).

Built on dulwich's WSGI application behind a small access layer that

- serves only `<name>.git` directories that are bare repositories directly inside `repos_dir` (404 otherwise, so
  no path ever escapes the directory);
- requires HTTP basic auth (the token as password, any username) for pushes when a token is configured, while
  clones stay anonymous, like public repositories on a hosted forge;
- applies pushes to a repository one at a time and turns a push whose branch moved after the client read it into
  a rejection instead of a silently dropped update (see `_SerializedReceivePack`).

For tests, `GitHttpServer.fail_pushes(n)` makes the next n pushes fail with an HTTP error, the way an overloaded
forge does: before anything is written, or (`after_applying`) once the push has landed, as when the answer is lost.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import re
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from dulwich.errors import NotGitRepository
from dulwich.file import FileLocked
from dulwich.repo import Repo
from dulwich.server import Backend, ReceivePackHandler
from dulwich.web import make_wsgi_chain

from provisioner.settings import Secret

log = logging.getLogger(__name__)

RECEIVE_PACK = "git-receive-pack"
AUTH_REALM = "provisioner git"
SHUTDOWN_POLL_SECONDS = 0.05  # how quickly stop() takes effect
# One path segment, no leading dot (that also hides the staging directories of in-progress creations).
_REPO_PATH = re.compile(r"^/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*\.git)(?P<rest>/.*)?$")
# What a git client may ask of a repository (smart and dumb HTTP); anything else is 404 before dulwich sees it.
_GIT_REQUEST = re.compile(
    r"^/(HEAD|info/refs|git-upload-pack|git-receive-pack"
    r"|objects/info/(alternates|http-alternates|packs)"
    r"|objects/[0-9a-f]{2}/[0-9a-f]{38}"
    r"|objects/pack/pack-([0-9a-f]{40}|[0-9a-f]{64})\.(pack|idx))$"
)


def resolve_repository(repos_dir: Path, name: str) -> Path | None:
    """The bare repository `name` (`<something>.git`) directly inside `repos_dir`, or None."""
    if not _REPO_PATH.fullmatch(f"/{name}") or ".." in name:
        return None
    root = repos_dir.resolve()
    candidate = root / name
    # resolve() follows symlinks: a link pointing out of repos_dir is not served.
    if candidate.resolve().parent != root:
        return None
    if not ((candidate / "HEAD").is_file() and (candidate / "objects").is_dir() and (candidate / "refs").is_dir()):
        return None
    return candidate


class _ReposDirBackend(Backend):
    """dulwich backend restricted to the bare repositories directly inside one directory."""

    def __init__(self, repos_dir: Path) -> None:
        super().__init__()
        self._repos_dir = repos_dir
        self._push_locks: dict[str, threading.Lock] = {}
        self._push_locks_guard = threading.Lock()

    def open_repository(self, path: str | bytes) -> Repo:
        # dulwich hands over the URL prefix before the service path, e.g. "/billing-api.git" (str or bytes).
        name = (os.fsdecode(path) if isinstance(path, bytes) else path).strip("/")
        repository = resolve_repository(self._repos_dir, name)
        if repository is None:
            raise NotGitRepository("no such repository")
        return Repo(str(repository))

    def push_lock(self, repository_path: str) -> threading.Lock:
        """One lock per repository: the pushes this server receives are applied one at a time."""
        with self._push_locks_guard:
            return self._push_locks.setdefault(os.path.realpath(repository_path), threading.Lock())


class _RefMovedError(OSError):
    """The branch no longer points where the pushing client saw it (or another process is updating it)."""


class _SerializedReceivePack(ReceivePackHandler):
    """Receive-pack that applies one push per repository at a time and never loses a ref update.

    Works around three concurrency defects of dulwich 1.2's receive-pack:
    - it ignores the False returned by `set_if_equals`, so the loser of two concurrent pushes is told "ok" while its
      commit is silently dropped;
    - a ref lock held by another writer escapes as `FileLocked` and fails the request with a 500;
    - two pushes of the same objects write the same pack file name and collide on its lock (500 again).
    Pushes to one repository therefore run one after the other (this is a local host, pushes are rare and small),
    and a failed compare-and-swap becomes an `OSError`, which dulwich reports as "failed to write" for that ref:
    the client sees an ordinary "[remote rejected]" and can fetch and try again.
    """

    def __init__(self, backend: _ReposDirBackend, *args: Any, **kwargs: Any) -> None:
        super().__init__(backend, *args, **kwargs)
        repo = self.repo
        assert isinstance(repo, Repo)  # what _ReposDirBackend opens
        self._push_lock = backend.push_lock(repo.path)
        refs = repo.refs  # this request's own Repo instance: patching it is thread-safe
        unchecked_set_if_equals = refs.set_if_equals

        def set_if_equals(name: Any, old_ref: Any, new_ref: Any, *rest: Any, **kw: Any) -> bool:
            try:
                updated = unchecked_set_if_equals(name, old_ref, new_ref, *rest, **kw)
            except FileLocked:
                raise _RefMovedError(f"{os.fsdecode(name)} is being updated by another process") from None
            if not updated:
                raise _RefMovedError(f"{os.fsdecode(name)} moved during the push")
            return True

        refs.set_if_equals = set_if_equals  # type: ignore[method-assign]

    def _apply_pack(self, refs: Any) -> Iterator[tuple[bytes, bytes]]:
        # dulwich consumes this generator completely inside handle(), so the lock spans reading the pack and
        # updating the refs, and is released before the report is sent.
        with self._push_lock:
            yield from super()._apply_pack(refs)


def _basic_auth_password(header: str) -> str | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _username, separator, password = decoded.partition(":")
    return password if separator else None


class PushFaults:
    """Fails the next pushes (receive-pack requests) with an HTTP status before they change anything. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._remaining = 0
        self._status = "503 Service Unavailable"
        self.after_applying = False
        self.injected = 0

    def fail_next(self, count: int, status: str, after_applying: bool) -> None:
        with self._lock:
            self._remaining, self._status, self.after_applying = count, status, after_applying

    def take(self) -> tuple[str, bool] | None:
        """(status, after_applying) to fail this push with, or None to serve it."""
        with self._lock:
            if self._remaining <= 0:
                return None
            self._remaining -= 1
            self.injected += 1
            return self._status, self.after_applying


class _AccessControl:
    """WSGI front of the dulwich app: repository lookup and push authentication."""

    def __init__(
        self, repos_dir: Path, token: Secret | None, git_app: WSGIApplication, push_faults: PushFaults
    ) -> None:
        self._repos_dir = repos_dir
        self._token = token if token else None
        self._git_app = git_app
        self._push_faults = push_faults

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        match = _REPO_PATH.fullmatch(environ.get("PATH_INFO", ""))
        rest = (match["rest"] or "") if match else ""
        if (
            match is None
            or not _GIT_REQUEST.fullmatch(rest)
            or resolve_repository(self._repos_dir, match["name"]) is None
        ):
            return self._plain(start_response, "404 Not Found", b"repository not found\n")
        if self._is_push(environ, rest) and not self._authorized(environ):
            return self._plain(
                start_response,
                "401 Unauthorized",
                b"authentication required to push\n",
                [("WWW-Authenticate", f'Basic realm="{AUTH_REALM}"')],
            )
        if rest == f"/{RECEIVE_PACK}":
            fault = self._push_faults.take()
            if fault is not None:
                status, after_applying = fault
                if after_applying:
                    _serve_and_discard(self._git_app, environ)
                else:
                    _drain_body(environ)  # so the client reads the status instead of a reset connection
                return self._plain(start_response, status, b"injected push failure\n")
        return self._git_app(environ, start_response)

    @staticmethod
    def _is_push(environ: WSGIEnvironment, rest: str) -> bool:
        # Both the ref advertisement for pushing and the push itself are guarded, so the client learns it needs
        # credentials before it uploads a pack.
        if rest == f"/{RECEIVE_PACK}":
            return True
        service = parse_qs(environ.get("QUERY_STRING", "")).get("service", [""])[0]
        return rest == "/info/refs" and service == RECEIVE_PACK

    def _authorized(self, environ: WSGIEnvironment) -> bool:
        if self._token is None:
            return True
        password = _basic_auth_password(environ.get("HTTP_AUTHORIZATION", ""))
        return password is not None and hmac.compare_digest(
            password.encode("utf-8"), self._token.reveal().encode("utf-8")
        )

    @staticmethod
    def _plain(
        start_response: StartResponse, status: str, body: bytes, headers: list[tuple[str, str]] | None = None
    ) -> list[bytes]:
        start_response(
            status,
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *(headers or [])],
        )
        return [body]


def _serve_and_discard(app: WSGIApplication, environ: WSGIEnvironment) -> None:
    """Serve the request (dulwich applies a push while its answer is consumed) and throw the answer away."""

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
        return lambda _: None

    answer = app(environ, start_response)
    try:
        for _ in answer:
            pass
    finally:
        close = getattr(answer, "close", None)
        if close is not None:
            close()


def _drain_body(environ: WSGIEnvironment) -> None:
    remaining = int(environ.get("CONTENT_LENGTH") or 0)
    while remaining > 0:
        chunk = environ["wsgi.input"].read(min(remaining, 65536))
        if not chunk:
            return
        remaining -= len(chunk)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # an in-flight request never blocks shutdown

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("git http: error while serving %s", client_address)


class _RequestHandler(WSGIRequestHandler):
    """Logs through `logging` at DEBUG; the request line carries no credentials (they travel in headers)."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("git http: %s %s", self.address_string(), format % args)


class GitHttpServer:
    """Serves `<base_url>/<name>.git` for every bare repository `<repos_dir>/<name>.git`, in a background thread."""

    def __init__(self, repos_dir: Path, *, host: str = "127.0.0.1", port: int = 0, token: Secret | None = None) -> None:
        self._repos_dir = Path(repos_dir)
        self._host = host
        self._port = port
        self._token = token
        self._server: _ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._push_faults = PushFaults()

    def fail_pushes(self, count: int, status: str = "503 Service Unavailable", *, after_applying: bool = False) -> None:
        """Answer the next `count` pushes with `status` (e.g. "500 Internal Server Error"); 0 ends the fault.
        `after_applying`: the push lands first and only its answer is replaced."""
        self._push_faults.fail_next(count, status, after_applying)

    @property
    def failed_pushes(self) -> int:
        """How many pushes `fail_pushes` has failed so far."""
        return self._push_faults.injected

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the git server is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the git server is already running")
        self._repos_dir.mkdir(parents=True, exist_ok=True)
        git_app = make_wsgi_chain(
            _ReposDirBackend(self._repos_dir), handlers={RECEIVE_PACK.encode(): _SerializedReceivePack}
        )
        server = make_server(
            self._host,
            self._port,
            _AccessControl(self._repos_dir, self._token, git_app, self._push_faults),
            server_class=_ThreadingWSGIServer,
            handler_class=_RequestHandler,
        )
        assert isinstance(server, _ThreadingWSGIServer)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
            name="git-http-server",
            daemon=True,
        )
        self._thread.start()
        log.info("git http server serving %s at %s", self._repos_dir, self.base_url)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=10)

    def __enter__(self) -> GitHttpServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
