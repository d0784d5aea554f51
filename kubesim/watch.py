"""Watches for the sandbox API server: a bounded event history (the apiserver's watch cache) and the event streams
served from it.

Upstream (kubernetes `staging/src/k8s.io/apiserver/pkg/storage/cacher`):
- `watch_cache.go` getAllEventsSinceLocked: no resourceVersion (or "0") starts with synthetic ADDED events for the
  current state; `rv < oldest-1` answers `NewResourceExpired("too old resource version: %d (%d)")` (410, reason
  Expired); `sendInitialEvents=true` replays the state whatever the resourceVersion.
- `cacher.go` Watch: once the resourceVersion parsed, errors go to the client as one ERROR event on a 200 stream
  ("to match the uncached watch implementation"), not as the HTTP status.
- `cache_watcher.go` convertToWatchEvent: with selectors, an object entering the selection is ADDED, one leaving it
  is DELETED (previous content, the event's resourceVersion); bookmarks every minute and ~2 s before the timeout
  (nextBookmarkTime), they bypass the selectors; the bookmark ending the initial events carries the annotation
  `k8s.io/initial-events-end: "true"` (KEP-3157 watch-list, which client-go reflectors use since 1.35).
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kubesim.store import (
    ApiError,
    ChangeEvent,
    FieldError,
    JsonObj,
    ObjectStore,
    ResourceKind,
    StatusCause,
    invalid,
    parse_field_selector,
    parse_label_selector,
)

DEFAULT_HISTORY = 1000  # events kept; kube sizes its watch cache by time (eventFreshDuration 75 s), this by count
BOOKMARK_INTERVAL = 60.0  # cacher bookmarkFrequency
BOOKMARK_BEFORE_TIMEOUT = 2.0  # cache_watcher nextBookmarkTime: "roughly 2s before the timeout"
FRESHNESS_WAIT = 3.0  # cacher blockTimeout: how long a watch waits for a resourceVersion the store has not reached
IDLE_TICK = 0.5  # how often an idle stream wakes up so the HTTP layer can notice a client that went away
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
LIST_BLUEPRINT = "k8s.io/initial-events-list-blueprint"

ObjectKey = tuple[str, str]  # (namespace or "", name)


def too_old(requested: int, floor: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {requested} ({floor})")


def too_large(requested: int, current: int) -> ApiError:
    """storage.NewTooLargeResourceVersionError: 504 Timeout, retry after a second."""
    cause = StatusCause("ResourceVersionTooLarge", "Too large resource version").to_dict()
    return ApiError(504, "Timeout", f"Too large resource version: {requested}, current: {current}",
                    {"causes": [cause], "retryAfterSeconds": 1})


def parse_resource_version(kind: ResourceKind, value: str) -> int:
    """APIObjectVersioner.ParseResourceVersion; a bad value is 422 Invalid, as the registry reports it."""
    try:
        parsed = int(value)
        if parsed < 0:
            raise ValueError(value)
    except ValueError:
        error = FieldError("FieldValueInvalid", "resourceVersion",
                           f'Invalid value: "{value}": strconv.ParseUint: parsing "{value}": invalid syntax')
        raise invalid(kind.qualified_resource, "", [error], group=kind.group, kind=kind.plural) from None
    return parsed


def object_key(obj: JsonObj) -> ObjectKey:
    metadata = obj["metadata"]
    return (str(metadata.get("namespace") or ""), str(metadata["name"]))


@dataclass(frozen=True)
class Recorded:
    """A committed change with the resourceVersion it was committed at."""

    rv: int
    type: str
    kind: ResourceKind
    obj: JsonObj
    old: JsonObj | None


class EventHistory:
    """The last `capacity` changes of the store, in resourceVersion order; watches read from it.

    The store calls `_on_change` under its lock right after every commit, so the history always holds every event
    up to the store's current resourceVersion (the store lock is never taken while holding the history's).
    """

    def __init__(self, store: ObjectStore, capacity: int = DEFAULT_HISTORY) -> None:
        self._store = store
        self._capacity = max(1, capacity)
        self._events: list[Recorded] = []
        self._cond = threading.Condition()
        self._floor = 0  # a watch may resume from any rv >= floor (kube's oldest-1)
        self._latest: int | None = None
        self._closed = False

    def start(self) -> None:
        self._closed = False
        self._store.subscribe(self._on_change)
        current = int(self._store.resource_version)
        with self._cond:
            if self._latest is None:
                self._floor = self._latest = current

    def stop(self) -> None:
        """Detach from the store and end every watch reading from this history."""
        self._store.unsubscribe(self._on_change)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def _on_change(self, event: ChangeEvent) -> None:
        rv = int(self._store.resource_version)  # re-entrant: we run inside the store's commit
        obj = event.obj
        if event.type == "DELETED":  # etcd reports a delete at its own revision
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(rv)
        with self._cond:
            if self._latest is None or rv != self._latest + 1:  # first event, or the state was restored
                self._events.clear()
                self._floor = rv - 1
            self._events.append(Recorded(rv, event.type, event.kind, obj, event.old))
            self._latest = rv
            if len(self._events) > self._capacity:
                dropped = len(self._events) - self._capacity
                self._floor = self._events[dropped - 1].rv
                del self._events[:dropped]
            self._cond.notify_all()

    def sync(self) -> int:
        """The store's current resourceVersion; forgets the history if the store jumped past it (a restore)."""
        current = int(self._store.resource_version)
        with self._cond:
            if self._latest is None or current > self._latest:
                self._events.clear()
                self._floor = self._latest = current
        return current

    def floor(self) -> int:
        with self._cond:
            return self._floor

    def events_after(self, rv: int, upto: int | None = None) -> list[Recorded]:
        """The recorded events with rv in (rv, upto]; 410 Expired when the history no longer reaches back to rv."""
        with self._cond:
            if rv < self._floor:
                raise too_old(rv, self._floor)
            return [e for e in self._events if e.rv > rv and (upto is None or e.rv <= upto)]

    def wait(self, rv: int, timeout: float) -> list[Recorded]:
        """Block until events after `rv` exist (returned, even once the history is closed: what was committed before
        the stop is still delivered), `timeout` passes or the history closes with nothing more (both: [])."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if rv < self._floor:
                    raise too_old(rv, self._floor)
                if self._latest is not None and self._latest > rv:
                    return [e for e in self._events if e.rv > rv]
                if self._closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        return []

    def wait_for(self, rv: int, timeout: float) -> bool:
        """Wait until the store reached `rv` (the cacher's waitUntilFreshAndBlock)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._latest or 0) < rv and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return (self._latest or 0) >= rv

    def state_at(self, kind: ResourceKind, rv: int) -> tuple[dict[ObjectKey, JsonObj], int]:
        """Every object of `kind` as it was at `rv` (the current objects with the later changes undone) and the
        current resourceVersion; 410 Expired when the history no longer reaches back to `rv`."""
        self.sync()
        listed = self._store.list_objects(kind)
        current = int(listed["metadata"]["resourceVersion"])
        state = {object_key(obj): obj for obj in listed["items"]}
        if rv >= current:
            return state, current
        for event in reversed([e for e in self.events_after(rv, current) if e.kind == kind]):
            key = object_key(event.obj)
            if event.type == "ADDED" or event.old is None:
                state.pop(key, None)
            else:
                state[key] = copy.deepcopy(event.old)
        return state, current


# ---- One watch -------------------------------------------------------------------------------------------------


@dataclass
class Selection:
    """What a watch (or a list) selects: its kind, namespace and label/field selectors."""

    kind: ResourceKind
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None
    _labels: list[Any] = field(default_factory=list, repr=False)
    _fields: list[Any] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._labels = parse_label_selector(self.label_selector) if self.label_selector else []
        self._fields = parse_field_selector(self.field_selector) if self.field_selector else []

    @property
    def filtered(self) -> bool:
        """Whether selectors narrow the result (kube then leaves out remainingItemCount)."""
        return bool(self._labels or self._fields)

    def matches(self, obj: JsonObj) -> bool:
        metadata = obj["metadata"]
        if self.kind.namespaced and self.namespace and metadata.get("namespace") != self.namespace:
            return False
        labels = metadata.get("labels") or {}
        return all(req(labels) for req in self._labels) and all(req(obj) for req in self._fields)


@dataclass
class WatchRequest:
    selection: Selection
    resource_version: str = ""
    send_initial_events: bool | None = None
    allow_bookmarks: bool = False
    timeout: float = 1800.0


def _flag(query: dict[str, str], name: str) -> bool | None:
    if name not in query:
        return None
    return query[name] in ("true", "1", "True")


def parse_watch_request(selection: Selection, query: dict[str, str], default_timeout: float) -> WatchRequest:
    """The watch's ListOptions, validated as metainternalversion's ValidateListOptions does (422 on misuse)."""
    kind = selection.kind
    send_initial = _flag(query, "sendInitialEvents")
    bookmarks = bool(_flag(query, "allowWatchBookmarks"))
    match = query.get("resourceVersionMatch", "")
    errors: list[FieldError] = []
    if send_initial is not None:
        if match != "NotOlderThan":
            errors.append(FieldError("FieldValueForbidden", "resourceVersionMatch",
                                     "Forbidden: sendInitialEvents requires setting resourceVersionMatch to "
                                     "NotOlderThan"))
        if not bookmarks:
            errors.append(FieldError("FieldValueForbidden", "allowWatchBookmarks",
                                     "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true"))
    elif match:
        errors.append(FieldError("FieldValueForbidden", "resourceVersionMatch",
                                 "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents "
                                 "is provided"))
    if errors:
        raise invalid("ListOptions.meta.k8s.io", "", errors, group="meta.k8s.io", kind="ListOptions")
    rv = query.get("resourceVersion", "")
    if rv:
        parse_resource_version(kind, rv)
    timeout = default_timeout
    if query.get("timeoutSeconds"):
        try:
            timeout = max(0.0, float(int(query["timeoutSeconds"])))
        except ValueError:
            raise ApiError(400, "BadRequest", f'invalid timeoutSeconds: "{query["timeoutSeconds"]}"') from None
    return WatchRequest(selection, rv, send_initial, bookmarks, timeout)


WatchEvent = tuple[str, JsonObj]  # ("ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR", object)


def _bookmark(kind: ResourceKind, rv: int, initial_events_end: bool = False) -> JsonObj:
    metadata: JsonObj = {"resourceVersion": str(rv)}
    if initial_events_end:
        # handlers/watch.go watchListTransformer: the list's type, base64-encoded, for clients that build a list
        blueprint = {"kind": kind.list_kind, "apiVersion": kind.api_version,
                     "metadata": {"resourceVersion": str(rv)}, "items": []}
        encoded = base64.b64encode(json.dumps(blueprint, separators=(",", ":")).encode()).decode()
        metadata["annotations"] = {INITIAL_EVENTS_END: "true", LIST_BLUEPRINT: encoded}
    return {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": metadata}


def _convert(event: Recorded, selection: Selection) -> WatchEvent | None:
    """cache_watcher.go convertToWatchEvent."""
    if event.kind != selection.kind:
        return None
    current = event.type != "DELETED" and selection.matches(event.obj)
    previous = event.old is not None and selection.matches(event.old)
    if current:
        return ("MODIFIED" if previous else "ADDED", copy.deepcopy(event.obj))
    if previous and event.old is not None:
        gone = copy.deepcopy(event.old)
        gone["metadata"]["resourceVersion"] = str(event.rv)
        return ("DELETED", gone)
    return None


def stream(history: EventHistory, store: ObjectStore, request: WatchRequest) -> Iterator[WatchEvent | None]:
    """The events of one watch, in order; `None` on idle ticks (so the caller can check its client). Ends at the
    request's timeout, when the history closes, or after an ERROR event."""
    selection, kind = request.selection, request.selection.kind
    deadline = time.monotonic() + request.timeout
    current = history.sync()
    requested = int(request.resource_version) if request.resource_version else 0
    if requested > current and not history.wait_for(requested, FRESHNESS_WAIT):
        yield ("ERROR", too_large(requested, int(store.resource_version)).to_status())
        return
    replay = request.send_initial_events is True or (
        request.send_initial_events is None and request.resource_version in ("", "0"))
    if replay:
        listed = store.list_objects(kind, selection.namespace, selection.label_selector, selection.field_selector)
        position = int(listed["metadata"]["resourceVersion"])
        for obj in listed["items"]:
            yield ("ADDED", obj)
        if request.send_initial_events:
            yield ("BOOKMARK", _bookmark(kind, position, initial_events_end=True))
    elif request.resource_version in ("", "0"):
        position = current  # sendInitialEvents=false: start at the most recent resourceVersion, no state
    else:
        position = requested
        if position < history.floor():
            yield ("ERROR", too_old(position, history.floor()).to_status())
            return
    next_bookmark = _next_bookmark(request, deadline)
    # A stopping server still sends what each watch was due before it ends it, as kube-apiserver's cacheWatcher
    # drains its input channel once the cacher closes it (k8s.io/apiserver/pkg/storage/cacher/cache_watcher.go).
    while True:
        now = time.monotonic()
        if now >= deadline:
            return
        if next_bookmark is not None and now >= next_bookmark:
            yield ("BOOKMARK", _bookmark(kind, position))
            next_bookmark = _next_bookmark(request, deadline)
        wake = min(deadline, next_bookmark or deadline, now + IDLE_TICK)
        try:
            events = history.wait(position, max(0.0, wake - now))
        except ApiError:  # fell out of the history: end the stream, the client resumes (and learns it is too old)
            return
        if not events:
            if history.closed:
                return
            yield None
            continue
        for event in events:
            converted = _convert(event, selection)
            if converted is not None:
                yield converted
            position = event.rv


def _next_bookmark(request: WatchRequest, deadline: float) -> float | None:
    """cache_watcher.go nextBookmarkTime: every bookmarkFrequency, and ~2 s before the deadline."""
    if not request.allow_bookmarks:
        return None
    now = time.monotonic()
    heartbeat = min(now + BOOKMARK_INTERVAL, deadline - BOOKMARK_BEFORE_TIMEOUT)
    return heartbeat if heartbeat >= now else None
