"""The sandbox API server's HTTP layer: kube-apiserver's REST paths, verbs and `Status` bodies over the store.

Good enough for the official `kubernetes` Python client and for kubectl (discovery, `get` with server-side Table
printing, `get -w`, `wait`), not a general kube-apiserver: no auth, JSON only. Watches stream from the event history
in watch.py, lists page through listing.py, Table output comes from tables.py. Faults (500, 429 + Retry-After, hung
requests) can be injected on a fraction of API requests to exercise the callers' retry logic.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from kubesim.discovery import discover
from kubesim.listing import list_objects
from kubesim.store import (
    APPLY_PATCH,
    NAMESPACES,
    ApiError,
    JsonObj,
    ObjectStore,
    ResourceKind,
    bad_request,
    method_not_allowed,
)
from kubesim.tables import Output, WatchTransformer, negotiate, transform
from kubesim.watch import DEFAULT_HISTORY, EventHistory, Selection, parse_watch_request, stream

log = logging.getLogger("kubesim.apiserver")

# kube-apiserver's --min-request-timeout: a watch without timeoutSeconds lasts between one and two of these.
MIN_REQUEST_TIMEOUT = 1800.0


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


# ---- HTTP ----------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], store: ObjectStore, faults: FaultInjector, history: EventHistory
    ) -> None:
        super().__init__(address, _Handler)
        self.store = store
        self.faults = faults
        self.history = history
        self.stopping = threading.Event()
        self._watch_cond = threading.Condition()
        self._watches: set[socket.socket] = set()

    def watch_started(self, connection: socket.socket) -> None:
        with self._watch_cond:
            self._watches.add(connection)

    def watch_ended(self, connection: socket.socket) -> None:
        with self._watch_cond:
            self._watches.discard(connection)
            self._watch_cond.notify_all()

    def watch_count(self) -> int:
        with self._watch_cond:
            return len(self._watches)

    def end_watches(self, grace: float = 2.0) -> None:
        """Stop serving watches: the history wakes every stream, which ends its response cleanly; a stream still
        open after `grace` (blocked writing to a client that stopped reading) has its connection shut down."""
        self.stopping.set()
        self.history.stop()
        with self._watch_cond:
            self._watch_cond.wait_for(lambda: not self._watches, timeout=grace)
            stuck = list(self._watches)
        for connection in stuck:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


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
                discovered = discover(self.server.store, segments, self.headers.get("Host", ""),
                                      self.headers.get("Accept"))
                if discovered is not None:
                    self._send(200, *discovered)
                    return
            route = _route(self.server.store, segments)
            if route is None:
                raise _not_found_path()
            if self._inject_fault():
                return
            if method != "GET":
                self._send(*self._dispatch(method, route, query, body))
                return
            output = negotiate(self.headers.get("Accept"), query)
            if route.name is None and query.get("watch") in ("true", "1"):
                self._watch(route, query, output)
                return
            code, payload = self._dispatch(method, route, query, body)
            self._send(code, transform(route.kind, payload, output))
        except ApiError as error:
            self._send(error.code, error.to_status())
        except (BrokenPipeError, ConnectionResetError):
            log.debug("sandbox apiserver: the client of %s %s went away", method, self.path)
        except Exception:  # a bug in the sandbox must still answer like a server, not hang the client
            log.exception("sandbox apiserver: internal error on %s %s", method, self.path)
            bug = ApiError(500, "InternalError", "Internal error occurred: sandbox apiserver bug")
            self._send(500, bug.to_status())

    def _watch(self, route: Route, query: dict[str, str], output: Output) -> None:
        """Stream watch events as newline-delimited JSON in a chunked 200 response (handlers/watch.go ServeHTTP);
        errors found before the stream starts are the HTTP status, later ones an ERROR event."""
        server = self.server
        selection = Selection(route.kind, route.namespace, query.get("labelSelector"), query.get("fieldSelector"))
        default_timeout = MIN_REQUEST_TIMEOUT * (1 + random.random())  # handlers/get.go ListResource
        request = parse_watch_request(selection, query, default_timeout)
        to_output = WatchTransformer(route.kind, output)
        events = stream(server.history, server.store, request)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        server.watch_started(self.connection)
        try:
            try:
                for event in events:
                    if server.stopping.is_set():
                        break
                    if event is None:
                        if self._client_gone():
                            self.close_connection = True
                            return
                        continue
                    kind, obj = event
                    self._write_chunk((json.dumps({"type": kind, "object": to_output(obj)}) + "\n").encode())
            except ApiError as error:
                self._write_chunk((json.dumps({"type": "ERROR", "object": error.to_status()}) + "\n").encode())
            except OSError:
                raise
            except Exception:  # the headers are gone: a sandbox bug ends the stream with an ERROR event
                log.exception("sandbox apiserver: internal error in the watch %s", self.path)
                bug = ApiError(500, "InternalError", "Internal error occurred: sandbox apiserver bug")
                self._write_chunk((json.dumps({"type": "ERROR", "object": bug.to_status()}) + "\n").encode())
            self._write_chunk(b"")
        except OSError:  # the client went away, or stop() shut the connection down
            self.close_connection = True
        finally:
            server.watch_ended(self.connection)
            if server.stopping.is_set():
                self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        """Whether the client closed its end (a readable socket with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

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
                selection = Selection(kind, route.namespace, query.get("labelSelector"), query.get("fieldSelector"))
                return 200, list_objects(store, self.server.history, selection, query)
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
        all_headers = {"Content-Type": "application/json", "Cache-Control": "no-cache, private", **(headers or {}),
                       "Content-Length": str(len(data))}
        self.send_response(code)
        for name, value in all_headers.items():
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
        self,
        store: ObjectStore,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultInjector | None = None,
        watch_history: int = DEFAULT_HISTORY,
    ) -> None:
        self.store = store
        self.faults = faults or FaultInjector()
        self.history = EventHistory(store, watch_history)
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox API server is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def active_watches(self) -> int:
        """How many watch streams are open right now."""
        return self._server.watch_count() if self._server is not None else 0

    def start(self) -> None:
        if self._server is not None:
            return
        self.history.start()
        self._server = _Server(self._address, self.store, self.faults, self.history)
        serve: Callable[[float], None] = self._server.serve_forever
        # A short poll interval keeps stop() quick; the loop blocks in select() in between.
        self._thread = threading.Thread(target=serve, args=(0.05,), name="sandbox-apiserver", daemon=True)
        self._thread.start()
        log.info("sandbox apiserver listening on %s", self.url)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.end_watches()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None
