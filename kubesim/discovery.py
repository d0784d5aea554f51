"""API discovery for the sandbox API server: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}[/{version}]`,
legacy and aggregated (what kubectl's discovery client reads to resolve `ks`, `all`, `gitrepositories,...`).

Upstream:
- Aggregated discovery (`apidiscovery.k8s.io/v2` APIGroupDiscoveryList; kubernetes
  `staging/src/k8s.io/apiserver/pkg/endpoints/discovery/aggregated`): served on `/api` and `/apis` when `Accept` asks
  for `application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`, with that Content-Type (client-go
  checks it, else falls back to the legacy documents, `discovery/aggregated_discovery.go`).
- Short names and categories as the registries declare them (`pkg/registry/*/storage` ShortNames()/Categories():
  pods, services, replicationcontrollers, deployments, replicasets, statefulsets, daemonsets, jobs, cronjobs and
  horizontalpodautoscalers are in `all`); Flux's from the CRD markers: `gitrepo` and categories
  `all;fluxcd;fluxcd-sources` (fluxcd/source-controller `api/v1/gitrepository_types.go`), `ks` (fluxcd/
  kustomize-controller `api/v1/kustomization_types.go`, no categories).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from kubesim.store import NAMESPACES, JsonObj, ObjectStore, ResourceKind

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
# No deletecollection: the sandbox does not serve DELETE on a collection.
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
SUBRESOURCE_VERBS = ["get", "patch", "update"]
AGGREGATED_GROUP = "apidiscovery.k8s.io"
AGGREGATED_VERSIONS = ("v2", "v2beta1")

SHORT_NAMES: dict[tuple[str, str], list[str]] = {
    ("", "configmaps"): ["cm"],
    ("", "endpoints"): ["ep"],
    ("", "events"): ["ev"],
    ("", "namespaces"): ["ns"],
    ("", "persistentvolumeclaims"): ["pvc"],
    ("", "pods"): ["po"],
    ("", "replicationcontrollers"): ["rc"],
    ("", "serviceaccounts"): ["sa"],
    ("", "services"): ["svc"],
    ("apps", "daemonsets"): ["ds"],
    ("apps", "deployments"): ["deploy"],
    ("apps", "replicasets"): ["rs"],
    ("apps", "statefulsets"): ["sts"],
    ("autoscaling", "horizontalpodautoscalers"): ["hpa"],
    ("batch", "cronjobs"): ["cj"],
    ("networking.k8s.io", "ingresses"): ["ing"],
    ("policy", "poddisruptionbudgets"): ["pdb"],
    ("source.toolkit.fluxcd.io", "gitrepositories"): ["gitrepo"],
    ("kustomize.toolkit.fluxcd.io", "kustomizations"): ["ks"],
}
CATEGORIES: dict[tuple[str, str], list[str]] = {
    ("", "pods"): ["all"],
    ("", "replicationcontrollers"): ["all"],
    ("", "services"): ["all"],
    ("apps", "daemonsets"): ["all"],
    ("apps", "deployments"): ["all"],
    ("apps", "replicasets"): ["all"],
    ("apps", "statefulsets"): ["all"],
    ("autoscaling", "horizontalpodautoscalers"): ["all"],
    ("batch", "cronjobs"): ["all"],
    ("batch", "jobs"): ["all"],
    ("source.toolkit.fluxcd.io", "gitrepositories"): ["all", "fluxcd", "fluxcd-sources"],
}


def _subresources(kind: ResourceKind) -> list[str]:
    names = ["status"] if getattr(kind, "status_subresource", True) else []
    if kind == NAMESPACES:
        names.append("finalize")
    return names


def _subresource_verbs(name: str) -> list[str]:
    return ["update"] if name == "finalize" else SUBRESOURCE_VERBS


def _resource_list(kinds: list[ResourceKind], group_version: str) -> JsonObj:
    """APIResourceList (legacy discovery of one group version)."""
    resources: list[JsonObj] = []
    for kind in kinds:
        entry: JsonObj = {"name": kind.plural, "singularName": kind.kind.lower(), "namespaced": kind.namespaced,
                          "kind": kind.kind, "verbs": VERBS}
        key = (kind.group, kind.plural)
        if key in SHORT_NAMES:
            entry["shortNames"] = SHORT_NAMES[key]
        if key in CATEGORIES:
            entry["categories"] = CATEGORIES[key]
        resources.append(entry)
        resources.extend({"name": f"{kind.plural}/{sub}", "singularName": "", "namespaced": kind.namespaced,
                          "kind": kind.kind, "verbs": _subresource_verbs(sub)} for sub in _subresources(kind))
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def _resource_discovery(kind: ResourceKind) -> JsonObj:
    """apidiscovery v2 APIResourceDiscovery."""
    response_kind = {"group": kind.group, "version": kind.version, "kind": kind.kind}
    entry: JsonObj = {"resource": kind.plural, "responseKind": response_kind,
                      "scope": "Namespaced" if kind.namespaced else "Cluster",
                      "singularResource": kind.kind.lower(), "verbs": VERBS}
    key = (kind.group, kind.plural)
    if key in SHORT_NAMES:
        entry["shortNames"] = SHORT_NAMES[key]
    if key in CATEGORIES:
        entry["categories"] = CATEGORIES[key]
    subresources = [{"subresource": sub, "responseKind": response_kind, "verbs": _subresource_verbs(sub)}
                    for sub in _subresources(kind)]
    if subresources:
        entry["subresources"] = subresources
    return entry


def _groups(kinds: Iterable[ResourceKind]) -> dict[str, dict[str, list[ResourceKind]]]:
    """group -> version -> kinds; built-in groups first (as the apiserver orders them), then the custom ones."""
    grouped: dict[str, dict[str, list[ResourceKind]]] = {}
    for kind in sorted(kinds, key=lambda k: (k.is_custom, k.group, k.plural)):
        grouped.setdefault(kind.group, {}).setdefault(kind.version, []).append(kind)
    return grouped


def _aggregated(groups: dict[str, dict[str, list[ResourceKind]]], version: str) -> JsonObj:
    items = []
    for group, versions in groups.items():
        metadata: JsonObj = {"name": group, "creationTimestamp": None} if group else {"creationTimestamp": None}
        items.append({"metadata": metadata, "versions": [
            {"version": v, "resources": [_resource_discovery(k) for k in kinds], "freshness": "Current"}
            for v, kinds in versions.items()
        ]})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"{AGGREGATED_GROUP}/{version}", "metadata": {},
            "items": items}


def _wants_aggregated(accept: str | None) -> str | None:
    """The apidiscovery version the client asked for first, if any."""
    for item in (accept or "").split(","):
        params = dict(p.strip().split("=", 1) for p in item.split(";")[1:] if "=" in p)
        if params.get("g") == AGGREGATED_GROUP and params.get("as") == "APIGroupDiscoveryList" and (
                params.get("v") in AGGREGATED_VERSIONS):
            return params["v"]
    return None


def discover(
    store: ObjectStore, segments: list[str], host: str, accept: str | None
) -> tuple[JsonObj, dict[str, str]] | None:
    """The discovery document at `segments` and its response headers, or None when the path is not discovery."""
    kinds = store.registry.all()
    if segments == ["version"]:
        return SERVER_VERSION, {}
    if segments in (["api"], ["apis"]):
        version = _wants_aggregated(accept)
        if version is not None:
            core = segments == ["api"]
            groups = {g: v for g, v in _groups(kinds).items() if (g == "") == core}
            body = _aggregated(groups, version)
            etag = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]
            content_type = f"application/json;g={AGGREGATED_GROUP};v={version};as=APIGroupDiscoveryList"
            return body, {"Content-Type": content_type, "Vary": "Accept", "ETag": f'"{etag}"'}
    if segments == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}, {}
    if segments == ["api", "v1"]:
        return _resource_list([k for k in kinds if not k.group], "v1"), {}
    groups = {g: v for g, v in _groups(kinds).items() if g}

    def group_body(name: str) -> JsonObj:
        versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in groups[name]]
        return {"name": name, "versions": versions, "preferredVersion": versions[0]}

    if segments == ["apis"]:
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_body(g) for g in groups]}, {}
    if len(segments) == 2 and segments[0] == "apis" and segments[1] in groups:
        return {"kind": "APIGroup", "apiVersion": "v1", **group_body(segments[1])}, {}
    if len(segments) == 3 and segments[0] == "apis" and segments[1] in groups and segments[2] in groups[segments[1]]:
        return _resource_list(groups[segments[1]][segments[2]], f"{segments[1]}/{segments[2]}"), {}
    return None
