"""Server-side printing (`meta.k8s.io/v1` Table, PartialObjectMetadata) and discovery, over raw HTTP."""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from kubesim import FluxSimulatorConfig, SandboxCluster
from kubesim.printers import human_duration
from kubesim.store import ResourceKind
from tests.sandbox.conftest import FLUX_KUSTOMIZE, FLUX_SOURCE, Kube

# What kubectl get sends (its transformRequests).
TABLE = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
         "application/json")
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
AGE = re.compile(r"^\d+s$")
READY = {"type": "Ready", "status": "True", "reason": "Succeeded", "lastTransitionTime": "2025-01-01T00:00:00Z",
         "message": "stored artifact for revision 'main@sha1:0123456789abcdef0123456789abcdef01234567'"}


def get(cluster: SandboxCluster, path: str, accept: str = "application/json") -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(cluster.url + path, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def kind_of(
    cluster: SandboxCluster, group: str, version: str, plural: str, kind: str, namespaced: bool
) -> ResourceKind:
    """The registry's kind (built-ins are registered by store.py; registered here if a build lacks one)."""
    found = cluster.store.registry.lookup(group, version, plural)
    if found is None:
        found = ResourceKind(group, version, kind, plural, namespaced)
        cluster.store.registry.register(found)
    return found


@pytest.fixture
def idle_kube() -> Iterator[Kube]:
    with SandboxCluster(flux=FluxSimulatorConfig(enabled=False)) as cluster:
        yield Kube.connect(cluster)


def columns(table: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(c["name"], c["type"], c["priority"]) for c in table["columnDefinitions"]]


def test_flux_tables_have_the_crd_printer_columns(idle_kube: Kube) -> None:
    kube, cluster = idle_kube, idle_kube.cluster
    kube.create_namespace("team")
    kube.create(FLUX_SOURCE, "team", {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
                                      "metadata": {"name": "web"},
                                      "spec": {"interval": "1m", "url": "http://git.example/web.git"}})
    group, version, plural = FLUX_SOURCE
    kube.custom.patch_namespaced_custom_object_status(group, version, "team", plural, "web",
                                                      {"status": {"conditions": [READY]}})
    kube.create(FLUX_KUSTOMIZE, "team", {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                                         "metadata": {"name": "web"}, "spec": {
                                             "interval": "5m", "prune": True,
                                             "sourceRef": {"kind": "GitRepository", "name": "web"}}})

    status, headers, table = get(cluster, "/apis/source.toolkit.fluxcd.io/v1/namespaces/team/gitrepositories", TABLE)
    assert (status, headers["Content-Type"], table["kind"], table["apiVersion"]) == (
        200, "application/json", "Table", "meta.k8s.io/v1")
    assert columns(table) == [("Name", "string", 0), ("URL", "string", 0), ("Age", "date", 0),
                              ("Ready", "string", 0), ("Status", "string", 0)]
    assert table["columnDefinitions"][0]["format"] == "name"
    assert table["columnDefinitions"][1]["description"] == (
        "Custom resource definition column (in JSONPath format): .spec.url")
    [row] = table["rows"]
    name, url, age, ready, message = row["cells"]
    assert (name, url, ready, message) == ("web", "http://git.example/web.git", "True", READY["message"])
    assert AGE.match(age)
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "web" and "spec" not in row["object"]
    assert table["metadata"]["resourceVersion"] == cluster.store.resource_version

    _, _, table = get(cluster, "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/team/kustomizations/web", TABLE)
    assert columns(table) == [("Name", "string", 0), ("Age", "date", 0), ("Ready", "string", 0),
                              ("Status", "string", 0)]
    [row] = table["rows"]
    assert row["cells"][0] == "web" and row["cells"][2:] == [None, None]  # no Ready condition yet: empty cells

    _, _, table = get(cluster, "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/team/kustomizations"
                               "?includeObject=Object", TABLE)
    assert table["rows"][0]["object"]["spec"]["prune"] is True
    _, _, table = get(cluster, "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/team/kustomizations"
                               "?includeObject=None", TABLE)
    assert table["rows"][0]["object"] is None
    status, _, error = get(cluster, "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/team/kustomizations"
                                    "?includeObject=All", TABLE)
    assert (status, error["reason"]) == (400, "BadRequest")

    _, _, table = get(cluster, "/api/v1/namespaces", TABLE)
    assert columns(table) == [("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)]
    assert [row["cells"][:2] for row in table["rows"]] == [["team", "Active"]]

    _, _, plain = get(cluster, "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/team/kustomizations")
    assert plain["kind"] == "KustomizationList"


def test_builtin_tables_have_kubectls_columns(idle_kube: Kube) -> None:
    cluster, store = idle_kube.cluster, idle_kube.cluster.store
    idle_kube.create_namespace("team")
    deployments = kind_of(cluster, "apps", "v1", "deployments", "Deployment", True)
    services = kind_of(cluster, "", "v1", "services", "Service", True)
    accounts = kind_of(cluster, "", "v1", "serviceaccounts", "ServiceAccount", True)
    claims = kind_of(cluster, "", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True)
    bindings = kind_of(cluster, "rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True)
    roles = kind_of(cluster, "rbac.authorization.k8s.io", "v1", "roles", "Role", True)
    secrets = kind_of(cluster, "", "v1", "secrets", "Secret", True)
    config_maps = kind_of(cluster, "", "v1", "configmaps", "ConfigMap", True)
    template = {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}
    store.create(deployments, "team", {"metadata": {"name": "web"}, "spec": {
        "replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template}})
    store.create(services, "team", {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP"}]}})
    store.create(accounts, "team", {"metadata": {"name": "robot"}})
    store.create(claims, "team", {"metadata": {"name": "data"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    store.create(bindings, "team", {"metadata": {"name": "edit"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "team"}]})
    store.create(roles, "team", {"metadata": {"name": "reader"}, "rules": []})
    store.create(secrets, "team", {"metadata": {"name": "creds"}, "data": {"username": "dQ==", "password": "cA=="}})
    store.create(config_maps, "team", {"metadata": {"name": "settings"}, "data": {"a": "1", "b": "2", "c": "3"}})

    def table_of(path: str) -> tuple[list[tuple[str, str, int]], list[Any]]:
        status, _, table = get(cluster, path, TABLE)
        assert status == 200, table
        [row] = table["rows"]
        return columns(table), row["cells"]

    cols, cells = table_of("/apis/apps/v1/namespaces/team/deployments")
    assert [c[0] for c in cols if c[2] == 0] == ["Name", "Ready", "Up-to-date", "Available", "Age"]
    assert [c[0] for c in cols if c[2] == 1] == ["Containers", "Images", "Selector"]
    assert cells[:4] == ["web", "0/3", 0, 0] and cells[5:] == ["web", "nginx:1.27", "app=web"]

    cols, cells = table_of("/api/v1/namespaces/team/services")
    assert [c[0] for c in cols] == ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age", "Selector"]
    assert cells[0:2] == ["web", "ClusterIP"] and cells[3:5] == ["<none>", "80/TCP"] and cells[6] == "app=web"
    assert re.match(r"^\d+\.\d+\.\d+\.\d+$|^<none>$", cells[2])

    cols, cells = table_of("/api/v1/namespaces/team/serviceaccounts")
    assert ([c[0] for c in cols], cells[:2]) == (["Name", "Secrets", "Age"], ["robot", 0])
    cols, cells = table_of("/api/v1/namespaces/team/persistentvolumeclaims")
    assert [c[0] for c in cols if c[2] == 0] == ["Name", "Status", "Volume", "Capacity", "Access Modes",
                                                 "StorageClass", "VolumeAttributesClass", "Age"]
    assert cells[:7] == ["data", "Pending", "", "", "", "", "<unset>"]
    cols, cells = table_of("/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings")
    assert [c[0] for c in cols] == ["Name", "Role", "Age", "Users", "Groups", "ServiceAccounts"]
    assert cells[:2] == ["edit", "ClusterRole/edit"] and cells[3:] == ["", "", "team/robot"]
    cols, cells = table_of("/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles")
    assert [c[:2] for c in cols] == [("Name", "string"), ("Created At", "date")]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", cells[1])
    cols, cells = table_of("/api/v1/namespaces/team/secrets")
    assert ([c[0] for c in cols], cells[:3]) == (["Name", "Type", "Data", "Age"], ["creds", "Opaque", 2])
    cols, cells = table_of("/api/v1/namespaces/team/configmaps")
    assert ([c[0] for c in cols], cells[:2]) == (["Name", "Data", "Age"], ["settings", 3])


def test_table_watch_sends_the_headers_with_the_first_event_only(idle_kube: Kube) -> None:
    cluster = idle_kube.cluster
    for name in ("a", "b"):
        idle_kube.create_namespace(name)
    url = urlsplit(cluster.url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        connection.request("GET", "/api/v1/namespaces?watch=1&timeoutSeconds=1", headers={"Accept": TABLE})
        response = connection.getresponse()
        events = [json.loads(line) for line in response.read().decode().splitlines() if line]
    finally:
        connection.close()
    assert [(e["type"], e["object"]["kind"], e["object"]["rows"][0]["cells"][:2]) for e in events] == [
        ("ADDED", "Table", ["a", "Active"]), ("ADDED", "Table", ["b", "Active"])]
    assert [c["name"] for c in events[0]["object"]["columnDefinitions"]] == ["Name", "Status", "Age"]
    assert events[1]["object"]["columnDefinitions"] is None


def test_partial_object_metadata(idle_kube: Kube) -> None:
    cluster = idle_kube.cluster
    idle_kube.create_namespace("team")
    status, _, body = get(cluster, "/api/v1/namespaces/team",
                          "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
    assert (status, body["kind"], body["metadata"]["name"]) == (200, "PartialObjectMetadata", "team")
    assert "status" not in body
    status, _, body = get(cluster, "/api/v1/namespaces",
                          "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")
    assert (status, body["kind"], [i["metadata"]["name"] for i in body["items"]]) == (
        200, "PartialObjectMetadataList", ["team"])
    status, _, body = get(cluster, "/api/v1/namespaces", "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
    assert (status, body["reason"]) == (406, "NotAcceptable")


def test_human_duration_matches_apimachinery() -> None:
    cases = {0: "0s", 119: "119s", 120: "2m", 185: "3m5s", 600: "10m", 3 * 3600: "3h", 3 * 3600 + 60: "3h1m",
             8 * 3600: "8h", 47 * 3600: "47h", 49 * 3600: "2d1h", 8 * 86400: "8d", 800 * 86400: "2y70d",
             -1.5: "0s", -3: "<invalid>"}
    assert {seconds: human_duration(seconds) for seconds in cases} == cases


def test_discovery_aggregated_and_legacy(idle_kube: Kube) -> None:
    cluster = idle_kube.cluster
    kind_of(cluster, "apps", "v1", "deployments", "Deployment", True)
    status, headers, body = get(cluster, "/apis", AGGREGATED)
    assert (status, body["kind"], body["apiVersion"]) == (200, "APIGroupDiscoveryList", "apidiscovery.k8s.io/v2")
    assert headers["Content-Type"] == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    resources = {(group["metadata"]["name"], r["resource"]): r for group in body["items"]
                 for version in group["versions"] for r in version["resources"]}
    deployments = resources[("apps", "deployments")]
    assert (deployments["categories"], deployments["shortNames"], deployments["scope"]) == (
        ["all"], ["deploy"], "Namespaced")
    assert "watch" in deployments["verbs"]
    assert resources[("kustomize.toolkit.fluxcd.io", "kustomizations")]["shortNames"] == ["ks"]
    assert resources[("kustomize.toolkit.fluxcd.io", "kustomizations")]["subresources"][0]["subresource"] == "status"

    status, headers, core = get(cluster, "/api", AGGREGATED)
    assert core["items"][0]["versions"][0]["version"] == "v1"
    namespaces = {r["resource"]: r for r in core["items"][0]["versions"][0]["resources"]}["namespaces"]
    assert (namespaces["scope"], namespaces["shortNames"]) == ("Cluster", ["ns"])

    _, headers, legacy = get(cluster, "/apis")
    assert legacy["kind"] == "APIGroupList" and headers["Content-Type"] == "application/json"
    _, _, apps = get(cluster, "/apis/apps/v1")
    entry = next(r for r in apps["resources"] if r["name"] == "deployments")
    assert (entry["categories"], entry["singularName"], entry["shortNames"]) == (["all"], "deployment", ["deploy"])
