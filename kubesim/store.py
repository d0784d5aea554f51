"""The sandbox API server's object store: kube-apiserver semantics without HTTP.

It reproduces what the project relies on from kube-apiserver (upstream: k8s.io/apiserver's generic registry, and
https://kubernetes.io/docs/reference/using-api/api-concepts/): server-set metadata, one cluster-wide resourceVersion
counter, generation rules, the status subresource, optimistic concurrency, merge/JSON/strategic patches, server-side
apply with real field ownership, finalizers, namespace termination and `Status` error bodies. Everything is guarded
by one lock; listeners are told about every committed change (they run under the lock, so they must only enqueue).
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jsonpatch

from kubesim.strategies import GENERATION_KINDS, prepare_for_create, prepare_for_update

JsonObj = dict[str, Any]
FieldPath = tuple[str, ...]

# ---- Kinds ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceKind:
    """One API resource the sandbox serves (group "" is the core group)."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    status_subresource: bool = False  # served at .../{name}/status (whether the store honours it is the caller's)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def is_custom(self) -> bool:
        """A custom resource (CRD): JSON/merge patches and apply only, generation always kept."""
        return bool(self.group) and self.group not in BUILTIN_GROUPS

    @property
    def tracks_generation(self) -> bool:
        """Whether metadata.generation is kept: every custom kind; the built-ins whose strategy keeps it."""
        return self.is_custom or (self.group, self.kind) in GENERATION_KINDS

    @property
    def qualified_resource(self) -> str:
        """`namespaces` or `kustomizations.kustomize.toolkit.fluxcd.io`, as kube names resources in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


BUILTIN_GROUPS = frozenset({"apps", "batch", "rbac.authorization.k8s.io", "networking.k8s.io", "policy"})
RBAC = "rbac.authorization.k8s.io"
NAMESPACES = ResourceKind("", "v1", "Namespace", "namespaces", namespaced=False, status_subresource=True)
SECRETS = ResourceKind("", "v1", "Secret", "secrets", namespaced=True)
CONFIG_MAPS = ResourceKind("", "v1", "ConfigMap", "configmaps", namespaced=True)
GIT_REPOSITORIES = ResourceKind("source.toolkit.fluxcd.io", "v1", "GitRepository", "gitrepositories", namespaced=True,
                                status_subresource=True)
KUSTOMIZATIONS = ResourceKind("kustomize.toolkit.fluxcd.io", "v1", "Kustomization", "kustomizations", namespaced=True,
                              status_subresource=True)
# What the shipped templates and deploy/kubernetes emit (`kubectl kustomize` of each).
DEPLOYMENTS = ResourceKind("apps", "v1", "Deployment", "deployments", namespaced=True, status_subresource=True)
SERVICES = ResourceKind("", "v1", "Service", "services", namespaced=True, status_subresource=True)
SERVICE_ACCOUNTS = ResourceKind("", "v1", "ServiceAccount", "serviceaccounts", namespaced=True)
PERSISTENT_VOLUME_CLAIMS = ResourceKind("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", namespaced=True,
                                        status_subresource=True)
ROLES = ResourceKind(RBAC, "v1", "Role", "roles", namespaced=True)
ROLE_BINDINGS = ResourceKind(RBAC, "v1", "RoleBinding", "rolebindings", namespaced=True)
CLUSTER_ROLES = ResourceKind(RBAC, "v1", "ClusterRole", "clusterroles", namespaced=False)
CLUSTER_ROLE_BINDINGS = ResourceKind(RBAC, "v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False)
DEFAULT_KINDS = (NAMESPACES, SECRETS, CONFIG_MAPS, GIT_REPOSITORIES, KUSTOMIZATIONS, DEPLOYMENTS, SERVICES,
                 SERVICE_ACCOUNTS, PERSISTENT_VOLUME_CLAIMS, ROLES, ROLE_BINDINGS, CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS)


class KindRegistry:
    """The resources the sandbox knows, looked up the way URLs name them."""

    def __init__(self, kinds: Iterable[ResourceKind] = DEFAULT_KINDS) -> None:
        self._by_path: dict[tuple[str, str, str], ResourceKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: ResourceKind) -> None:
        self._by_path[(kind.group, kind.version, kind.plural)] = kind

    def lookup(self, group: str, version: str, plural: str) -> ResourceKind | None:
        return self._by_path.get((group, version, plural))

    def all(self) -> list[ResourceKind]:
        return list(self._by_path.values())

    def by_qualified_resource(self, name: str) -> ResourceKind | None:
        for kind in self._by_path.values():
            if kind.qualified_resource == name:
                return kind
        return None


# ---- Errors --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusCause:
    reason: str
    message: str
    field: str = ""

    def to_dict(self) -> JsonObj:
        cause: JsonObj = {"reason": self.reason, "message": self.message}
        if self.field:
            cause["field"] = self.field
        return cause


class ApiError(Exception):
    """A failed request, rendered as a kube `Status` body."""

    def __init__(self, code: int, reason: str, message: str, details: JsonObj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def to_status(self) -> JsonObj:
        status: JsonObj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            status["details"] = self.details
        status["code"] = self.code
        return status


def _resource_details(kind: ResourceKind, name: str) -> JsonObj:
    details: JsonObj = {"name": name}
    if kind.group:
        details["group"] = kind.group
    details["kind"] = kind.plural
    return details


def not_found(kind: ResourceKind, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{kind.qualified_resource} "{name}" not found', _resource_details(kind, name))


def namespace_not_found(name: str) -> ApiError:
    return not_found(NAMESPACES, name)


def already_exists(kind: ResourceKind, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{kind.qualified_resource} "{name}" already exists', _resource_details(kind, name)
    )


def stale_conflict(kind: ResourceKind, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {kind.qualified_resource} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        _resource_details(kind, name),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unsupported_media_type(content_type: str, accepted: Iterable[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: {', '.join(accepted)}",
    )


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def terminating_namespace(kind: ResourceKind, name: str, namespace: str) -> ApiError:
    details = _resource_details(kind, name)
    details["causes"] = [
        StatusCause(
            "NamespaceTerminating", f"namespace {namespace} is being terminated", "metadata.namespace"
        ).to_dict()
    ]
    return ApiError(
        403,
        "Forbidden",
        f'{kind.qualified_resource} "{name}" is forbidden: unable to create new content in namespace {namespace} '
        "because it is being terminated",
        details,
    )


@dataclass(frozen=True)
class FieldError:
    """One validation failure, formatted like apimachinery's `field.Error`."""

    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, FieldValueForbidden, ...
    field: str
    body: str  # what follows "<field>: "

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


def _go_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def invalid_value(path: str, value: Any, detail: str) -> FieldError:
    return FieldError("FieldValueInvalid", path, f"Invalid value: {_go_value(value)}: {detail}")


def required_value(path: str, detail: str = "") -> FieldError:
    return FieldError("FieldValueRequired", path, "Required value" + (f": {detail}" if detail else ""))


def unsupported_value(path: str, value: Any, supported: Iterable[str]) -> FieldError:
    listed = ", ".join(json.dumps(s) for s in supported)
    body = f"Unsupported value: {_go_value(value)}: supported values: {listed}"
    return FieldError("FieldValueNotSupported", path, body)


def forbidden_value(path: str, detail: str) -> FieldError:
    return FieldError("FieldValueForbidden", path, f"Forbidden: {detail}")


def invalid(qualified_kind: str, name: str, errors: list[FieldError], group: str = "", kind: str = "") -> ApiError:
    joined = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    details: JsonObj = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind or qualified_kind
    details["causes"] = [StatusCause(e.reason, e.body, e.field).to_dict() for e in errors]
    return ApiError(422, "Invalid", f'{qualified_kind} "{name}" is invalid: {joined}', details)


def invalid_object(kind: ResourceKind, name: str, errors: list[FieldError]) -> ApiError:
    return invalid(kind.qualified_kind, name, errors, group=kind.group, kind=kind.kind)


# ---- Validation ----------------------------------------------------------------------------------------------

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL = re.compile(f"^{_DNS1123_LABEL_FMT}$")
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + r"(\." + _DNS1123_LABEL_FMT + ")*"
_DNS1123_SUBDOMAIN = re.compile(f"^{_DNS1123_SUBDOMAIN_FMT}$")
# Upstream's message, including the two spaces after "'my-name',".
DNS1123_LABEL_ERROR = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end "
    "with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    f"'{_DNS1123_LABEL_FMT}')"
)
DNS1123_SUBDOMAIN_ERROR = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start "
    "and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    f"'{_DNS1123_SUBDOMAIN_FMT}')"
)


def dns1123_label_errors(value: str) -> list[str]:
    errors = []
    if len(value) > DNS1123_LABEL_MAX:
        errors.append(f"must be no more than {DNS1123_LABEL_MAX} characters")
    if not _DNS1123_LABEL.match(value):
        errors.append(DNS1123_LABEL_ERROR)
    return errors


def dns1123_subdomain_errors(value: str) -> list[str]:
    errors = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        errors.append(f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters")
    if not _DNS1123_SUBDOMAIN.match(value):
        errors.append(DNS1123_SUBDOMAIN_ERROR)
    return errors


FLUX_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")
GIT_URL = re.compile(r"^(http|https|ssh)://.*$")
SOURCE_KINDS = ("OCIRepository", "GitRepository", "Bucket", "ExternalArtifact")

SpecValidator = Callable[[JsonObj], list[FieldError]]


def _schema_type_error(path: str, value: Any, expected: str) -> FieldError:
    type_names = {str: "string", bool: "boolean", int: "integer", float: "number", dict: "object", list: "array"}
    actual = type_names.get(type(value), "null" if value is None else type(value).__name__)
    return invalid_value(path, actual, f"{path} in body must be of type {expected}: {json.dumps(actual)}")


def _check_pattern(errors: list[FieldError], spec: JsonObj, key: str, pattern: re.Pattern[str]) -> None:
    if key not in spec:
        return
    value, path = spec[key], f"spec.{key}"
    if not isinstance(value, str):
        errors.append(_schema_type_error(path, value, "string"))
    elif not pattern.match(value):
        errors.append(invalid_value(path, value, f"{path} in body should match '{pattern.pattern}'"))


def validate_git_repository_spec(obj: JsonObj) -> list[FieldError]:
    """The CRD's OpenAPI checks that matter here (source.toolkit.fluxcd.io/v1 GitRepository)."""
    spec = obj.get("spec")
    if spec is None:
        return []
    if not isinstance(spec, dict):
        return [_schema_type_error("spec", spec, "object")]
    errors = [required_value(f"spec.{key}") for key in ("interval", "url") if key not in spec]
    _check_pattern(errors, spec, "url", GIT_URL)
    _check_pattern(errors, spec, "interval", FLUX_DURATION)
    _check_pattern(errors, spec, "timeout", FLUX_DURATION)
    if "ref" in spec and not isinstance(spec["ref"], dict):
        errors.append(_schema_type_error("spec.ref", spec["ref"], "object"))
    if "suspend" in spec and not isinstance(spec["suspend"], bool):
        errors.append(_schema_type_error("spec.suspend", spec["suspend"], "boolean"))
    return errors


def validate_kustomization_spec(obj: JsonObj) -> list[FieldError]:
    """The CRD's OpenAPI checks that matter here (kustomize.toolkit.fluxcd.io/v1 Kustomization)."""
    spec = obj.get("spec")
    if spec is None:
        return []
    if not isinstance(spec, dict):
        return [_schema_type_error("spec", spec, "object")]
    errors = [required_value(f"spec.{key}") for key in ("interval", "prune", "sourceRef") if key not in spec]
    _check_pattern(errors, spec, "interval", FLUX_DURATION)
    _check_pattern(errors, spec, "timeout", FLUX_DURATION)
    _check_pattern(errors, spec, "retryInterval", FLUX_DURATION)
    for flag in ("prune", "wait", "force", "suspend"):
        if flag in spec and not isinstance(spec[flag], bool):
            errors.append(_schema_type_error(f"spec.{flag}", spec[flag], "boolean"))
    source_ref = spec.get("sourceRef")
    if "sourceRef" in spec and not isinstance(source_ref, dict):
        errors.append(_schema_type_error("spec.sourceRef", source_ref, "object"))
    elif isinstance(source_ref, dict):
        errors.extend(required_value(f"spec.sourceRef.{key}") for key in ("kind", "name") if key not in source_ref)
        source_kind = source_ref.get("kind")
        if source_kind is not None and source_kind not in SOURCE_KINDS:
            errors.append(unsupported_value("spec.sourceRef.kind", source_kind, SOURCE_KINDS))
    return errors


SPEC_VALIDATORS: dict[ResourceKind, SpecValidator] = {
    GIT_REPOSITORIES: validate_git_repository_spec,
    KUSTOMIZATIONS: validate_kustomization_spec,
}


# ---- Label selectors -----------------------------------------------------------------------------------------

_SET_REQUIREMENT = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\((.*)\)\s*$")

LabelRequirement = Callable[[dict[str, str]], bool]


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _label_requirement(key: str, values: set[str] | None, *, present: bool) -> LabelRequirement:
    """`present`: the label must be there (with one of `values`, if given) — or, when False, must not."""

    def matches(labels: dict[str, str]) -> bool:
        found = key in labels and (values is None or labels[key] in values)
        return found == present

    return matches


def parse_label_selector(selector: str) -> list[LabelRequirement]:
    """Equality- and set-based selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`."""
    requirements: list[LabelRequirement] = []
    for term in _split_selector(selector):
        set_match = _SET_REQUIREMENT.match(term)
        if set_match:
            key, op, raw = set_match.groups()
            values = {v.strip() for v in raw.split(",") if v.strip()}
            requirements.append(_label_requirement(key, values, present=op == "in"))
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            requirements.append(_label_requirement(key, {value}, present=False))
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            requirements.append(_label_requirement(key, {value}, present=True))
        elif term.startswith("!"):
            requirements.append(_label_requirement(term[1:].strip(), None, present=False))
        elif re.fullmatch(r"[A-Za-z0-9./_-]+", term):
            requirements.append(_label_requirement(term, None, present=True))
        else:
            raise bad_request(f"unable to parse requirement: {term!r}")
    return requirements


def parse_field_selector(selector: str) -> list[Callable[[JsonObj], bool]]:
    """The two field selectors every resource supports: metadata.name and metadata.namespace."""
    requirements: list[Callable[[JsonObj], bool]] = []
    for term in _split_selector(selector):
        negate = "!=" in term
        key, value = (s.strip() for s in term.replace("==", "=").replace("!=", "=").split("=", 1))
        if key not in ("metadata.name", "metadata.namespace"):
            raise bad_request(f'"{key}" is not a known field selector: only "metadata.name", "metadata.namespace"')
        attr = key.split(".", 1)[1]

        def matches(obj: JsonObj, a: str = attr, v: str = value, n: bool = negate) -> bool:
            return (str(obj["metadata"].get(a, "")) == v) != n

        requirements.append(matches)
    return requirements


# ---- Managed fields (server-side apply ownership) -----------------------------------------------------------

_MAP = object()  # marks a path whose value is a non-empty map (its children are paths too)
_MISSING = object()
_OWNABLE_METADATA = ("labels", "annotations", "finalizers", "ownerReferences")


def ownable_view(obj: JsonObj, subresource: str) -> JsonObj:
    """The part of an object field managers can own: status for /status, everything else otherwise."""
    if subresource == "status":
        return {"status": obj["status"]} if "status" in obj else {}
    view = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    metadata = obj.get("metadata") or {}
    owned_metadata = {k: metadata[k] for k in _OWNABLE_METADATA if k in metadata}
    if owned_metadata:
        view["metadata"] = owned_metadata
    return view


def field_paths(value: JsonObj, prefix: FieldPath = ()) -> dict[FieldPath, Any]:
    """Every field of `value` as a path; maps are paths too, lists and scalars are leaves (atomic)."""
    paths: dict[FieldPath, Any] = {}
    for key, child in value.items():
        path = (*prefix, key)
        if isinstance(child, dict) and child:
            if path != ("metadata",):  # kube never owns the metadata map itself
                paths[path] = _MAP
            paths.update(field_paths(child, path))
        else:
            paths[path] = child
    return paths


def fields_v1(paths: Iterable[FieldPath]) -> JsonObj:
    """Encode a field set as FieldsV1 (`{"f:spec": {".": {}, "f:url": {}}}`)."""
    path_set = set(paths)

    def encode(prefix: FieldPath) -> JsonObj:
        children = sorted({p[len(prefix)] for p in path_set if len(p) > len(prefix) and p[: len(prefix)] == prefix})
        node: JsonObj = {".": {}} if prefix in path_set and children else {}
        for key in children:
            node[f"f:{key}"] = encode((*prefix, key))
        return node

    return encode(())


def parse_fields_v1(encoded: JsonObj, prefix: FieldPath = ()) -> set[FieldPath]:
    paths: set[FieldPath] = set()
    for key, child in encoded.items():
        if key == ".":
            paths.add(prefix)
        elif key.startswith("f:"):
            path = (*prefix, key[2:])
            if child:
                paths |= parse_fields_v1(child, path)
            else:
                paths.add(path)
    return paths


def _path_text(path: FieldPath) -> str:
    return "".join(f".{key}" for key in path)


def _get_path(obj: JsonObj, path: FieldPath) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _delete_path(obj: JsonObj, path: FieldPath) -> None:
    node: Any = obj
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    if isinstance(node, dict):
        node.pop(path[-1], None)


def deep_merge(base: JsonObj, overlay: JsonObj) -> JsonObj:
    """Apply semantics: maps merge key by key, lists and scalars are replaced whole."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass
class ManagerEntry:
    manager: str
    operation: str  # "Apply" | "Update"
    api_version: str
    time: str
    subresource: str
    paths: set[FieldPath]

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.manager, self.operation, self.subresource)

    def to_dict(self) -> JsonObj:
        entry: JsonObj = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1(self.paths),
        }
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry

    def describe(self) -> str:
        """How upstream names a manager in conflict messages."""
        if self.operation == "Update":
            return f'"{self.manager}" using {self.api_version} at {self.time}'
        return f'"{self.manager}"'


def read_managed_fields(obj: JsonObj) -> list[ManagerEntry]:
    entries = []
    for raw in obj.get("metadata", {}).get("managedFields") or []:
        entries.append(
            ManagerEntry(
                manager=raw.get("manager", ""),
                operation=raw.get("operation", "Update"),
                api_version=raw.get("apiVersion", ""),
                time=raw.get("time", ""),
                subresource=raw.get("subresource", ""),
                paths=parse_fields_v1(raw.get("fieldsV1") or {}),
            )
        )
    return entries


def write_managed_fields(obj: JsonObj, entries: list[ManagerEntry]) -> None:
    kept = [e.to_dict() for e in entries if e.paths]
    if kept:
        obj["metadata"]["managedFields"] = kept
    else:
        obj["metadata"].pop("managedFields", None)


def _changed_paths(old: dict[FieldPath, Any], new: dict[FieldPath, Any]) -> tuple[set[FieldPath], set[FieldPath]]:
    """(added or modified, removed) between two path maps."""
    changed = {
        p for p, v in new.items()
        if p not in old or (v is _MAP) != (old[p] is _MAP) or (v is not _MAP and old[p] != v)
    }
    removed = set(old) - set(new)
    return changed, removed


def record_update(
    old_obj: JsonObj | None, new_obj: JsonObj, *, manager: str, api_version: str, subresource: str, now: str
) -> None:
    """An Update takes ownership of what it changed, away from everyone else (structured-merge-diff rules)."""
    entries = read_managed_fields(old_obj) if old_obj is not None else []
    old_paths = field_paths(ownable_view(old_obj, subresource)) if old_obj is not None else {}
    new_paths = field_paths(ownable_view(new_obj, subresource))
    changed, removed = _changed_paths(old_paths, new_paths)
    if not changed and not removed:
        write_managed_fields(new_obj, entries)
        return
    identity = (manager, "Update", subresource)
    mine = next((e for e in entries if e.identity == identity), None)
    for entry in entries:
        if entry is not mine:
            entry.paths -= changed | removed
    if mine is None:
        mine = ManagerEntry(manager, "Update", api_version, now, subresource, set())
        entries.append(mine)
    mine.paths = (mine.paths | changed) - removed
    mine.time, mine.api_version = now, api_version
    write_managed_fields(new_obj, entries)


def apply_config(
    live: JsonObj, config: JsonObj, *, manager: str, api_version: str, subresource: str, force: bool, now: str
) -> JsonObj:
    """Server-side apply of `config` onto `live`; returns the new object or raises a FieldManagerConflict."""
    entries = read_managed_fields(live)
    identity = (manager, "Apply", subresource)
    mine = next((e for e in entries if e.identity == identity), None)
    previous = set(mine.paths) if mine else set()
    config_view = ownable_view(config, subresource)
    applied = field_paths(config_view)

    merged_view = deep_merge(ownable_view(live, subresource), config_view)
    others = [e for e in entries if e is not mine]
    # Fields this manager applied before and omits now go away unless someone else still owns them.
    for path in sorted(previous - set(applied), key=len, reverse=True):
        if any(path in e.paths for e in others):
            continue
        value = _get_path(merged_view, path)
        if isinstance(value, dict) and value:
            continue
        _delete_path(merged_view, path)

    live_paths = field_paths(ownable_view(live, subresource))
    merged_paths = field_paths(merged_view)
    changed, removed = _changed_paths(live_paths, merged_paths)
    conflicts = sorted(
        ((entry, path) for entry in others for path in entry.paths & changed if merged_paths.get(path) is not _MAP),
        key=lambda c: (c[0].manager, c[1]),
    )
    if conflicts and not force:
        raise _apply_conflict(conflicts)
    for entry in others:
        entry.paths -= changed | removed
    if mine is None:
        mine = ManagerEntry(manager, "Apply", api_version, now, subresource, set())
        entries.append(mine)
    mine.paths, mine.api_version, mine.time = set(applied), api_version, now

    result = copy.deepcopy(live)
    if subresource == "status":
        result.pop("status", None)
        result.update(merged_view)
    else:
        metadata = result["metadata"]
        for key in _OWNABLE_METADATA:
            metadata.pop(key, None)
        metadata.update(merged_view.pop("metadata", {}))
        for key in [k for k in result if k not in ("apiVersion", "kind", "metadata", "status")]:
            del result[key]
        result.update(merged_view)
    write_managed_fields(result, entries)
    return result


def _apply_conflict(conflicts: list[tuple[ManagerEntry, FieldPath]]) -> ApiError:
    causes = [
        StatusCause("FieldManagerConflict", f"conflict with {entry.describe()}", _path_text(path)).to_dict()
        for entry, path in conflicts
    ]
    if len(conflicts) == 1:
        entry, path = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {entry.describe()}: {_path_text(path)}"
    else:
        lines: list[str] = []
        by_manager: dict[str, list[FieldPath]] = {}
        for entry, path in conflicts:
            by_manager.setdefault(entry.describe(), []).append(path)
        for described in sorted(by_manager):
            lines.append(f"conflicts with {described}:")
            lines.extend(f"- {_path_text(p)}" for p in by_manager[described])
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApiError(409, "Conflict", message, {"causes": causes})


# ---- Patches -------------------------------------------------------------------------------------------------

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
CUSTOM_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, APPLY_PATCH)
BUILTIN_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: JsonObj, patch: JsonObj) -> JsonObj:
    """Strategic merge patch for the fields the project uses on built-in kinds (maps merge; lists replace)."""
    cleaned = {k: v for k, v in patch.items() if not k.startswith("$")}
    return merge_patch(target, cleaned)  # type: ignore[no-any-return]


# ---- The store -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeEvent:
    """A committed change. `old` is the previous state (None for ADDED), `obj` the new one (last state if DELETED)."""

    type: str  # ADDED | MODIFIED | DELETED
    kind: ResourceKind
    obj: JsonObj
    old: JsonObj | None = None

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"].get("namespace", ""))

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


Listener = Callable[[ChangeEvent], None]
ObjectKey = tuple[str, str, str]  # (qualified resource, namespace or "", name)

NAMESPACE_FINALIZER = "kubernetes"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _user_manager(field_manager: str | None) -> str:
    return field_manager or "unknown"


@dataclass
class WriteResult:
    obj: JsonObj
    created: bool = False


class ObjectStore:
    """All objects of the sandbox cluster and the apiserver rules for changing them. Thread-safe."""

    def __init__(self, registry: KindRegistry | None = None) -> None:
        self.registry = registry or KindRegistry()
        self._lock = threading.RLock()
        self._objects: dict[ObjectKey, JsonObj] = {}
        self._resource_version = 0
        self._listeners: list[Listener] = []

    # -- listeners and persistence --

    def subscribe(self, listener: Listener) -> None:
        """`listener` is called under the store lock after every commit: it must only enqueue, never block."""
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._resource_version)

    def snapshot(self) -> JsonObj:
        """A JSON-ready copy of the whole cluster state, including the resourceVersion counter."""
        with self._lock:
            return {
                "resourceVersion": self._resource_version,
                "objects": [
                    {"resource": key[0], "object": copy.deepcopy(obj)} for key, obj in sorted(self._objects.items())
                ],
            }

    def restore(self, snapshot: JsonObj) -> None:
        with self._lock:
            self._objects.clear()
            for item in snapshot.get("objects", []):
                kind = self.registry.by_qualified_resource(item["resource"])
                if kind is None:
                    continue
                obj = item["object"]
                self._objects[self._key(kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
            self._resource_version = int(snapshot.get("resourceVersion", 0))

    # -- reads --

    def get(self, kind: ResourceKind, namespace: str | None, name: str) -> JsonObj:
        with self._lock:
            return copy.deepcopy(self._require(kind, namespace, name))

    def find(self, kind: ResourceKind, namespace: str | None, name: str) -> JsonObj | None:
        with self._lock:
            obj = self._objects.get(self._key(kind, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list_objects(
        self,
        kind: ResourceKind,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> JsonObj:
        label_reqs = parse_label_selector(label_selector) if label_selector else []
        field_reqs = parse_field_selector(field_selector) if field_selector else []
        with self._lock:
            items = [
                copy.deepcopy(obj)
                for obj in self._iter(kind, namespace)
                if all(req(obj["metadata"].get("labels") or {}) for req in label_reqs)
                and all(req(obj) for req in field_reqs)
            ]
            return {
                "kind": kind.list_kind,
                "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(self._resource_version)},
                "items": items,
            }

    def objects_in_namespace(self, namespace: str) -> list[tuple[ResourceKind, JsonObj]]:
        with self._lock:
            found: list[tuple[ResourceKind, JsonObj]] = []
            for kind in self.registry.all():
                if kind.namespaced:
                    found.extend((kind, copy.deepcopy(obj)) for obj in self._iter(kind, namespace))
            return found

    # -- writes --

    def create(
        self,
        kind: ResourceKind,
        namespace: str | None,
        body: Any,
        *,
        field_manager: str | None = None,
        dry_run: bool = False,
    ) -> JsonObj:
        obj = self._check_body(kind, namespace, body, name_from_url=None)
        metadata = obj["metadata"]
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = f"{metadata['generateName']}{secrets.token_hex(3)[:5]}"
        name = str(metadata.get("name") or "")
        with self._lock:
            self._admit_create(kind, namespace, name)
            self._validate(kind, obj, name)
            if self._key(kind, namespace, name) in self._objects:
                raise already_exists(kind, name)
            now = utc_now()
            obj.pop("status", None)
            record_update(
                None, obj, manager=_user_manager(field_manager), api_version=kind.api_version, subresource="", now=now
            )
            return self._commit_create(kind, obj, now, dry_run)

    def update(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        field_manager: str | None = None,
        subresource: str = "",
        dry_run: bool = False,
    ) -> JsonObj:
        """PUT: replace the object (or its status) under optimistic concurrency."""
        obj = self._check_body(kind, namespace, body, name_from_url=name)
        with self._lock:
            current = self._require(kind, namespace, name)
            requested_rv = obj["metadata"].get("resourceVersion")
            if requested_rv:
                if str(requested_rv) != current["metadata"]["resourceVersion"]:
                    raise stale_conflict(kind, name)
            elif kind.is_custom:
                raise invalid_object(
                    kind, name, [FieldError("FieldValueInvalid", "metadata.resourceVersion",
                                            "Invalid value: 0: must be specified for an update")]
                )
            return self._commit_update(
                kind, current, obj, manager=_user_manager(field_manager), subresource=subresource, dry_run=dry_run
            )

    def patch(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch_body: Any,
        *,
        field_manager: str | None = None,
        force: bool = False,
        subresource: str = "",
        dry_run: bool = False,
    ) -> WriteResult:
        accepted = CUSTOM_PATCH_TYPES if kind.is_custom else BUILTIN_PATCH_TYPES
        if patch_type not in accepted:
            raise unsupported_media_type(patch_type, accepted)
        if patch_type == APPLY_PATCH:
            return self.apply(
                kind, namespace, name, patch_body,
                field_manager=field_manager, force=force, subresource=subresource, dry_run=dry_run,
            )
        with self._lock:
            current = self._require(kind, namespace, name)
            patched = self._patched(current, patch_type, patch_body)
            requested_rv = (patched.get("metadata") or {}).get("resourceVersion")
            if requested_rv and str(requested_rv) != current["metadata"]["resourceVersion"]:
                raise stale_conflict(kind, name)
            obj = self._check_body(kind, namespace, patched, name_from_url=name)
            result = self._commit_update(
                kind, current, obj, manager=_user_manager(field_manager), subresource=subresource, dry_run=dry_run
            )
            return WriteResult(result)

    def apply(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        config: Any,
        *,
        field_manager: str | None,
        force: bool = False,
        subresource: str = "",
        dry_run: bool = False,
    ) -> WriteResult:
        """Server-side apply; creates the object when absent."""
        if not field_manager:
            raise invalid(
                "PatchOptions.meta.k8s.io", "", [required_value("fieldManager", "is required for apply requests")],
                group="meta.k8s.io", kind="PatchOptions",
            )
        if not isinstance(config, dict):
            raise bad_request("error decoding YAML: the apply configuration must be an object")
        if not config.get("apiVersion") or not config.get("kind"):
            raise bad_request("invalid object type: " + json.dumps({k: config.get(k) for k in ("apiVersion", "kind")}))
        config = self._check_body(kind, namespace, config, name_from_url=name)
        with self._lock:
            current = self._objects.get(self._key(kind, namespace, name))
            if current is None:
                if subresource:
                    raise not_found(kind, name)
                self._admit_create(kind, namespace, name)
                now = utc_now()
                skeleton: JsonObj = {
                    "apiVersion": kind.api_version,
                    "kind": kind.kind,
                    "metadata": {"name": name, **({"namespace": namespace} if kind.namespaced else {})},
                }
                obj = apply_config(
                    skeleton, config, manager=field_manager, api_version=kind.api_version, subresource="",
                    force=force, now=now,
                )
                self._validate(kind, obj, name)
                return WriteResult(self._commit_create(kind, obj, now, dry_run), created=True)
            requested_rv = config["metadata"].get("resourceVersion")
            if requested_rv and str(requested_rv) != current["metadata"]["resourceVersion"]:
                raise stale_conflict(kind, name)
            applied = apply_config(
                current, config, manager=field_manager, api_version=kind.api_version, subresource=subresource,
                force=force, now=utc_now(),
            )
            prepared = self._prepared_update(kind, current, applied, subresource)
            prepared["metadata"]["managedFields"] = applied["metadata"].get("managedFields", [])
            return WriteResult(self._commit(kind, current, prepared, subresource, dry_run))

    def mutate(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        change: Callable[[JsonObj], None],
        *,
        field_manager: str,
        subresource: str = "",
    ) -> JsonObj | None:
        """Read-modify-write as one atomic Update (what a controller's patch amounts to). None if the object is gone."""
        with self._lock:
            current = self._objects.get(self._key(kind, namespace, name))
            if current is None:
                return None
            desired = copy.deepcopy(current)
            change(desired)
            return self._commit_update(
                kind, current, desired, manager=field_manager, subresource=subresource, dry_run=False
            )

    def delete(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        options: JsonObj | None = None,
        dry_run: bool = False,
    ) -> JsonObj:
        """DELETE: gone at once without finalizers, else marked with deletionTimestamp until they are cleared."""
        options = options or {}
        with self._lock:
            current = self._require(kind, namespace, name)
            preconditions = options.get("preconditions") or {}
            if preconditions.get("uid") and preconditions["uid"] != current["metadata"]["uid"]:
                raise stale_conflict(kind, name)
            if preconditions.get("resourceVersion") and (
                preconditions["resourceVersion"] != current["metadata"]["resourceVersion"]
            ):
                raise stale_conflict(kind, name)
            if current["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(current)
            if kind == NAMESPACES:
                return self._mark_namespace_terminating(current, dry_run)
            if not current["metadata"].get("finalizers"):
                if not dry_run:
                    self._remove(kind, current)
                return copy.deepcopy(current)
            marked = copy.deepcopy(current)
            marked["metadata"]["deletionTimestamp"] = utc_now()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            if "generation" in marked["metadata"]:
                marked["metadata"]["generation"] += 1
            return self._store(kind, current, marked, dry_run)

    def finalize_namespace(self, name: str, body: Any, dry_run: bool = False) -> JsonObj:
        """PUT /api/v1/namespaces/{name}/finalize: only spec.finalizers changes."""
        obj = self._check_body(NAMESPACES, None, body, name_from_url=name)
        with self._lock:
            current = self._require(NAMESPACES, None, name)
            desired = copy.deepcopy(current)
            desired.setdefault("spec", {})["finalizers"] = list((obj.get("spec") or {}).get("finalizers") or [])
            return self._store(NAMESPACES, current, desired, dry_run)

    # -- internals --

    def _key(self, kind: ResourceKind, namespace: str | None, name: str) -> ObjectKey:
        return (kind.qualified_resource, (namespace or "") if kind.namespaced else "", name)

    def _iter(self, kind: ResourceKind, namespace: str | None) -> Iterator[JsonObj]:
        resource = kind.qualified_resource
        for (res, ns, _), obj in sorted(self._objects.items()):
            if res == resource and (not namespace or ns == namespace):
                yield obj

    def _require(self, kind: ResourceKind, namespace: str | None, name: str) -> JsonObj:
        obj = self._objects.get(self._key(kind, namespace, name))
        if obj is None:
            raise not_found(kind, name)
        return obj

    def _check_body(self, kind: ResourceKind, namespace: str | None, body: Any, name_from_url: str | None) -> JsonObj:
        if not isinstance(body, dict):
            raise bad_request(
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json, application/yaml"
            )
        obj = copy.deepcopy(body)
        api_version = obj.get("apiVersion")
        if kind.is_custom and not obj.get("kind"):
            raise bad_request(f"Object 'Kind' is missing in '{json.dumps(body, separators=(',', ':'))}'")
        if api_version and api_version != kind.api_version:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({kind.api_version})"
            )
        if obj.get("kind") and obj["kind"] != kind.kind:
            raise bad_request(f"the kind in the data ({obj['kind']}) does not match the expected kind ({kind.kind})")
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        metadata = obj.get("metadata")
        if metadata is None:
            metadata = obj["metadata"] = {}
        if not isinstance(metadata, dict):
            raise bad_request("metadata must be an object")
        if name_from_url is not None:
            if metadata.get("name") and metadata["name"] != name_from_url:
                raise bad_request(
                    f"the name of the object ({metadata['name']}) does not match the name on the URL ({name_from_url})"
                )
            metadata["name"] = name_from_url
        if kind.namespaced:
            if metadata.get("namespace") and metadata["namespace"] != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        return obj

    def _admit_create(self, kind: ResourceKind, namespace: str | None, name: str) -> None:
        """NamespaceLifecycle admission: the namespace must exist and not be terminating."""
        if not kind.namespaced:
            return
        ns = self._objects.get(self._key(NAMESPACES, None, namespace or ""))
        if ns is None:
            raise namespace_not_found(namespace or "")
        if ns["metadata"].get("deletionTimestamp"):
            raise terminating_namespace(kind, name, namespace or "")

    def _validate(self, kind: ResourceKind, obj: JsonObj, name: str) -> None:
        errors: list[FieldError] = []
        if not name:
            errors.append(required_value("metadata.name", "name or generateName is required"))
        else:
            messages = dns1123_label_errors(name) if kind == NAMESPACES else dns1123_subdomain_errors(name)
            errors.extend(invalid_value("metadata.name", name, m) for m in messages)
        validator = SPEC_VALIDATORS.get(kind)
        if validator is not None:
            errors.extend(validator(obj))
        if errors:
            raise invalid_object(kind, name, errors)

    def _patched(self, current: JsonObj, patch_type: str, patch_body: Any) -> JsonObj:
        if patch_type == JSON_PATCH:
            if not isinstance(patch_body, list):
                raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            try:
                patched = jsonpatch.apply_patch(current, patch_body)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                message = f"the server rejected our request due to an error in our request: {error}"
                raise ApiError(422, "Invalid", message) from error
            if not isinstance(patched, dict):
                raise bad_request("the patch did not result in an object")
            return patched
        if not isinstance(patch_body, dict):
            raise bad_request("the patch body must be a JSON object")
        if patch_type == STRATEGIC_MERGE_PATCH:
            return strategic_merge_patch(current, patch_body)
        return merge_patch(current, patch_body)  # type: ignore[no-any-return]

    def _commit_create(self, kind: ResourceKind, obj: JsonObj, now: str, dry_run: bool) -> JsonObj:
        metadata = obj["metadata"]
        for server_field in ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
                             "deletionGracePeriodSeconds"):
            metadata.pop(server_field, None)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now
        if kind.tracks_generation:
            metadata["generation"] = 1
        if kind == NAMESPACES:
            metadata.setdefault("labels", {})[NAMESPACE_NAME_LABEL] = metadata["name"]
            obj["spec"] = {"finalizers": [NAMESPACE_FINALIZER]}
            obj["status"] = {"phase": "Active"}
        else:
            obj.pop("status", None)
            prepare_for_create(kind.group, kind.kind, obj)  # built-in defaulting and allocation (strategies.py)
        return self._store(kind, None, obj, dry_run)

    def _commit_update(
        self, kind: ResourceKind, current: JsonObj, desired: JsonObj, *, manager: str, subresource: str, dry_run: bool
    ) -> JsonObj:
        now = utc_now()
        desired = self._prepared_update(kind, current, desired, subresource)
        desired["metadata"]["managedFields"] = copy.deepcopy(current["metadata"].get("managedFields") or [])
        if not desired["metadata"]["managedFields"]:
            desired["metadata"].pop("managedFields")
        record_update(current, desired, manager=manager, api_version=kind.api_version, subresource=subresource, now=now)
        return self._commit(kind, current, desired, subresource, dry_run)

    def _prepared_update(self, kind: ResourceKind, current: JsonObj, desired: JsonObj, subresource: str) -> JsonObj:
        """The strategy's PrepareForUpdate: keep what this endpoint may not change."""
        if subresource == "status":
            kept = copy.deepcopy(current)
            kept.pop("status", None)
            if "status" in desired:
                kept["status"] = copy.deepcopy(desired["status"])
            return kept
        prepared = copy.deepcopy(desired)
        prepared.pop("status", None)
        if "status" in current:
            prepared["status"] = copy.deepcopy(current["status"])
        if kind == NAMESPACES:
            prepared["spec"] = copy.deepcopy(current.get("spec", {}))
        return prepared

    def _commit(
        self, kind: ResourceKind, current: JsonObj, desired: JsonObj, subresource: str, dry_run: bool
    ) -> JsonObj:
        """Server-owned metadata, generation, validation, then store (a no-op write changes nothing)."""
        metadata, old_metadata = desired["metadata"], current["metadata"]
        for server_field in ("uid", "creationTimestamp", "generation", "deletionTimestamp",
                             "deletionGracePeriodSeconds", "resourceVersion"):
            if server_field in old_metadata:
                metadata[server_field] = old_metadata[server_field]
            else:
                metadata.pop(server_field, None)
        if kind == NAMESPACES:
            metadata.setdefault("labels", {})[NAMESPACE_NAME_LABEL] = metadata["name"]
        if old_metadata.get("deletionTimestamp"):
            added = set(metadata.get("finalizers") or []) - set(old_metadata.get("finalizers") or [])
            if added:
                raise invalid_object(
                    kind, metadata["name"],
                    [forbidden_value(
                        "metadata.finalizers", "no new finalizers can be added if the object is being deleted"
                    )],
                )
        if subresource != "status":
            prepare_for_update(kind.group, kind.kind, current, desired)
        if kind.tracks_generation and subresource != "status" and _spec_part(desired) != _spec_part(current):
            metadata["generation"] = int(old_metadata.get("generation", 0)) + 1
        self._validate(kind, desired, metadata["name"])
        if not metadata.get("managedFields"):
            metadata.pop("managedFields", None)
        return self._store(kind, current, desired, dry_run)

    def _mark_namespace_terminating(self, current: JsonObj, dry_run: bool) -> JsonObj:
        marked = copy.deepcopy(current)
        marked["metadata"]["deletionTimestamp"] = utc_now()
        marked.setdefault("status", {})["phase"] = "Terminating"
        return self._store(NAMESPACES, current, marked, dry_run)

    def _store(self, kind: ResourceKind, current: JsonObj | None, desired: JsonObj, dry_run: bool) -> JsonObj:
        if current is not None and _same_object(current, desired):
            return copy.deepcopy(current)
        if dry_run:
            return copy.deepcopy(desired)
        if current is not None and _finalized(kind, desired):
            self._remove(kind, desired)
            return copy.deepcopy(desired)
        self._resource_version += 1
        desired["metadata"]["resourceVersion"] = str(self._resource_version)
        key = self._key(kind, desired["metadata"].get("namespace"), desired["metadata"]["name"])
        self._objects[key] = desired
        self._notify(ChangeEvent("ADDED" if current is None else "MODIFIED", kind, copy.deepcopy(desired),
                                 copy.deepcopy(current) if current is not None else None))
        return copy.deepcopy(desired)

    def _remove(self, kind: ResourceKind, obj: JsonObj) -> None:
        key = self._key(kind, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        previous = self._objects.pop(key, None)
        self._resource_version += 1
        self._notify(ChangeEvent("DELETED", kind, copy.deepcopy(obj), copy.deepcopy(previous)))

    def _notify(self, event: ChangeEvent) -> None:
        for listener in list(self._listeners):
            listener(event)


def _spec_part(obj: JsonObj) -> JsonObj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _without_volatile(obj: JsonObj) -> JsonObj:
    """The object minus what changes on every write anyway (resourceVersion, managedFields times)."""
    stripped = copy.deepcopy(obj)
    stripped["metadata"].pop("resourceVersion", None)
    for entry in stripped["metadata"].get("managedFields") or []:
        entry.pop("time", None)
    return stripped


def _same_object(current: JsonObj, desired: JsonObj) -> bool:
    return _without_volatile(current) == _without_volatile(desired)


def _finalized(kind: ResourceKind, obj: JsonObj) -> bool:
    """A deleted object whose finalizers are all gone leaves the store."""
    metadata = obj["metadata"]
    if not metadata.get("deletionTimestamp") or metadata.get("finalizers"):
        return False
    return not (kind == NAMESPACES and (obj.get("spec") or {}).get("finalizers"))


# ---- The namespace controller --------------------------------------------------------------------------------


class NamespaceController:
    """kube-controller-manager's namespace controller: empties a Terminating namespace, then lets it go.

    Event-driven on one thread: a namespace is swept when it starts terminating and again whenever something
    inside it changes, so objects held by finalizers are waited for without polling.
    """

    MANAGER = "kube-controller-manager"

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._terminating: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopped = False
        self._store.subscribe(self._on_change)
        for ns in self._store.list_objects(NAMESPACES)["items"]:
            if ns["metadata"].get("deletionTimestamp"):
                self._enqueue(ns["metadata"]["name"], terminating=True)
        self._thread = threading.Thread(target=self._run, name="sandbox-namespace-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._store.unsubscribe(self._on_change)
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None

    def _on_change(self, event: ChangeEvent) -> None:
        if event.kind == NAMESPACES:
            if event.type == "DELETED":
                with self._cond:
                    self._terminating.discard(event.name)
            elif event.obj["metadata"].get("deletionTimestamp"):
                self._enqueue(event.name, terminating=True)
        elif event.namespace in self._terminating:
            self._enqueue(event.namespace)

    def _enqueue(self, namespace: str, terminating: bool = False) -> None:
        with self._cond:
            if terminating:
                self._terminating.add(namespace)
            self._pending.add(namespace)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                namespace = self._pending.pop()
            try:
                self._sweep(namespace)
            except ApiError:
                self._enqueue(namespace)  # raced with another writer; the next change retries

    def _sweep(self, namespace: str) -> None:
        store = self._store
        ns = store.find(NAMESPACES, None, namespace)
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        remaining = store.objects_in_namespace(namespace)
        for kind, obj in remaining:
            if not obj["metadata"].get("deletionTimestamp"):
                try:
                    store.delete(kind, namespace, obj["metadata"]["name"], {"propagationPolicy": "Background"})
                except ApiError as error:
                    if error.code != 404:
                        raise
        remaining = store.objects_in_namespace(namespace)
        if remaining:
            store.mutate(
                NAMESPACES, None, namespace, lambda n: _set_remaining_conditions(n, remaining),
                field_manager=self.MANAGER, subresource="status",
            )
            return

        def drop_finalizer(n: JsonObj) -> None:
            n.setdefault("spec", {})["finalizers"] = [
                f for f in n["spec"].get("finalizers") or [] if f != NAMESPACE_FINALIZER
            ]

        current = store.find(NAMESPACES, None, namespace)
        if current is not None:  # through the finalize subresource, as the controller does
            drop_finalizer(current)
            store.finalize_namespace(namespace, current)


def _set_remaining_conditions(namespace: JsonObj, remaining: list[tuple[ResourceKind, JsonObj]]) -> None:
    counts: dict[str, int] = {}
    finalizer_counts: dict[str, int] = {}
    for kind, obj in remaining:
        counts[kind.qualified_resource] = counts.get(kind.qualified_resource, 0) + 1
        for finalizer in obj["metadata"].get("finalizers") or []:
            finalizer_counts[finalizer] = finalizer_counts.get(finalizer, 0) + 1
    now = utc_now()
    conditions = [
        c for c in (namespace.get("status") or {}).get("conditions") or []
        if c.get("type") not in ("NamespaceContentRemaining", "NamespaceFinalizersRemaining")
    ]
    previous = {c["type"]: c for c in (namespace.get("status") or {}).get("conditions") or []}
    wanted = [
        ("NamespaceContentRemaining", "SomeResourcesRemain", "Some resources are remaining: "
         + ", ".join(f"{r} has {n} resource instances" for r, n in sorted(counts.items()))),
        ("NamespaceFinalizersRemaining", "SomeFinalizersRemain", "Some content in the namespace has finalizers "
         "remaining: " + ", ".join(f"{f} in {n} resource instances" for f, n in sorted(finalizer_counts.items()))),
    ]
    for type_, reason, message in wanted:
        old = previous.get(type_)
        same = old is not None and old.get("reason") == reason and old.get("message") == message
        conditions.append({
            "type": type_, "status": "True",
            "lastTransitionTime": old["lastTransitionTime"] if same and old else now,
            "reason": reason, "message": message,
        })
    namespace.setdefault("status", {})["conditions"] = conditions
