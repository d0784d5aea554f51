"""Server-side printing columns (what `kubectl get` shows), keyed by (group, kind), for the sandbox's Table output.

Upstream:
- kubernetes `pkg/printers/internalversion/printers.go` AddHandlers: the column definitions and cells of the built-in
  kinds (the apiserver prints them "wide": priority-1 columns too, kubectl hides them unless `-o wide`).
- `staging/src/k8s.io/apiserver/pkg/registry/rest/table.go` defaultTableConvertor: built-ins without a printer
  (Role, ClusterRole) get Name and "Created At" (RFC 3339).
- `staging/src/k8s.io/apiextensions-apiserver/pkg/registry/customresource/tableconvertor/tableconvertor.go`: custom
  resources get Name plus their CRD's additionalPrinterColumns, or Age when the CRD defines none.
- `k8s.io/apimachinery/pkg/util/duration` HumanDuration for the Age cells.
Column descriptions quote upstream where it spells them out and give the first sentence of the field's API doc where
upstream reads it from the Swagger docs (clients never show descriptions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

JsonObj = dict[str, Any]
Cell = Callable[[JsonObj], Any]
RBAC = "rbac.authorization.k8s.io"

NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although some resources may "
    "allow a client to request the generation of an appropriate name automatically. Name is primarily intended for "
    "creation idempotence and configuration definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
AGE_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not "
    "guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is "
    "represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str
    cell: Cell
    priority: int = 0
    format: str = ""

    def definition(self) -> JsonObj:
        """A metav1.TableColumnDefinition (every field is serialized, as Go does)."""
        return {"name": self.name, "type": self.type, "format": self.format, "description": self.description,
                "priority": self.priority}


def human_duration(seconds: float) -> str:
    """apimachinery duration.HumanDuration."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 60 * 2:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def age_of(timestamp: Any) -> str:
    """translateTimestampSince / ConvertToHumanReadableDateType."""
    when = parse_time(timestamp)
    if when is None:
        return "<unknown>"
    return human_duration((datetime.now(UTC) - when).total_seconds())


def _meta(obj: JsonObj) -> JsonObj:
    return obj.get("metadata") or {}


def _spec(obj: JsonObj) -> JsonObj:
    return obj.get("spec") or {}


def _status(obj: JsonObj) -> JsonObj:
    return obj.get("status") or {}


NAME = Column("Name", "string", NAME_DESCRIPTION, lambda o: _meta(o).get("name", ""), format="name")
AGE = Column("Age", "string", AGE_DESCRIPTION, lambda o: age_of(_meta(o).get("creationTimestamp")))


def _created_at(obj: JsonObj) -> str:
    when = parse_time(_meta(obj).get("creationTimestamp"))
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else "0001-01-01T00:00:00Z"


# rest.NewDefaultTableConvertor: built-ins without a printer.
DEFAULT_BUILTIN = (NAME, Column("Created At", "date", AGE_DESCRIPTION, _created_at))
# apiextensions: a CRD without additionalPrinterColumns gets an Age column (type date).
DEFAULT_CUSTOM = (NAME, Column("Age", "date", AGE_DESCRIPTION, lambda o: age_of(_meta(o).get("creationTimestamp"))))


def format_labels(labels: Any) -> str:
    """labels.FormatLabels: sorted `k=v` pairs, `<none>` when empty."""
    if not isinstance(labels, dict) or not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def label_selector_string(selector: Any) -> str:
    """metav1.LabelSelectorAsSelector(...).String(): requirements sorted by key."""
    if not isinstance(selector, dict):
        return ""
    parts: list[tuple[str, str]] = [(k, f"{k}={v}") for k, v in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key", ""), expression.get("operator", "")
        values = ",".join(sorted(expression.get("values") or []))
        text = {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": key,
                "DoesNotExist": f"!{key}"}.get(operator, "<invalid>")
        parts.append((key, text))
    return ",".join(text for _, text in sorted(parts))


def _containers(obj: JsonObj) -> list[JsonObj]:
    return list(((_spec(obj).get("template") or {}).get("spec") or {}).get("containers") or [])


def _deployment_ready(obj: JsonObj) -> str:
    desired = _spec(obj).get("replicas", 1)  # apps/v1 SetDefaults_Deployment: replicas 1
    return f"{int(_status(obj).get('readyReplicas') or 0)}/{int(desired if desired is not None else 1)}"


DEPLOYMENT = (
    NAME,
    Column("Ready", "string", "Number of the pod with ready state", _deployment_ready),
    Column("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment that have the "
           "desired template spec.", lambda o: int(_status(o).get("updatedReplicas") or 0)),
    Column("Available", "string", "Total number of available pods (ready for at least minReadySeconds) targeted by "
           "this deployment.", lambda o: int(_status(o).get("availableReplicas") or 0)),
    AGE,
    Column("Containers", "string", "Names of each container in the template.",
           lambda o: ",".join(c.get("name", "") for c in _containers(o)), priority=1),
    Column("Images", "string", "Images referenced by each container in the template.",
           lambda o: ",".join(c.get("image", "") for c in _containers(o)), priority=1),
    Column("Selector", "string", "Label selector for pods.",
           lambda o: label_selector_string(_spec(o).get("selector")), priority=1),
)


def _service_type(obj: JsonObj) -> str:
    return str(_spec(obj).get("type") or "ClusterIP")  # SetDefaults_Service


def _cluster_ip(obj: JsonObj) -> str:
    spec = _spec(obj)
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return str(ips[0]) if ips else "<none>"


def _external_ip(obj: JsonObj) -> str:
    """getServiceExternalIP (wide)."""
    spec, kind = _spec(obj), _service_type(obj)
    external = [str(ip) for ip in spec.get("externalIPs") or []]
    if kind in ("ClusterIP", "NodePort"):
        return ",".join(external) if external else "<none>"
    if kind == "LoadBalancer":
        ingress = ((_status(obj).get("loadBalancer") or {}).get("ingress")) or []
        addresses = [str(i.get("ip") or i.get("hostname")) for i in ingress if i.get("ip") or i.get("hostname")]
        return ",".join(addresses + external) if addresses or external else "<pending>"
    if kind == "ExternalName":
        return str(spec.get("externalName") or "")
    return "<unknown>"


def _ports(obj: JsonObj) -> str:
    """makePortString."""
    pieces = []
    for port in _spec(obj).get("ports") or []:
        protocol = port.get("protocol") or "TCP"
        node_port = port.get("nodePort")
        pieces.append(f"{port.get('port')}:{node_port}/{protocol}" if node_port else f"{port.get('port')}/{protocol}")
    return ",".join(pieces) or "<none>"


SERVICE = (
    NAME,
    Column("Type", "string", "type determines how the Service is exposed.", _service_type),
    Column("Cluster-IP", "string", "clusterIP is the IP address of the service and is usually assigned randomly.",
           _cluster_ip),
    Column("External-IP", "string", "externalIPs is a list of IP addresses for which nodes in the cluster will "
           "also accept traffic for this service.", _external_ip),
    Column("Port(s)", "string", "The list of ports that are exposed by this service.", _ports),
    AGE,
    Column("Selector", "string", "Route service traffic to pods with label keys and values matching this selector.",
           lambda o: format_labels(_spec(o).get("selector")), priority=1),
)

NAMESPACE = (NAME, Column("Status", "string", "The status of the namespace", lambda o: _status(o).get("phase", "")),
             AGE)
CONFIG_MAP = (
    NAME,
    Column("Data", "string", "Data contains the configuration data.",
           lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
    AGE,
)
SECRET = (
    NAME,
    Column("Type", "string", "Used to facilitate programmatic handling of secret data.",
           lambda o: str(o.get("type") or "Opaque")),  # the Secret strategy defaults the type to Opaque
    # stringData is merged into data on write; count both so an object stored as sent prints the same
    Column("Data", "string", "Data contains the secret data.",
           lambda o: len(set(o.get("data") or {}) | set(o.get("stringData") or {}))),
    AGE,
)
SERVICE_ACCOUNT = (
    NAME,
    Column("Secrets", "string", "Secrets is a list of the secrets in the same namespace that pods running using "
           "this ServiceAccount are allowed to use.", lambda o: len(o.get("secrets") or [])),
    AGE,
)

ACCESS_MODES = (("ReadWriteOnce", "RWO"), ("ReadOnlyMany", "ROX"), ("ReadWriteMany", "RWX"),
                ("ReadWriteOncePod", "RWOP"))


def _access_modes(modes: Any) -> str:
    """helper.GetAccessModesAsString."""
    present = set(modes or [])
    return ",".join(short for mode, short in ACCESS_MODES if mode in present)


def _pvc_bound(obj: JsonObj) -> bool:
    return bool(_spec(obj).get("volumeName"))


def _pvc_phase(obj: JsonObj) -> str:
    if _meta(obj).get("deletionTimestamp"):
        return "Terminating"
    return str(_status(obj).get("phase") or "Pending")  # the PVC strategy starts it Pending


def _pvc_class(obj: JsonObj) -> str:
    """GetPersistentVolumeClaimClass: the beta annotation wins over spec.storageClassName."""
    annotations = _meta(obj).get("annotations") or {}
    if "volume.beta.kubernetes.io/storage-class" in annotations:
        return str(annotations["volume.beta.kubernetes.io/storage-class"])
    return str(_spec(obj).get("storageClassName") or "")


PERSISTENT_VOLUME_CLAIM = (
    NAME,
    Column("Status", "string", "phase represents the current phase of PersistentVolumeClaim.", _pvc_phase),
    Column("Volume", "string", "volumeName is the binding reference to the PersistentVolume backing this claim.",
           lambda o: str(_spec(o).get("volumeName") or "")),
    Column("Capacity", "string", "capacity represents the actual resources of the underlying volume.",
           lambda o: str((_status(o).get("capacity") or {}).get("storage", "")) if _pvc_bound(o) else ""),
    Column("Access Modes", "string", "accessModes contains the actual access modes the volume backing the PVC has.",
           lambda o: _access_modes(_status(o).get("accessModes")) if _pvc_bound(o) else ""),
    Column("StorageClass", "string", "StorageClass of the pvc", _pvc_class),
    Column("VolumeAttributesClass", "string", "VolumeAttributesClass of the pvc",
           lambda o: str(_spec(o).get("volumeAttributesClassName") or "<unset>")),
    AGE,
    Column("VolumeMode", "string", "volumeMode defines what type of volume is required by the claim.",
           lambda o: str(_spec(o).get("volumeMode") or "<unset>"), priority=1),
)


def _subjects(obj: JsonObj, kind: str) -> str:
    """rbac.SubjectsStrings, one kind of subject joined with ", "."""
    names = []
    for subject in obj.get("subjects") or []:
        if subject.get("kind") != kind:
            continue
        if kind == "ServiceAccount":
            names.append(f"{subject.get('namespace', '')}/{subject.get('name', '')}")
        else:
            names.append(str(subject.get("name", "")))
    return ", ".join(names)


def _binding(scope: str) -> tuple[Column, ...]:
    role_ref: Cell = lambda o: f"{(o.get('roleRef') or {}).get('kind', '')}/{(o.get('roleRef') or {}).get('name', '')}"  # noqa: E731
    return (
        NAME,
        Column("Role", "string", "RoleRef can reference a Role in the current namespace or a ClusterRole in the "
               "global namespace.", role_ref),
        AGE,
        Column("Users", "string", f"Users in the {scope}", lambda o: _subjects(o, "User"), priority=1),
        Column("Groups", "string", f"Groups in the {scope}", lambda o: _subjects(o, "Group"), priority=1),
        Column("ServiceAccounts", "string", f"ServiceAccounts in the {scope}",
               lambda o: _subjects(o, "ServiceAccount"), priority=1),
    )


BUILTIN_COLUMNS: dict[tuple[str, str], tuple[Column, ...]] = {
    ("", "Namespace"): NAMESPACE,
    ("", "ConfigMap"): CONFIG_MAP,
    ("", "Secret"): SECRET,
    ("", "Service"): SERVICE,
    ("", "ServiceAccount"): SERVICE_ACCOUNT,
    ("", "PersistentVolumeClaim"): PERSISTENT_VOLUME_CLAIM,
    ("apps", "Deployment"): DEPLOYMENT,
    (RBAC, "RoleBinding"): _binding("roleBinding"),
    (RBAC, "ClusterRoleBinding"): _binding("clusterRoleBinding"),
}
