"""Lists for the sandbox API server: `limit`/`continue` paging over one consistent snapshot, `resourceVersionMatch`.

Upstream (kubernetes `staging/src/k8s.io/apiserver/pkg/storage`):
- `continue.go` EncodeContinue/DecodeContinue: the token is base64url (no padding) of
  `{"v":"meta.k8s.io/v1","rv":<revision>,"start":"<key after the prefix>\\u0000"}`; a bad token is 400
  "invalid continue token", and a continue with a resourceVersion is 400 as well (ValidateListOptions).
- `etcd3/store.go` GetList: every page is read at the first page's revision, so a paged list is consistent;
  `remainingItemCount` is set only when no selector narrows the list (PrepareContinueToken, `pred.Empty()`); keys are
  ordered as etcd orders them (`<namespace>/<name>` across namespaces); a compacted revision answers 410 Expired with
  a token at rv -1 in `metadata.continue` that continues without consistency (handleCompactedErrorForPaging).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from kubesim.store import ApiError, JsonObj, ObjectStore
from kubesim.watch import (
    FRESHNESS_WAIT,
    EventHistory,
    Selection,
    object_key,
    parse_resource_version,
    too_large,
)

CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new list "
    "without the continue parameter, or use the continue token in this response to retrieve the remainder of the "
    "results. Continuing with the provided token results in an inconsistent list - objects that were created, "
    "modified, or deleted between the time the first chunk was returned and now may show up in the list."
)
LIST_EXPIRED = "The resourceVersion for the provided list is too old."
TOKEN_VERSION = "meta.k8s.io/v1"


class ExpiredContinue(ApiError):
    """410 Expired whose Status carries the token that continues the list inconsistently."""

    def __init__(self, token: str) -> None:
        super().__init__(410, "Expired", CONTINUE_EXPIRED)
        self.continue_token = token

    def to_status(self) -> JsonObj:
        status = super().to_status()
        status["metadata"] = {"continue": self.continue_token}
        return status


def encode_continue(start: str, rv: int) -> str:
    raw = json.dumps({"v": TOKEN_VERSION, "rv": rv, "start": start}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_continue(token: str) -> tuple[str, int]:
    def bad(reason: str) -> ApiError:
        return ApiError(400, "BadRequest", f"invalid continue token: {reason}")

    try:
        data: Any = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as error:
        raise bad(f"continue key is not valid: {error}") from error
    if not isinstance(data, dict) or data.get("v") != TOKEN_VERSION:
        version = data.get("v") if isinstance(data, dict) else None
        raise bad(f"continue key is not valid: server does not recognize this encoded version {version!r}")
    rv, start = data.get("rv"), data.get("start")
    if not isinstance(rv, int) or rv == 0:
        raise bad("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    if not isinstance(start, str) or not start:
        raise bad("continue key is not valid: encoded start key empty (version meta.k8s.io/v1)")
    return start, rv


def _key(selection: Selection, obj: JsonObj) -> str:
    """The object's etcd key after the list's prefix (`/registry/<resource>/[<namespace>/]`)."""
    namespace, name = object_key(obj)
    return f"{namespace}/{name}" if selection.kind.namespaced and not selection.namespace else name


def _limit(query: dict[str, str]) -> int:
    raw = query.get("limit") or "0"
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, "BadRequest", f'invalid limit: "{raw}"') from None
    return max(0, limit)


def list_objects(store: ObjectStore, history: EventHistory, selection: Selection, query: dict[str, str]) -> JsonObj:
    """GET on a collection: the (selected) objects at the requested revision, one page of them if `limit` is set."""
    kind = selection.kind
    limit = _limit(query)
    token = query.get("continue") or ""
    rv_param = query.get("resourceVersion") or ""
    start = ""
    if token:
        if rv_param:
            raise ApiError(400, "BadRequest", "specifying resource version is not allowed when using continue")
        start, token_rv = decode_continue(token)
        try:
            state, current = history.state_at(kind, max(token_rv, 0) or int(store.resource_version))
        except ApiError as error:
            if error.code == 410:
                raise ExpiredContinue(encode_continue(start, -1)) from error
            raise
        list_rv = token_rv if token_rv > 0 else current
    else:
        requested = parse_resource_version(kind, rv_param) if rv_param else 0
        current = history.sync()
        if requested > current and not history.wait_for(requested, FRESHNESS_WAIT):
            raise too_large(requested, int(store.resource_version))
        exact = query.get("resourceVersionMatch") == "Exact" and requested > 0
        try:
            state, current = history.state_at(kind, requested if exact else current)
        except ApiError as error:
            if error.code == 410:
                raise ApiError(410, "Expired", LIST_EXPIRED) from error
            raise
        list_rv = requested if exact else current
    keyed = sorted(((_key(selection, obj), obj) for obj in state.values() if selection.matches(obj)),
                   key=lambda pair: pair[0])
    keyed = [(key, obj) for key, obj in keyed if key >= start] if start else keyed
    page = keyed[:limit] if limit else keyed
    metadata: JsonObj = {"resourceVersion": str(list_rv)}
    if limit and len(keyed) > limit:
        metadata["continue"] = encode_continue(page[-1][0] + "\x00", list_rv)
        if not selection.filtered:
            metadata["remainingItemCount"] = len(keyed) - limit
    return {"kind": kind.list_kind, "apiVersion": kind.api_version, "metadata": metadata,
            "items": [obj for _, obj in page]}
