"""kustomize-controller's apply, prune, inventory and health-check steps against the sandbox store.

fluxcd/pkg `ssa` reduced: `ResourceManager.ApplyAllStaged` (manager_apply.go: Namespaces and CRDs first; each stage is
dry-run first, every object server-side applied with force by the field manager `kustomize-controller`, only when it
drifted; the change set says created/configured/unchanged), `DryRunErr.Error` (errors.go), `Delete` (manager_delete.go:
only objects still labelled as this Kustomization's, not `prune: disabled`), the sort order (sort.go) and
`WaitForSetWithContext`'s messages (manager_wait.go). The inventory is kustomize-controller's
`internal/inventory/inventory.go`: entries `{id: <namespace>_<name>_<group>_<kind>, v: <version>}` in change-set order.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterable
from dataclasses import dataclass

from kubesim import kstatus
from kubesim.store import ApiError, JsonObj, ObjectStore, ResourceKind

OWNER_GROUP = "kustomize.toolkit.fluxcd.io"
PRUNE_ANNOTATION = f"{OWNER_GROUP}/prune"  # "disabled": never deleted by a prune
RECONCILE_ANNOTATION = f"{OWNER_GROUP}/reconcile"  # "disabled": never applied (ssa ExclusionSelector)
SSA_ANNOTATION = f"{OWNER_GROUP}/ssa"  # "Ignore": never applied; "IfNotPresent": only created
CREATED, CONFIGURED, UNCHANGED, DELETED, SKIPPED = "created", "configured", "unchanged", "deleted", "skipped"
# sort.go kind2index: an order that helps kube (a Namespace before its content, a Service before its workload).
_ORDER_FIRST = ("CustomResourceDefinition", "Namespace", "ResourceQuota", "StorageClass", "ServiceAccount",
                "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap", "Secret",
                "Service", "LimitRange", "PriorityClass", "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget")
_ORDER_LAST = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
_KIND_INDEX = {**{k: i - len(_ORDER_FIRST) for i, k in enumerate(_ORDER_FIRST)},
               **{k: i + 1 for i, k in enumerate(_ORDER_LAST)}}


@dataclass(frozen=True)
class ObjMeta:
    """cli-utils object.ObjMetadata plus the version the inventory records."""

    namespace: str
    name: str
    group: str
    kind: str
    version: str = "v1"

    @classmethod
    def of(cls, obj: JsonObj, namespaced: bool = True) -> ObjMeta:
        group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
        metadata = obj.get("metadata") or {}
        namespace = str(metadata.get("namespace") or "") if namespaced else ""
        return cls(namespace, str(metadata.get("name", "")), group, str(obj.get("kind", "")), version)

    @classmethod
    def parse(cls, object_id: str, version: str) -> ObjMeta:
        """object.ParseObjMetadata: `<namespace>_<name>_<group>_<kind>`, a name's colons written `__`."""
        parts = object_id.split("_")
        if len(parts) < 4:
            raise ValueError(f"unexpected object id {object_id!r}")
        return cls(parts[0], "_".join(parts[1:-2]).replace("__", ":"), parts[-2], parts[-1], version)

    @property
    def id(self) -> str:
        return f"{self.namespace}_{self.name.replace(':', '__')}_{self.group}_{self.kind}"

    @property
    def subject(self) -> str:
        """utils.FmtObjMetadata: `<kind>/<namespace>/<name>`, the namespace left out for cluster-scoped objects."""
        return "/".join(part for part in (self.kind, self.namespace, self.name) if part)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


@dataclass(frozen=True)
class Change:
    meta: ObjMeta
    action: str

    def __str__(self) -> str:
        return f"{self.meta.subject} {self.action}"  # ChangeSetEntry.String


class ApplyError(Exception):
    """An apply or prune that failed; `changes` are what happened before it (a partial apply)."""

    def __init__(self, message: str, changes: list[Change] | None = None) -> None:
        super().__init__(message)
        self.changes = changes or []


def sort_key(obj: JsonObj) -> tuple[int, str, str, str, str]:
    """sort.go less(): kind order, then group and kind, then namespace and name."""
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    kind, metadata = str(obj.get("kind", "")), obj.get("metadata") or {}
    return (_KIND_INDEX.get(kind, 0), group, kind, str(metadata.get("namespace") or ""), str(metadata.get("name")))


def inventory_entries(changes: Iterable[Change]) -> list[JsonObj]:
    """inventory.AddChangeSet: every change-set entry, in order."""
    entries: dict[str, JsonObj] = {}
    for change in changes:
        entries.setdefault(change.meta.id, {"id": change.meta.id, "v": change.meta.version})
    return list(entries.values())


def inventory_metas(inventory: JsonObj | None) -> list[ObjMeta]:
    return [ObjMeta.parse(str(e["id"]), str(e.get("v") or "v1")) for e in (inventory or {}).get("entries") or []]


def stale(old: list[ObjMeta], new: list[ObjMeta]) -> list[ObjMeta]:
    """inventory.Diff: what the old inventory has and the new one does not, in apply order."""
    kept = {meta.id for meta in new}
    gone = [meta for meta in old if meta.id not in kept]
    return sorted(gone, key=lambda m: sort_key({"apiVersion": m.api_version, "kind": m.kind,
                                                "metadata": {"namespace": m.namespace, "name": m.name}}))


def normalize(obj: JsonObj) -> None:
    """ssa normalize (SetNativeKindsDefaults), the part that changes what is applied: Secret stringData -> data."""
    if obj.get("apiVersion") == "v1" and obj.get("kind") == "Secret" and isinstance(obj.get("stringData"), dict):
        data = obj.setdefault("data", {})
        for key, value in obj.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()


class ResourceManager:
    """ssa.ResourceManager for one field manager against the sandbox store (thread-safe: the store is)."""

    def __init__(self, store: ObjectStore, field_manager: str) -> None:
        self.store = store
        self.field_manager = field_manager

    def kind_of(self, group: str, version: str, kind: str) -> ResourceKind | None:
        return next((k for k in self.store.registry.all() if (k.group, k.version, k.kind) == (group, version, kind)),
                    None)

    @staticmethod
    def set_owner_labels(objects: list[JsonObj], name: str, namespace: str) -> None:
        """manager.go SetOwnerLabels: `<group>/name` and `<group>/namespace` name the Kustomization."""
        for obj in objects:
            labels = obj.setdefault("metadata", {}).setdefault("labels", {})
            labels[f"{OWNER_GROUP}/name"], labels[f"{OWNER_GROUP}/namespace"] = name, namespace

    def apply_all_staged(self, objects: list[JsonObj], *, dry_run: bool = False) -> list[Change]:
        """ApplyAllStaged: Namespaces and CRDs, then everything else; each stage dry-run as a whole, then applied."""
        ordered = sorted((copy.deepcopy(o) for o in objects), key=sort_key)
        for obj in ordered:
            normalize(obj)
        stage_one = [o.get("kind") in ("Namespace", "CustomResourceDefinition") for o in ordered]
        changes = self._apply_all([o for o, first in zip(ordered, stage_one, strict=True) if first], dry_run)
        rest = [o for o, first in zip(ordered, stage_one, strict=True) if not first]
        return changes + self._apply_all(rest, dry_run, changes)

    def _apply_all(self, objects: list[JsonObj], dry_run: bool, before: list[Change] | None = None) -> list[Change]:
        """ApplyAll: dry-run every object (the first failure fails the stage), then apply those that drifted."""
        planned: list[tuple[ResourceKind, ObjMeta, JsonObj, str]] = []
        for obj in objects:
            kind, meta = self._resolve(obj, before)
            existing = self.store.find(kind, meta.namespace or None, meta.name)
            annotations = (obj.get("metadata") or {}).get("annotations") or {}
            if annotations.get(RECONCILE_ANNOTATION) == "disabled" or annotations.get(SSA_ANNOTATION) == "Ignore" or (
                annotations.get(SSA_ANNOTATION) == "IfNotPresent" and existing is not None
            ):
                planned.append((kind, meta, obj, SKIPPED))
                continue
            try:
                result = self.store.apply(kind, meta.namespace or None, meta.name, obj,
                                          field_manager=self.field_manager, force=True, dry_run=True).obj
            except ApiError as error:
                raise ApplyError(_dry_run_error(meta, error), before) from error
            action = CREATED if existing is None else CONFIGURED if _drifted(existing, result) else UNCHANGED
            planned.append((kind, meta, obj, action))
        changes: list[Change] = []
        for kind, meta, obj, action in planned:
            if action in (CREATED, CONFIGURED) and not dry_run:
                try:
                    self.store.apply(kind, meta.namespace or None, meta.name, obj,
                                     field_manager=self.field_manager, force=True)
                except ApiError as error:
                    raise ApplyError(f"{meta.subject} apply failed: {error.message}", [*(before or []), *changes]) \
                        from error
            changes.append(Change(meta, action))
        return changes

    def _resolve(self, obj: JsonObj, before: list[Change] | None) -> tuple[ResourceKind, ObjMeta]:
        group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
        kind = self.kind_of(group, version, str(obj.get("kind", "")))
        meta = ObjMeta.of(obj, namespaced=kind is None or kind.namespaced)
        if kind is None:
            # The RESTMapper's error, as DryRunErr words one that is not an API status.
            message = f'no matches for kind "{meta.kind}" in version "{meta.api_version}"'
            raise ApplyError(f"{meta.subject} dry-run failed: {message}", before)
        if kind.namespaced and not meta.namespace:
            # errors.go DryRunErr: a namespaced object without a namespace is a 404 for the cluster-scoped path.
            raise ApplyError(f"{meta.subject} namespace not specified: the server could not find the requested "
                             "resource", before)
        return kind, meta

    def delete(self, metas: list[ObjMeta], owner_name: str, owner_namespace: str) -> list[Change]:
        """manager_delete.go DeleteAll with kustomize-controller's options: only objects still labelled with this
        Kustomization (Inclusions) and not `prune: disabled` (Exclusions) go; one already gone counts as deleted."""
        changes: list[Change] = []
        for meta in metas:
            kind = self.kind_of(meta.group, meta.version, meta.kind)
            existing = self.store.find(kind, meta.namespace or None, meta.name) if kind else None
            if kind is None or existing is None:
                changes.append(Change(meta, DELETED))
                continue
            labels = existing["metadata"].get("labels") or {}
            annotations = existing["metadata"].get("annotations") or {}
            if (labels.get(f"{OWNER_GROUP}/name"), labels.get(f"{OWNER_GROUP}/namespace")) != (
                owner_name, owner_namespace
            ) or annotations.get(PRUNE_ANNOTATION) == "disabled":
                changes.append(Change(meta, SKIPPED))
                continue
            try:
                self.store.delete(kind, meta.namespace or None, meta.name, {"propagationPolicy": "Background"})
            except ApiError as error:
                if error.code != 404:
                    raise ApplyError(f"{meta.subject} delete failed: {error.message}", changes) from error
            changes.append(Change(meta, DELETED))
        return changes

    def status(self, meta: ObjMeta) -> kstatus.Result:
        kind = self.kind_of(meta.group, meta.version, meta.kind)
        return kstatus.compute(self.store.find(kind, meta.namespace or None, meta.name) if kind else None)


def wait_error(results: list[tuple[ObjMeta, kstatus.Result]], timed_out: bool) -> str | None:
    """manager_wait.go WaitForSetWithContext's error once the wait ends: None when every object is Current; at the
    deadline, every object not Current; before it, only when all are Current or Failed ("failed early")."""
    statuses = {result.status for _, result in results}
    if statuses <= {kstatus.CURRENT}:
        return None
    if timed_out:
        failing = [(meta, result) for meta, result in results if result.status != kstatus.CURRENT]
        prefix = "timeout waiting for"
    elif statuses <= {kstatus.CURRENT, kstatus.FAILED}:
        failing = [(meta, result) for meta, result in results if result.status == kstatus.FAILED]
        prefix = "failed early due to stalled resources"
    else:
        return None
    listed = ", ".join(f"{meta.subject} status: '{result.status}'" for meta, result in failing)
    return f"{prefix}: [{listed}]"


def _dry_run_error(meta: ObjMeta, error: ApiError) -> str:
    """errors.go DryRunErr.Error."""
    if error.code == 404:
        return f"{meta.subject} not found: {error.message}"
    causes = (error.details or {}).get("causes") or []
    reason = "FieldManagerConflict" if any(c.get("reason") == "FieldManagerConflict" for c in causes) else error.reason
    return f"{meta.subject} dry-run failed ({reason}): {error.message}" if reason else \
        f"{meta.subject} dry-run failed: {error.message}"


def _comparable(obj: JsonObj) -> JsonObj:
    """What drift detection compares: everything but status and server-managed metadata."""
    metadata = obj.get("metadata") or {}
    view = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    view["metadata"] = {k: metadata.get(k) for k in ("labels", "annotations", "finalizers", "ownerReferences")}
    return view


def _drifted(existing: JsonObj, dry_run: JsonObj) -> bool:
    """manager_apply.go hasDrifted: the dry-run result differs from the object in the cluster."""
    return _comparable(existing) != _comparable(dry_run)
