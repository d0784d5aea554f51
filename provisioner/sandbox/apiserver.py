"""The sandbox API server's HTTP layer: kube-apiserver's REST paths, verbs and `Status` bodies over the store.

Good enough for the official `kubernetes` Python client (and for kubectl-style discovery), not a general
kube-apiserver: no watch, no auth, JSON only. Faults (500, 429 + Retry-After, hung requests) can be injected on a
fraction of API requests to exercise the callers' retry logic.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from provisioner.sandbox.store import (
    APPLY_PATCH,
    NAMESPACES,
    ApiError,
    JsonObj,
    ObjectStore,
    ResourceKind,
    bad_request,
    method_not_allowed,
)

log = logging.getLogger("provisioner.sandbox.apiserver")

SERVER_VERSION: JsonObj = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-sandbox",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24 (provisioner sandbox)",
    "compiler": "gc",
    "platform": "linux/amd64",
}
VERBS = ["create", "delete", "get", "list", "patch", "update"]


# ---- Fault injection -----------------------------------------------------------------------------------------


@dataclass
class FaultInjector:
    """Makes a fraction of API requests fail the way an overloaded apiserver does. Off by default; thread-safe.

    `error_rate` answers 500 InternalError, `throttle_rate` 429 TooManyRequests with `Retry-After`,
    `timeout_rate` holds the request `timeout_seconds` and then answers 504 Timeout without performing it.
    """

    error_rate: float = 0.0
    throttle_rate: float = 0.0
    timeout_rate: float = 0.0
    retry_after_seconds: int = 1
    timeout_seconds: float = 5.0
    seed: int | None = None
    injected: dict[str, int] = field(default_factory=lambda: {"error": 0, "throttle": 0, "timeout": 0})
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.seed is not None:
            self._random.seed(self.seed)

    def configure(
        self,
        *,
        error_rate: float | None = None,
        throttle_rate: float | None = None,
        timeout_rate: float | None = None,
        retry_after_seconds: int | None = None,
        timeout_seconds: float | None = None,
        seed: int | None = None,
    ) -> None:
        with self._lock:
            if error_rate is not None:
                self.error_rate = error_rate
            if throttle_rate is not None:
                self.throttle_rate = throttle_rate
            if timeout_rate is not None:
                self.timeout_rate = timeout_rate
            if retry_after_seconds is not None:
                self.retry_after_seconds = retry_after_seconds
            if timeout_seconds is not None:
                self.timeout_seconds = timeout_seconds
            if seed is not None:
                self._random.seed(seed)

    def reset(self) -> None:
        self.configure(error_rate=0.0, throttle_rate=0.0, timeout_rate=0.0)

    def pick(self) -> str | None:
        """The fault to inject into this request, if any."""
        with self._lock:
            roll = self._random.random()
            for fault, rate in (("error", self.error_rate), ("throttle", self.throttle_rate),
                                ("timeout", self.timeout_rate)):
                if roll < rate:
                    self.injected[fault] += 1
                    return fault
                roll -= rate
            return None


# ---- Routing -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    kind: ResourceKind
    namespace: str | None
    name: str | None
    subresource: str = ""


def _route(store: ObjectStore, segments: list[str]) -> Route | None:
    """Resolve `/api/v1/...` and `/apis/{group}/{version}/...` paths (already split, prefix included)."""
    if segments[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", segments[2:]
    elif segments[:1] == ["apis"] and len(segments) >= 3:
        group, version, rest = segments[1], segments[2], segments[3:]
    else:
        return None
    if not rest:
        return None
    registry = store.registry
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        kind = registry.lookup(group, version, rest[2])
        if kind is None or not kind.namespaced or len(rest) > 5:
            return None
        return Route(kind, rest[1], rest[3] if len(rest) >= 4 else None, rest[4] if len(rest) == 5 else "")
    kind = registry.lookup(group, version, rest[0])
    if kind is None or len(rest) > 3:
        return None
    if kind.namespaced:  # a list across all namespaces
        return Route(kind, None, None) if len(rest) == 1 else None
    return Route(kind, None, rest[1] if len(rest) >= 2 else None, rest[2] if len(rest) == 3 else "")


def _not_found_path() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


# ---- Discovery -----------------------------------------------------------------------------------------------


# As the upstream API (and Flux's CRDs) advertise them, so `kubectl get ns` / `kubectl get ks` work too.
SHORT_NAMES = {"namespaces": ["ns"], "configmaps": ["cm"], "gitrepositories": ["gitrepo"], "kustomizations": ["ks"]}


def _resource_list(kinds: list[ResourceKind], group_version: str) -> JsonObj:
    resources: list[JsonObj] = []
    for kind in kinds:
        resources.append({
            "name": kind.plural,
            "singularName": kind.kind.lower(),
            "namespaced": kind.namespaced,
            "kind": kind.kind,
            "verbs": VERBS,
            "shortNames": SHORT_NAMES.get(kind.plural, []),
        })
        resources.append({"name": f"{kind.plural}/status", "singularName": "", "namespaced": kind.namespaced,
                          "kind": kind.kind, "verbs": ["get", "patch", "update"]})
        if kind == NAMESPACES:
            resources.append({"name": "namespaces/finalize", "singularName": "", "namespaced": False,
                              "kind": "Namespace", "verbs": ["update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def _discovery(store: ObjectStore, segments: list[str], host: str) -> JsonObj | None:
    kinds = store.registry.all()
    if segments == ["version"]:
        return SERVER_VERSION
    if segments == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}
    if segments == ["api", "v1"]:
        return _resource_list([k for k in kinds if not k.group], "v1")
    groups: dict[str, list[str]] = {}
    for kind in kinds:
        if kind.group:
            versions = groups.setdefault(kind.group, [])
            if kind.version not in versions:
                versions.append(kind.version)

    def group_body(name: str) -> JsonObj:
        versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in groups[name]]
        return {"name": name, "versions": versions, "preferredVersion": versions[0]}

    if segments == ["apis"]:
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_body(g) for g in sorted(groups)]}
    if len(segments) == 2 and segments[0] == "apis" and segments[1] in groups:
        return {"kind": "APIGroup", "apiVersion": "v1", **group_body(segments[1])}
    if len(segments) == 3 and segments[0] == "apis" and segments[1] in groups:
        group, version = segments[1], segments[2]
        matching = [k for k in kinds if k.group == group and k.version == version]
        return _resource_list(matching, f"{group}/{version}") if matching else None
    return None


# ---- HTTP ----------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], store: ObjectStore, faults: FaultInjector) -> None:
        super().__init__(address, _Handler)
        self.store = store
        self.faults = faults


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "provisioner-sandbox-apiserver"
    # Headers and body leave in separate writes; with Nagle on, each keep-alive response waits ~40 ms for an ACK.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sandbox apiserver: " + format, *args)

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.strip("/").split("/") if s]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._read_body()
        try:
            if method == "GET":
                discovered = _discovery(self.server.store, segments, self.headers.get("Host", ""))
                if discovered is not None:
                    self._send(200, discovered)
                    return
            route = _route(self.server.store, segments)
            if route is None:
                raise _not_found_path()
            if self._inject_fault():
                return
            code, payload = self._dispatch(method, route, query, body)
            self._send(code, payload)
        except ApiError as error:
            self._send(error.code, error.to_status())
        except (BrokenPipeError, ConnectionResetError):
            log.debug("sandbox apiserver: the client of %s %s went away", method, self.path)
        except Exception:  # a bug in the sandbox must still answer like a server, not hang the client
            log.exception("sandbox apiserver: internal error on %s %s", method, self.path)
            bug = ApiError(500, "InternalError", "Internal error occurred: sandbox apiserver bug")
            self._send(500, bug.to_status())

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _inject_fault(self) -> bool:
        faults = self.server.faults
        fault = faults.pick()
        if fault is None:
            return False
        if fault == "error":
            self._send(500, ApiError(500, "InternalError",
                                     "Internal error occurred: injected fault (sandbox fault injection)").to_status())
        elif fault == "throttle":
            retry_after = faults.retry_after_seconds
            error = ApiError(429, "TooManyRequests",
                             "the server has received too many requests and has temporarily blocked the request "
                             "(sandbox fault injection)", {"retryAfterSeconds": retry_after})
            self._send(429, error.to_status(), {"Retry-After": str(retry_after)})
        else:
            time.sleep(faults.timeout_seconds)
            error = ApiError(504, "Timeout", "Timeout: request did not complete within the allotted timeout "
                                             "(sandbox fault injection)", {})
            self._send(504, error.to_status())
        return True

    def _dispatch(self, method: str, route: Route, query: dict[str, str], raw: bytes) -> tuple[int, JsonObj]:
        store, kind = self.server.store, route.kind
        dry_run = query.get("dryRun") == "All"
        manager = query.get("fieldManager") or self._default_manager()
        if method == "GET":
            if route.name is None:
                if query.get("watch") in ("true", "1"):
                    raise method_not_allowed("watch is not supported by the sandbox API server")
                listed = store.list_objects(kind, route.namespace, query.get("labelSelector"),
                                            query.get("fieldSelector"))
                return 200, listed
            return 200, store.get(kind, route.namespace, route.name)
        if route.name is None:
            if method != "POST":
                raise method_not_allowed(f"the server does not allow this method on the requested resource: {method}")
            return 201, store.create(kind, route.namespace, _json_body(raw), field_manager=manager, dry_run=dry_run)
        if method == "PUT":
            if route.subresource == "finalize" and kind == NAMESPACES:
                return 200, store.finalize_namespace(route.name, _json_body(raw), dry_run=dry_run)
            return 200, store.update(kind, route.namespace, route.name, _json_body(raw), field_manager=manager,
                                     subresource=route.subresource, dry_run=dry_run)
        if method == "PATCH":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            patch_body = _yaml_body(raw) if content_type == APPLY_PATCH else _json_body(raw)
            result = store.patch(
                kind, route.namespace, route.name, content_type, patch_body,
                field_manager=query.get("fieldManager") if content_type == APPLY_PATCH else manager,
                force=query.get("force") in ("true", "1"), subresource=route.subresource, dry_run=dry_run,
            )
            return (201 if result.created else 200), result.obj
        if method == "DELETE":
            options = _json_body(raw) if raw.strip() else {}
            if "propagationPolicy" in query:
                options.setdefault("propagationPolicy", query["propagationPolicy"])
            deleted = store.delete(kind, route.namespace, route.name, options, dry_run=dry_run or
                                   "All" in (options.get("dryRun") or []))
            if kind.is_custom or kind == NAMESPACES:
                return 200, deleted
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                         "details": {"name": route.name, "kind": kind.plural, "uid": deleted["metadata"]["uid"]}}
        raise method_not_allowed(f"the server does not allow this method on the requested resource: {method}")

    def _default_manager(self) -> str:
        """kube names an Update's manager after the User-Agent's product token when no fieldManager is given."""
        agent = self.headers.get("User-Agent") or ""
        return agent.split("/", 1)[0] or "unknown"

    def _send(self, code: int, payload: JsonObj, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _json_body(raw: bytes) -> Any:
    if not raw.strip():
        raise bad_request("the body of the request was empty")
    try:
        return json.loads(raw)
    except ValueError as error:
        raise bad_request(f"the body of the request was in an unknown format - accepted media types include: "
                          f"application/json, application/yaml: {error}") from error


def _yaml_body(raw: bytes) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise bad_request(f"error decoding YAML: {error}") from error


class SandboxApiServer:
    """The HTTP server in a background thread. `port=0` picks a free port."""

    def __init__(
        self, store: ObjectStore, *, host: str = "127.0.0.1", port: int = 0, faults: FaultInjector | None = None
    ) -> None:
        self.store = store
        self.faults = faults or FaultInjector()
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox API server is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _Server(self._address, self.store, self.faults)
        serve: Callable[[float], None] = self._server.serve_forever
        # A short poll interval keeps stop() quick; the loop blocks in select() in between.
        self._thread = threading.Thread(target=serve, args=(0.05,), name="sandbox-apiserver", daemon=True)
        self._thread.start()
        log.info("sandbox apiserver listening on %s", self.url)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None
