"""Stand-ins for Gitea and GitHub: a threaded HTTP server with the repository endpoints the providers call.

Status codes, headers and bodies follow the real APIs (Gitea's swagger and routers/api/v1/repo, GitHub's REST
reference): 201 with the repository object, 409 (Gitea) / 422 `name already exists on this account` (GitHub), 401,
403, 404, 204 on delete, and GitHub's rate-limit headers. A created repository can also be made real: a bare
repository in `repos_dir`, whose clone URL points at a `GitHttpServer` serving that directory.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from dulwich.repo import Repo

Dialect = Literal["gitea", "github"]


@dataclass
class CannedAnswer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class SeenRequest:
    method: str
    path: str
    authorization: str
    body: Any


@dataclass
class StoredRepository:
    owner: str
    name: str
    description: str
    private: bool
    default_branch: str


class Forge:
    """One Gitea or GitHub stand-in. `prefix` is the API root's path (`/api/v1` for Gitea; `` or `/api/v3`)."""

    def __init__(
        self,
        dialect: Dialect,
        token: str,
        *,
        user: str = "bot",
        orgs: tuple[str, ...] = ("acme",),
        prefix: str | None = None,
        clone_base_url: str = "https://git.example.test",
        repos_dir: Path | None = None,
    ) -> None:
        self.dialect = dialect
        self.token = token
        self.user = user
        self.orgs = set(orgs)
        self.prefix = prefix if prefix is not None else ("/api/v1" if dialect == "gitea" else "")
        self.clone_base_url = clone_base_url.rstrip("/")
        self.repos_dir = repos_dir
        self.repositories: dict[tuple[str, str], StoredRepository] = {}
        self.requests: list[SeenRequest] = []
        self._canned: list[tuple[str, str, CannedAnswer]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    # -- lifecycle --

    def __enter__(self) -> Forge:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def api_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self.prefix}"

    # -- test controls --

    def answer_next(self, method: str, path: str, answer: CannedAnswer) -> None:
        """Answer the next `method` request to `path` (below the prefix) with `answer` instead of the real thing."""
        with self._lock:
            self._canned.append((method, path, answer))

    def add_repository(self, owner: str, name: str, description: str, private: bool = True) -> None:
        with self._lock:
            self.repositories[(owner, name)] = StoredRepository(owner, name, description, private, "main")

    # -- the API --

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def do_DELETE(self) -> None:
                self._serve()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                seen = SeenRequest(self.command, self.path, self.headers.get("Authorization", ""), body)
                answer = forge.handle(seen)
                payload = b"" if answer.body is None else json.dumps(answer.body).encode()
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if payload:
                    self.send_header("Content-Type", "application/json;charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def handle(self, request: SeenRequest) -> CannedAnswer:
        with self._lock:
            self.requests.append(request)
            if not request.path.startswith(f"{self.prefix}/"):
                return self._not_found()
            path = request.path[len(self.prefix) :]
            for index, (method, canned_path, answer) in enumerate(self._canned):
                if method == request.method and canned_path == path:
                    del self._canned[index]
                    return answer
            expected = f"token {self.token}" if self.dialect == "gitea" else f"Bearer {self.token}"
            if request.authorization != expected:
                return self._unauthorized()
            return self._route(request.method, path.strip("/").split("/"), request.body)

    def _route(self, method: str, parts: list[str], body: Any) -> CannedAnswer:
        if method == "POST" and parts == ["user", "repos"]:
            return self._create(self.user, body)
        if method == "POST" and len(parts) == 3 and parts[0] == "orgs" and parts[2] == "repos":
            if parts[1] not in self.orgs:
                return self._not_found()
            return self._create(parts[1], body)
        if len(parts) == 3 and parts[0] == "repos":
            stored = self.repositories.get((parts[1], parts[2]))
            if stored is None:
                return self._not_found()
            if method == "GET":
                return CannedAnswer(200, self._repository_json(stored))
            if method == "DELETE":
                del self.repositories[(parts[1], parts[2])]
                return CannedAnswer(204, None)
        return self._not_found()

    def _create(self, owner: str, body: dict[str, Any]) -> CannedAnswer:
        name = body["name"]
        if (owner, name) in self.repositories:
            return self._already_exists(owner)
        # Gitea takes the default branch from the request; GitHub names the account's default.
        branch = (body.get("default_branch") or "main") if self.dialect == "gitea" else "main"
        stored = StoredRepository(owner, name, body.get("description", ""), bool(body.get("private")), branch)
        self.repositories[(owner, name)] = stored
        if self.repos_dir is not None:
            Repo.init_bare(str(self.repos_dir / f"{name}.git"), mkdir=True, default_branch=branch.encode()).close()
        return CannedAnswer(201, self._repository_json(stored))

    def _repository_json(self, stored: StoredRepository) -> dict[str, Any]:
        full_name = f"{stored.owner}/{stored.name}"
        return {
            "id": abs(hash(full_name)) % 100000,
            "name": stored.name,
            "full_name": full_name,
            "owner": {"login": stored.owner},
            "description": stored.description,
            "private": stored.private,
            "empty": True,
            "default_branch": stored.default_branch,
            "html_url": f"{self.clone_base_url}/{full_name}",
            # The local Git server serves `<name>.git` at its root; a real host would use `<owner>/<name>.git`.
            "clone_url": f"{self.clone_base_url}/{stored.name}.git",
        }

    # -- the hosts' error bodies --

    def _not_found(self) -> CannedAnswer:
        if self.dialect == "gitea":
            return CannedAnswer(404, {"errors": [], "message": "The target couldn't be found.", "url": self._swagger()})
        return CannedAnswer(
            404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}
        )

    def _unauthorized(self) -> CannedAnswer:
        if self.dialect == "gitea":
            return CannedAnswer(401, {"message": "user does not exist [uid: 0, name: ]", "url": self._swagger()})
        return CannedAnswer(
            401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"}
        )

    def _already_exists(self, owner: str) -> CannedAnswer:
        if self.dialect == "gitea":
            return CannedAnswer(
                409, {"message": "The repository with the same name already exists.", "url": self._swagger()}
            )
        where = (
            "create-an-organization-repository"
            if owner in self.orgs
            else "create-a-repository-for-the-authenticated-user"
        )
        return CannedAnswer(
            422,
            {
                "message": "Repository creation failed.",
                "errors": [
                    {
                        "resource": "Repository",
                        "code": "custom",
                        "field": "name",
                        "message": "name already exists on this account",
                    }
                ],
                "documentation_url": f"https://docs.github.com/rest/repos/repos#{where}",
                "status": "422",
            },
        )

    def _swagger(self) -> str:
        return f"{self.clone_base_url}/api/swagger"

    def paths_seen(self) -> Iterator[tuple[str, str]]:
        with self._lock:
            for request in self.requests:
                yield request.method, request.path
