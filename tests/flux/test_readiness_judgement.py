"""Readiness is judged as the flux CLI judges it: only a Ready condition about the current generation counts."""

from __future__ import annotations

from typing import Any

from activities.flux import judge_object, summarize
from provisioner.contracts import ObjectReadiness, ReadinessState


def kustomization(
    generation: int = 2, observed: int | None = 2, **conditions: tuple[str, str, str, int]
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [
            {"type": kind, "status": s, "reason": r, "message": m, "observedGeneration": g}
            for kind, (s, r, m, g) in conditions.items()
        ]
    }
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"name": "shop", "generation": generation}, "status": status}


def test_ready_true_for_the_current_generation_is_ready() -> None:
    judged = judge_object(
        "Kustomization", kustomization(Ready=("True", "ReconciliationSucceeded", "Applied revision: main@sha1:1", 2))
    )
    assert judged.state is ReadinessState.READY
    assert judged.message == "Applied revision: main@sha1:1"


def test_ready_true_for_an_older_generation_is_still_in_progress() -> None:
    judged = judge_object("Kustomization", kustomization(observed=1, Ready=("True", "ReconciliationSucceeded", "x", 1)))
    assert judged.state is ReadinessState.IN_PROGRESS


def test_never_observed_is_in_progress() -> None:
    judged = judge_object("Kustomization", kustomization(observed=None))
    assert judged.state is ReadinessState.IN_PROGRESS and judged.reason == "Pending"


def test_artifact_failed_is_transient_and_keeps_flux_reason() -> None:
    message = (
        "kustomization path not found: stat /tmp/kustomization-1/k8s/overlays/development: no such file or directory"
    )
    judged = judge_object("Kustomization", kustomization(Ready=("False", "ArtifactFailed", message, 2)))
    assert judged.state is ReadinessState.IN_PROGRESS
    assert (judged.reason, judged.message) == ("ArtifactFailed", message)


def test_stalled_is_final() -> None:
    judged = judge_object(
        "Kustomization",
        kustomization(Ready=("False", "InvalidPath", "bad", 2), Stalled=("True", "InvalidPath", "path is absolute", 2)),
    )
    assert judged.state is ReadinessState.FAILED
    assert (judged.reason, judged.message) == ("InvalidPath", "path is absolute")


def test_reconciling_is_in_progress() -> None:
    judged = judge_object(
        "Kustomization",
        kustomization(
            Ready=("Unknown", "Progressing", "Reconciliation in progress", 2),
            Reconciling=("True", "Progressing", "Fetching manifests", 2),
        ),
    )
    assert judged.state is ReadinessState.IN_PROGRESS and judged.reason == "Progressing"


def test_terminating_is_not_ready() -> None:
    obj = kustomization(Ready=("True", "ReconciliationSucceeded", "ok", 2))
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert judge_object("Kustomization", obj).state is ReadinessState.IN_PROGRESS


def test_summary_reports_the_first_failing_then_the_first_waiting_object() -> None:
    ready = ObjectReadiness("GitRepository", "shop", ReadinessState.READY, "Succeeded", "stored")
    waiting = ObjectReadiness("Kustomization", "shop", ReadinessState.IN_PROGRESS, "ArtifactFailed", "path")
    stalled = ObjectReadiness("Kustomization", "shop", ReadinessState.FAILED, "BuildFailed", "boom")
    assert summarize([ready, waiting], "").reason == "ArtifactFailed"
    assert summarize([waiting, stalled], "").state is ReadinessState.FAILED
    done = summarize([ready, ready], "main@sha1:1")
    assert done.state is ReadinessState.READY and done.revision == "main@sha1:1"
