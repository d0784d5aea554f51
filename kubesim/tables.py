"""Table and PartialObjectMetadata output of the sandbox API server (what `kubectl get` asks for).

Upstream:
- kubernetes `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/response.go`: `Accept:
  application/json;as=Table;v=v1;g=meta.k8s.io` turns a get, a list or each watch event into a `meta.k8s.io` Table;
  `includeObject` (default Metadata) puts a PartialObjectMetadata, the object, or nothing in each row; a list's
  resourceVersion, continue and remainingItemCount carry over; Status objects are never transformed;
  `as=PartialObjectMetadata[List]` return the metadata only (406 when asked of the wrong shape). The response
  Content-Type stays `application/json`.
- `handlers/watch.go`: a watch sends the column definitions with its first event only (NoHeaders afterwards).
- `apiextensions-apiserver/.../tableconvertor/tableconvertor.go`: CRD columns are evaluated with kubectl's JSONPath
  (missing values are empty cells, dates become ages).
- The Flux CRDs' columns, from their kubebuilder markers: fluxcd/source-controller `api/v1/gitrepository_types.go`
  (URL `.spec.url`, Age, Ready, Status) and fluxcd/kustomize-controller `api/v1/kustomization_types.go`
  (Age, Ready, Status), as in `config/crd/bases/*.yaml`.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

from kubesim.printers import (
    BUILTIN_COLUMNS,
    DEFAULT_BUILTIN,
    DEFAULT_CUSTOM,
    NAME,
    Column,
    age_of,
)
from kubesim.store import ApiError, JsonObj, ResourceKind

META_GROUP = "meta.k8s.io"
INCLUDE_OBJECT = ("Metadata", "None", "Object")


@dataclass(frozen=True)
class PrinterColumn:
    """A CRD's additionalPrinterColumns entry."""

    name: str
    type: str
    json_path: str
    priority: int = 0
    description: str = ""
    format: str = ""


READY = '.status.conditions[?(@.type=="Ready")].status'
READY_MESSAGE = '.status.conditions[?(@.type=="Ready")].message'
CRD_PRINTER_COLUMNS: dict[tuple[str, str], tuple[PrinterColumn, ...]] = {
    ("source.toolkit.fluxcd.io", "GitRepository"): (
        PrinterColumn("URL", "string", ".spec.url"),
        PrinterColumn("Age", "date", ".metadata.creationTimestamp"),
        PrinterColumn("Ready", "string", READY),
        PrinterColumn("Status", "string", READY_MESSAGE),
    ),
    ("kustomize.toolkit.fluxcd.io", "Kustomization"): (
        PrinterColumn("Age", "date", ".metadata.creationTimestamp"),
        PrinterColumn("Ready", "string", READY),
        PrinterColumn("Status", "string", READY_MESSAGE),
    ),
}


# ---- JSONPath (the subset CRD columns use: fields, [n], [*], [?(@.a.b=="x")], ['key']) ----------------------------

_SEGMENT = re.compile(
    r"""\.(?P<field>(?:\\.|[^.\[\\])+)"""
    r"""|\[\?\(@(?P<fpath>(?:\.[\w-]+)+)\s*(?P<op>==|!=)\s*(?P<lit>"[^"]*"|'[^']*'|[\w.+-]+)\)\]"""
    r"""|\[(?P<index>-?\d+|\*)\]"""
    r"""|\[(?P<quoted>'[^']*'|"[^"]*")\]"""
)


def _parse_path(path: str) -> list[re.Match[str]]:
    path = path.strip().strip("{}")
    segments, position = [], 0
    while position < len(path):
        match = _SEGMENT.match(path, position)
        if match is None:
            raise ValueError(f"unrecognized column definition {path!r}")
        segments.append(match)
        position = match.end()
    return segments


def _literal(raw: str) -> Any:
    if raw[:1] in "'\"":
        return raw[1:-1]
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _descend(value: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def jsonpath_find(obj: Any, path: str) -> list[Any]:
    """The values `path` selects in `obj`, missing keys allowed (AllowMissingKeys)."""
    values = [obj]
    for segment in _parse_path(path):
        found: list[Any] = []
        for value in values:
            if segment["field"] is not None:
                key = segment["field"].replace("\\.", ".")
                if isinstance(value, dict) and key in value:
                    found.append(value[key])
            elif segment["quoted"] is not None:
                key = segment["quoted"][1:-1]
                if isinstance(value, dict) and key in value:
                    found.append(value[key])
            elif segment["index"] is not None:
                if segment["index"] == "*":
                    found.extend(value if isinstance(value, list) else
                                 list(value.values()) if isinstance(value, dict) else [])
                elif isinstance(value, list):
                    index = int(segment["index"])
                    if -len(value) <= index < len(value):
                        found.append(value[index])
            elif isinstance(value, list):
                keys, wanted = segment["fpath"].lstrip(".").split("."), _literal(segment["lit"])
                equal = segment["op"] == "=="
                found.extend(item for item in value if (_descend(item, keys) == wanted) == equal)
        values = found
    return values


def _text(value: Any) -> str:
    """How kubectl's JSONPath prints a value."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _typed_cell(column_type: str, value: Any) -> Any:
    """tableconvertor cellForJSONValue."""
    if value is None:
        return None
    if column_type == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if column_type == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if column_type == "boolean" and isinstance(value, bool):
        return value
    if column_type == "date" and isinstance(value, str):
        age = age_of(value)
        return "<invalid>" if age == "<unknown>" else age
    return None


def crd_column(spec: PrinterColumn) -> Column:
    _parse_path(spec.json_path)  # fail at import on a path this evaluator cannot read

    def cell(obj: JsonObj) -> Any:
        found = jsonpath_find(obj, spec.json_path)
        if not found:
            return None
        return _text(found[0]) if spec.type == "string" else _typed_cell(spec.type, found[0])

    description = spec.description or f"Custom resource definition column (in JSONPath format): {spec.json_path}"
    return Column(spec.name, spec.type, description, cell, spec.priority, spec.format)


CRD_COLUMNS = {key: (NAME, *(crd_column(c) for c in columns)) for key, columns in CRD_PRINTER_COLUMNS.items()}


def columns_for(kind: ResourceKind) -> tuple[Column, ...]:
    key = (kind.group, kind.kind)
    if key in CRD_COLUMNS:
        return CRD_COLUMNS[key]
    if key in BUILTIN_COLUMNS:
        return BUILTIN_COLUMNS[key]
    return DEFAULT_CUSTOM if kind.is_custom else DEFAULT_BUILTIN


# ---- Content negotiation -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """The shape the client asked for: the object itself (`as_` empty), a Table, or PartialObjectMetadata[List]."""

    as_: str = ""
    version: str = "v1"
    include_object: str = "Metadata"

    @property
    def api_version(self) -> str:
        return f"{META_GROUP}/{self.version}"


PLAIN = Output()


def negotiate(accept: str | None, query: dict[str, str]) -> Output:
    """The first media range of `Accept` (by q, then order) the sandbox can produce; plain JSON when none is."""
    ranges: list[tuple[float, int, str, dict[str, str]]] = []
    for position, item in enumerate((accept or "").split(",")):
        media, *raw_params = (part.strip() for part in item.split(";"))
        params = dict(p.split("=", 1) for p in raw_params if "=" in p)
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 1.0
        ranges.append((-quality, position, media.lower(), params))
    for _, _, media, params in sorted(ranges):
        if media not in ("application/json", "application/*", "*/*"):
            continue
        target = params.get("as", "")
        if not target:
            return PLAIN
        if params.get("g") != META_GROUP or params.get("v") not in ("v1", "v1beta1"):
            continue
        if target == "Table":
            include = query.get("includeObject") or "Metadata"
            if include not in INCLUDE_OBJECT:
                raise ApiError(400, "BadRequest", "Unable to convert to Table as requested: includeObject: "
                               f'Unsupported value: "{include}": supported values: "Metadata", "None", "Object"')
            return Output("Table", params["v"], include)
        if target in ("PartialObjectMetadata", "PartialObjectMetadataList"):
            return Output(target, params["v"])
    return PLAIN


# ---- Conversion ----------------------------------------------------------------------------------------------


def partial_metadata(obj: JsonObj, output: Output) -> JsonObj:
    """meta.AsPartialObjectMetadata: the whole ObjectMeta, typed PartialObjectMetadata."""
    return {"kind": "PartialObjectMetadata", "apiVersion": output.api_version,
            "metadata": copy.deepcopy(obj.get("metadata") or {})}


def _row(obj: JsonObj, columns: tuple[Column, ...], output: Output) -> JsonObj:
    row: JsonObj = {"cells": [column.cell(obj) for column in columns]}
    if output.include_object == "Object":
        row["object"] = obj
    elif output.include_object == "Metadata":
        row["object"] = partial_metadata(obj, output)
    else:
        row["object"] = None
    return row


def to_table(kind: ResourceKind, payload: JsonObj, output: Output, *, no_headers: bool = False) -> JsonObj:
    """A Table of one object or of a list (`items`), with the list's metadata."""
    columns = columns_for(kind)
    metadata = payload.get("metadata") or {}
    is_list = "items" in payload
    items = payload["items"] if is_list else [payload]
    table_meta: JsonObj = {"resourceVersion": str(metadata.get("resourceVersion", ""))}
    if is_list:
        table_meta.update({k: metadata[k] for k in ("continue", "remainingItemCount") if k in metadata})
    return {
        "kind": "Table",
        "apiVersion": output.api_version,
        "metadata": table_meta,
        "columnDefinitions": None if no_headers else [column.definition() for column in columns],
        "rows": [_row(item, columns, output) for item in items],
    }


def not_acceptable(message: str) -> ApiError:
    return ApiError(406, "NotAcceptable", message)


def transform(kind: ResourceKind, payload: JsonObj, output: Output) -> JsonObj:
    """A get's or a list's response in the negotiated shape."""
    if output.as_ == "" or payload.get("kind") == "Status":
        return payload
    if output.as_ == "Table":
        return to_table(kind, payload, output)
    is_list = "items" in payload
    if output.as_ == "PartialObjectMetadata":
        if is_list:
            raise not_acceptable("you requested PartialObjectMetadata, but the requested object is a list "
                                 "(*unstructured.UnstructuredList)")
        return partial_metadata(payload, output)
    if not is_list:
        raise not_acceptable("you requested PartialObjectMetadataList, but the requested object is not a list "
                             "(*unstructured.Unstructured)")
    return {"kind": "PartialObjectMetadataList", "apiVersion": output.api_version,
            "metadata": copy.deepcopy(payload.get("metadata") or {}),
            "items": [partial_metadata(item, output) for item in payload["items"]]}


class WatchTransformer:
    """Each watch event's object in the negotiated shape; Table headers go with the first event only."""

    def __init__(self, kind: ResourceKind, output: Output) -> None:
        self._kind = kind
        self._output = output
        self._headers_sent = False

    def __call__(self, obj: JsonObj) -> JsonObj:
        output = self._output
        if output.as_ == "" or obj.get("kind") == "Status":
            return obj
        if output.as_ == "Table":
            table = to_table(self._kind, obj, output, no_headers=self._headers_sent)
            self._headers_sent = True
            return table
        if output.as_ == "PartialObjectMetadata":
            return partial_metadata(obj, output)
        return obj  # PartialObjectMetadataList of a single object fails upstream too and is sent untransformed
