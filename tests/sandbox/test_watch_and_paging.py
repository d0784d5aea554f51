"""Watches and paged lists of the sandbox API server, through the official kubernetes client and raw HTTP."""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from kubesim import FluxSimulatorConfig, SandboxCluster
from tests.sandbox.conftest import FLUX_KUSTOMIZE, Kube, as_object, wait_for

KS_PATH = "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/{ns}/kustomizations"


def kustomization(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"interval": "5m", "prune": True, "sourceRef": {"kind": "GitRepository", "name": name}},
    }


@pytest.fixture
def idle_kube() -> Iterator[Kube]:
    with SandboxCluster(flux=FluxSimulatorConfig(enabled=False)) as cluster:
        yield Kube.connect(cluster)


def new_watch() -> Any:
    """A `kubernetes.watch.Watch` (the package ships no annotations for it)."""
    make: Callable[[], Any] = watch.Watch
    return make()


class Collector:
    """Runs `kubernetes.watch.Watch().stream(...)` in a thread; events (or the exception) arrive on a queue."""

    def __init__(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.watcher = new_watch()
        self.events: queue.Queue[dict[str, Any] | BaseException] = queue.Queue()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(call, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[..., Any], args: Any, kwargs: Any) -> None:
        try:
            for event in self.watcher.stream(call, *args, **kwargs):
                self.events.put(event)
        except BaseException as error:  # handed to the test thread
            self.events.put(error)
        finally:
            self.done.set()

    def take(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        taken: list[dict[str, Any]] = []
        while len(taken) < count:
            try:
                item = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"got {len(taken)} of {count} watch events: {taken}") from None
            if isinstance(item, BaseException):
                raise item
            taken.append(item)
        return taken

    def stop(self) -> None:
        self.watcher.stop()
        self._thread.join(timeout=5)


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["raw_object"]["metadata"].get("name", "")) for e in events]


def stream_lines(cluster: SandboxCluster, path: str, headers: dict[str, str] | None = None,
                 timeout: float = 15.0) -> tuple[int, dict[str, str], list[dict[str, Any]]]:
    """GET a watch with http.client and read the whole (chunked) body: status, headers, one JSON per line."""
    url = urlsplit(cluster.url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read().decode()
        return response.status, dict(response.getheaders()), [json.loads(line) for line in body.splitlines() if line]
    finally:
        connection.close()


def ks_list(kube: Kube, namespace: str, **options: Any) -> dict[str, Any]:
    group, version, plural = FLUX_KUSTOMIZE
    return as_object(kube.custom.list_namespaced_custom_object(group, version, namespace, plural, **options))


# ---- Watch ---------------------------------------------------------------------------------------------------


def test_watch_streams_changes_after_a_resource_version(idle_kube: Kube) -> None:
    kube, (group, version, plural) = idle_kube, FLUX_KUSTOMIZE
    kube.create_namespace("team")
    kube.create(FLUX_KUSTOMIZE, "team", kustomization("a"))
    start = ks_list(kube, "team")["metadata"]["resourceVersion"]
    collector = Collector(kube.custom.list_namespaced_custom_object, group, version, "team", plural,
                          resource_version=start, timeout_seconds=20)
    try:
        wait_for(lambda: kube.cluster.active_watches == 1, what="the watch to open")
        kube.create(FLUX_KUSTOMIZE, "team", kustomization("b"))
        kube.patch(FLUX_KUSTOMIZE, "team", "a", {"spec": {"interval": "10m"}})
        kube.delete(FLUX_KUSTOMIZE, "team", "b")
        events = collector.take(3)
    finally:
        collector.stop()
    assert summary(events) == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    versions = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > int(start)
    assert events[1]["raw_object"]["spec"]["interval"] == "10m"


def test_watch_without_resource_version_starts_with_the_current_objects(idle_kube: Kube) -> None:
    kube, (group, version, plural) = idle_kube, FLUX_KUSTOMIZE
    kube.create_namespace("team")
    kube.create_namespace("other")
    for name in ("a", "b"):
        kube.create(FLUX_KUSTOMIZE, "team", kustomization(name))
    kube.create(FLUX_KUSTOMIZE, "other", kustomization("elsewhere"))
    collector = Collector(kube.custom.list_namespaced_custom_object, group, version, "team", plural,
                          timeout_seconds=20)
    try:
        assert sorted(summary(collector.take(2))) == [("ADDED", "a"), ("ADDED", "b")]
        kube.create(FLUX_KUSTOMIZE, "other", kustomization("ignored"))  # another namespace: not this watch's
        kube.create(FLUX_KUSTOMIZE, "team", kustomization("c"))
        assert summary(collector.take(1)) == [("ADDED", "c")]
    finally:
        collector.stop()


def test_watch_selectors_follow_objects_in_and_out(idle_kube: Kube) -> None:
    kube, (group, version, plural) = idle_kube, FLUX_KUSTOMIZE
    kube.create_namespace("team")
    kube.create(FLUX_KUSTOMIZE, "team", kustomization("web", {"tier": "front"}))
    kube.create(FLUX_KUSTOMIZE, "team", kustomization("db", {"tier": "back"}))
    labelled = Collector(kube.custom.list_namespaced_custom_object, group, version, "team", plural,
                         label_selector="tier=front", timeout_seconds=20)
    named = Collector(kube.custom.list_namespaced_custom_object, group, version, "team", plural,
                      field_selector="metadata.name=db", timeout_seconds=20)
    try:
        assert summary(labelled.take(1)) == [("ADDED", "web")]
        assert summary(named.take(1)) == [("ADDED", "db")]
        kube.patch(FLUX_KUSTOMIZE, "team", "web", {"metadata": {"labels": {"tier": "back"}}})  # leaves the selection
        kube.patch(FLUX_KUSTOMIZE, "team", "db", {"metadata": {"labels": {"tier": "front"}}})  # enters it
        left, entered = labelled.take(2)
        assert (left["type"], left["raw_object"]["metadata"]["name"]) == ("DELETED", "web")
        assert left["raw_object"]["metadata"]["labels"] == {"tier": "front"}  # the last state it was selected in
        assert (entered["type"], entered["raw_object"]["metadata"]["name"]) == ("ADDED", "db")
        assert summary(named.take(1)) == [("MODIFIED", "db")]
    finally:
        labelled.stop()
        named.stop()


def test_too_old_resource_version_is_410_expired() -> None:
    with SandboxCluster(flux=FluxSimulatorConfig(enabled=False), watch_history=3) as cluster:
        kube, (group, version, plural) = Kube.connect(cluster), FLUX_KUSTOMIZE
        kube.create_namespace("team")
        for index in range(6):
            kube.create(FLUX_KUSTOMIZE, "team", kustomization(f"k{index}"))
        current = int(cluster.store.resource_version)

        status, headers, lines = stream_lines(cluster, KS_PATH.format(ns="team") + "?watch=true&resourceVersion=1")
        assert (status, headers["Content-Type"], headers["Transfer-Encoding"]) == (200, "application/json", "chunked")
        assert lines == [{"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"too old resource version: 1 ({current - 3})", "reason": "Expired", "code": 410}}]

        with pytest.raises(ApiException) as raised:
            for _ in new_watch().stream(kube.custom.list_namespaced_custom_object, group, version, "team", plural,
                                          resource_version="1", timeout_seconds=5):
                pass
        assert raised.value.status == 410
        assert raised.value.reason == f"Expired: too old resource version: 1 ({current - 3})"

        recent = Collector(kube.custom.list_namespaced_custom_object, group, version, "team", plural,
                           resource_version=str(current - 1), timeout_seconds=2)
        assert summary(recent.take(1)) == [("ADDED", "k5")]  # still within the history
        recent.stop()


def test_bookmarks_come_before_the_timeout_and_the_stream_ends(idle_kube: Kube) -> None:
    kube, (group, version, plural) = idle_kube, FLUX_KUSTOMIZE
    kube.create_namespace("team")
    kube.create(FLUX_KUSTOMIZE, "team", kustomization("a"))
    current = kube.cluster.store.resource_version
    started = time.monotonic()
    events = list(new_watch().stream(kube.custom.list_namespaced_custom_object, group, version, "team", plural,
                                       resource_version=current, allow_watch_bookmarks=True, timeout_seconds=3))
    elapsed = time.monotonic() - started
    assert [e["type"] for e in events] == ["BOOKMARK"]  # ~2 s before the 3 s timeout
    assert events[0]["raw_object"]["metadata"]["resourceVersion"] == current
    assert 2.5 <= elapsed < 6


def test_send_initial_events_ends_with_the_annotated_bookmark(idle_kube: Kube) -> None:
    kube = idle_kube
    kube.create_namespace("team")
    for name in ("a", "b"):
        kube.create(FLUX_KUSTOMIZE, "team", kustomization(name))
    current = kube.cluster.store.resource_version
    query = ("?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
             "&fieldSelector=metadata.name%3Db&timeoutSeconds=1")
    status, _, lines = stream_lines(kube.cluster, KS_PATH.format(ns="team") + query)
    assert status == 200
    assert [(line["type"], line["object"]["metadata"].get("name")) for line in lines] == [
        ("ADDED", "b"), ("BOOKMARK", None)]
    bookmark = lines[1]["object"]
    assert bookmark["metadata"]["resourceVersion"] == current
    assert bookmark["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"

    status, _, _ = stream_lines(kube.cluster, KS_PATH.format(ns="team") + "?watch=1&sendInitialEvents=true")
    assert status == 422  # needs resourceVersionMatch=NotOlderThan and allowWatchBookmarks


def test_watches_do_not_block_requests_and_end_when_the_server_stops() -> None:
    cluster = SandboxCluster(flux=FluxSimulatorConfig(enabled=False))
    cluster.start()
    kube = Kube.connect(cluster)
    kube.create_namespace("team")
    ended: list[tuple[int, list[dict[str, Any]]]] = []

    def hold_a_watch() -> None:
        status, _, lines = stream_lines(cluster, KS_PATH.format(ns="team") + "?watch=1", timeout=30)
        ended.append((status, lines))

    threads = [threading.Thread(target=hold_a_watch, daemon=True) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: cluster.active_watches == 3, what="three open watches")
        started = time.monotonic()
        for index in range(10):
            kube.create(FLUX_KUSTOMIZE, "team", kustomization(f"k{index}"))
        assert len(ks_list(kube, "team")["items"]) == 10
        assert time.monotonic() - started < 5
    finally:
        cluster.stop()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads)
    assert [status for status, _ in ended] == [200, 200, 200]
    assert all(len(lines) == 10 for _, lines in ended)  # every event before the stop, then a clean end


# ---- Paged lists ---------------------------------------------------------------------------------------------


def test_paged_list_is_complete_and_consistent(idle_kube: Kube) -> None:
    kube = idle_kube
    kube.create_namespace("team")
    names = [f"k{index}" for index in range(5)]
    for name in names:
        kube.create(FLUX_KUSTOMIZE, "team", kustomization(name))
    first = ks_list(kube, "team", limit=2)
    assert [item["metadata"]["name"] for item in first["items"]] == ["k0", "k1"]
    assert first["metadata"]["remainingItemCount"] == 3
    snapshot = first["metadata"]["resourceVersion"]

    kube.create(FLUX_KUSTOMIZE, "team", kustomization("k9"))  # after the first page: not in this list
    kube.delete(FLUX_KUSTOMIZE, "team", "k3")  # still listed: the pages show the first page's revision
    kube.patch(FLUX_KUSTOMIZE, "team", "k4", {"spec": {"interval": "9m"}})

    pages, token = [first], first["metadata"]["continue"]
    while token:
        page = ks_list(kube, "team", limit=2, _continue=token)
        assert page["metadata"]["resourceVersion"] == snapshot
        pages.append(page)
        token = page["metadata"].get("continue")
    listed = [item for page in pages for item in page["items"]]
    assert [item["metadata"]["name"] for item in listed] == names
    assert listed[4]["spec"]["interval"] == "5m"
    assert "remainingItemCount" not in pages[-1]["metadata"]

    fresh = ks_list(kube, "team")
    assert [item["metadata"]["name"] for item in fresh["items"]] == ["k0", "k1", "k2", "k4", "k9"]
    assert "continue" not in fresh["metadata"]


def test_paged_list_with_a_selector_has_no_remaining_count(idle_kube: Kube) -> None:
    kube = idle_kube
    kube.create_namespace("team")
    for index in range(4):
        kube.create(FLUX_KUSTOMIZE, "team", kustomization(f"k{index}", {"keep": "yes" if index % 2 else "no"}))
    first = ks_list(kube, "team", limit=1, label_selector="keep=yes")
    assert [item["metadata"]["name"] for item in first["items"]] == ["k1"]
    assert first["metadata"]["continue"] and "remainingItemCount" not in first["metadata"]
    second = ks_list(kube, "team", limit=1, label_selector="keep=yes", _continue=first["metadata"]["continue"])
    assert [item["metadata"]["name"] for item in second["items"]] == ["k3"]
    assert "continue" not in second["metadata"]


def test_expired_and_bad_continue_tokens() -> None:
    with SandboxCluster(flux=FluxSimulatorConfig(enabled=False), watch_history=2) as cluster:
        kube = Kube.connect(cluster)
        kube.create_namespace("team")
        for index in range(3):
            kube.create(FLUX_KUSTOMIZE, "team", kustomization(f"k{index}"))
        first = ks_list(kube, "team", limit=1)
        for index in range(3, 6):  # the history no longer reaches back to the first page
            kube.create(FLUX_KUSTOMIZE, "team", kustomization(f"k{index}"))
        with pytest.raises(ApiException) as raised:
            ks_list(kube, "team", limit=1, _continue=first["metadata"]["continue"])
        body = json.loads(raised.value.body or "{}")
        assert (raised.value.status, body["reason"], body["code"]) == (410, "Expired", 410)
        assert body["message"].startswith("The provided continue parameter is too old to display a consistent list")
        rest = ks_list(kube, "team", _continue=body["metadata"]["continue"])  # continues, without consistency
        assert [item["metadata"]["name"] for item in rest["items"]] == ["k1", "k2", "k3", "k4", "k5"]

        with pytest.raises(ApiException) as raised:
            ks_list(kube, "team", limit=1, _continue="not-a-token")
        assert raised.value.status == 400
        assert json.loads(raised.value.body or "{}")["message"].startswith("invalid continue token")
