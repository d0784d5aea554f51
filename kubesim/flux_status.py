"""What both simulated Flux controllers share: condition types and reasons, Flux's durations, fluxcd/pkg
runtime/conditions semantics, and the helpers that read reconcile requests and finalizers."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kubesim.store import JsonObj, utc_now

FLUX_FINALIZER = "finalizers.fluxcd.io"
RECONCILE_REQUEST_ANNOTATION = "reconcile.fluxcd.io/requestedAt"
SOURCE_CONTROLLER = "source-controller"
KUSTOMIZE_CONTROLLER = "kustomize-controller"
FLUX_DEPENDENCY_REQUEUE = "30s"  # what Flux prints; the simulator retries after `source_retry_interval`
TERMINAL_ERROR_MESSAGE = "Reconciliation failed terminally due to configuration error"

READY, RECONCILING, STALLED, HEALTHY = "Ready", "Reconciling", "Stalled", "Healthy"
ARTIFACT_IN_STORAGE, FETCH_FAILED = "ArtifactInStorage", "FetchFailed"
ARTIFACT_OUTDATED, NEW_REVISION = "ArtifactOutdated", "NewRevision"
PROGRESSING, PROGRESSING_WITH_RETRY = "Progressing", "ProgressingWithRetry"


# ---- Durations -----------------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None, default: float) -> float:
    """A Go/Flux duration such as `1m30s` in seconds; `default` when absent or malformed."""
    if not text or not re.fullmatch(r"([0-9]+(\.[0-9]+)?(ms|s|m|h))+", text):
        return default
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))


def go_duration(seconds: float) -> str:
    """Go's `time.Duration.String()` for the values Flux prints (`5m0s`, `30s`, `1h0m0s`, `500ms`)."""
    if seconds < 1:
        return f"{seconds * 1000:.6f}".rstrip("0").rstrip(".") + "ms" if seconds > 0 else "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    sec_text = f"{secs:.9f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{sec_text}"
    if minutes:
        return f"{int(minutes)}m{sec_text}"
    return sec_text


# ---- Conditions (fluxcd/pkg/runtime/conditions semantics) ----------------------------------------------------


def get_condition(status: JsonObj, type_: str) -> JsonObj | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def set_condition(status: JsonObj, type_: str, value: str, reason: str, message: str, generation: int) -> None:
    """Set one condition; lastTransitionTime moves only when its state (status/reason/message/generation) does."""
    condition = {
        "type": type_,
        "status": value,
        "observedGeneration": generation,
        "lastTransitionTime": utc_now(),
        "reason": reason,
        "message": message,
    }
    existing = get_condition(status, type_)
    if existing is not None and all(existing.get(k) == condition[k]
                                    for k in ("status", "reason", "message", "observedGeneration")):
        condition["lastTransitionTime"] = existing["lastTransitionTime"]
    others = [c for c in status.get("conditions") or [] if c.get("type") != type_]
    status["conditions"] = sorted([*others, condition], key=lambda c: (c["type"] != READY, c["type"]))
    if type_ == RECONCILING and value == "True":
        delete_condition(status, STALLED)
    if type_ == STALLED and value == "True":
        delete_condition(status, RECONCILING)


def delete_condition(status: JsonObj, type_: str) -> None:
    if "conditions" in status:
        status["conditions"] = [c for c in status["conditions"] if c.get("type") != type_]


def is_true(status: JsonObj, type_: str) -> bool:
    condition = get_condition(status, type_)
    return condition is not None and condition.get("status") == "True"



@dataclass(frozen=True)
class Outcome:
    """One status write's content: a Ready verdict plus the extra fields to set."""

    ready: str
    reason: str
    message: str


def already_reported(status: JsonObj, generation: int, outcome: Outcome, requested: str | None) -> bool:
    ready = get_condition(status, READY)
    return (
        ready is not None and ready.get("status") == outcome.ready and ready.get("reason") == outcome.reason
        and ready.get("message") == outcome.message and ready.get("observedGeneration") == generation
        and status.get("lastHandledReconcileAt") == requested
    )


def requested_at(obj: JsonObj) -> str | None:
    value = (obj["metadata"].get("annotations") or {}).get(RECONCILE_REQUEST_ANNOTATION)
    return str(value) if value is not None else None


def add_finalizer(obj: JsonObj, finalizer: str) -> None:
    finalizers = obj["metadata"].setdefault("finalizers", [])
    if finalizer not in finalizers:
        finalizers.append(finalizer)


def drop_finalizer(obj: JsonObj, finalizer: str) -> None:
    obj["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or [] if f != finalizer]
    if not obj["metadata"]["finalizers"]:
        del obj["metadata"]["finalizers"]
