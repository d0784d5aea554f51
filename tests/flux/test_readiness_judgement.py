"""Revision-exact readiness: Ready only for exactly the pushed revision, judged from statuses as Flux writes them.

The objects below are written the way source-controller and kustomize-controller write them (conditions with type,
status, reason, message, observedGeneration and lastTransitionTime; artifact, lastAppliedRevision,
lastHandledReconcileAt), one stage of a real reconciliation each. Each test names the rule it guards; removing that
rule from `judge_object`/`summarize` makes it fail.
"""

from __future__ import annotations

from typing import Any

import pytest

from activities.flux import judge_object, summarize
from provisioner.contracts import ObjectReadiness, ReadinessReport, ReadinessRequest, ReadinessState

OLD_SHA, NEW_SHA = "1b0c7e5d" * 5, "9f2ad4c3" * 5
OLD, NEW = f"main@sha1:{OLD_SHA}", f"main@sha1:{NEW_SHA}"
# The requestedAt tokens of the previous apply and of this one (the apply writes the same token on both objects).
OLD_TOKEN, NEW_TOKEN = OLD_SHA, NEW_SHA
REQUEST = ReadinessRequest(namespace="shop", name="shop", revision=NEW, requested_at=NEW_TOKEN)
URL = "http://git.example.test/shop.git"
EARLIER, LATER = "2026-03-02T10:00:00Z", "2026-03-02T10:05:00Z"


def condition(
    type_: str, status: str, reason: str, message: str, generation: int = 1, at: str = LATER
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": at,
        "reason": reason,
        "message": message,
    }


def stored(revision: str, generation: int = 1) -> list[dict[str, Any]]:
    """source-controller after storing `revision` (reconcileArtifact, then the summarized Ready)."""
    message = f"stored artifact for revision '{revision}'"
    return [
        condition("Ready", "True", "Succeeded", message, generation, EARLIER),
        condition("ArtifactInStorage", "True", "Succeeded", message, generation, EARLIER),
    ]


def applied(revision: str, generation: int = 1) -> list[dict[str, Any]]:
    """kustomize-controller after applying `revision` (reconcile, then finalizeStatus)."""
    return [condition("Ready", "True", "ReconciliationSucceeded", f"Applied revision: {revision}", generation, EARLIER)]


def artifact(revision: str) -> dict[str, Any]:
    sha = revision.rpartition(":")[2]
    path = f"gitrepository/shop/shop/{sha}.tar.gz"
    return {
        "digest": "sha256:" + "ab" * 32,
        "lastUpdateTime": EARLIER,
        "path": path,
        "revision": revision,
        "size": 2048,
        "url": f"http://source-controller.flux-system.svc.cluster.local./{path}",
    }


def metadata(generation: int, token: str) -> dict[str, Any]:
    return {
        "name": "shop",
        "namespace": "shop",
        "generation": generation,
        "uid": "0f6f3b1e-2d3c-4e5f-8a9b-1c2d3e4f5a6b",
        "resourceVersion": "4711",
        "labels": {"app.kubernetes.io/managed-by": "provisioner", "provisioner.dev/project": "shop"},
        "annotations": {"reconcile.fluxcd.io/requestedAt": token},
        "finalizers": ["finalizers.fluxcd.io"],
    }


def git_repository(
    conditions: list[dict[str, Any]],
    *,
    revision: str | None = NEW,
    generation: int = 1,
    observed: int | None = 1,
    handled: str | None = NEW_TOKEN,
    suspend: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"url": URL, "ref": {"branch": "main"}, "interval": "1m", "timeout": "60s"}
    if suspend:
        spec["suspend"] = True
    status: dict[str, Any] = {"conditions": conditions}
    if observed is not None:
        status["observedGeneration"] = observed
    if revision is not None:
        status["artifact"] = artifact(revision)
    if handled is not None:
        status["lastHandledReconcileAt"] = handled
    return {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": metadata(generation, NEW_TOKEN),
        "spec": spec,
        "status": status,
    }


def kustomization(
    conditions: list[dict[str, Any]],
    *,
    revision: str | None = NEW,
    generation: int = 1,
    observed: int | None = 1,
    handled: str | None = NEW_TOKEN,
    suspend: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "interval": "1m",
        "path": "./k8s/overlays/development",
        "prune": True,
        "sourceRef": {"kind": "GitRepository", "name": "shop"},
        "targetNamespace": "shop",
        "timeout": "2m",
        "wait": False,
    }
    if suspend:
        spec["suspend"] = True
    status: dict[str, Any] = {"conditions": conditions}
    if observed is not None:
        status["observedGeneration"] = observed
    if revision is not None:
        status["lastAppliedRevision"] = status["lastAttemptedRevision"] = revision
        status["inventory"] = {"entries": [{"id": "shop_web_apps_Deployment", "v": "v1"}]}
    if handled is not None:
        status["lastHandledReconcileAt"] = handled
    return {
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": metadata(generation, NEW_TOKEN),
        "spec": spec,
        "status": status,
    }


def judge(source: dict[str, Any], kustomize: dict[str, Any]) -> ReadinessReport:
    """What check_flux_readiness reports for these two objects."""
    objects = [judge_object("GitRepository", source, REQUEST), judge_object("Kustomization", kustomize, REQUEST)]
    return summarize(objects, kustomize["status"].get("lastAppliedRevision", ""), REQUEST.revision)


READY_SOURCE = git_repository(stored(NEW))
READY_KUSTOMIZATION = kustomization(applied(NEW))


# ---- Everything right ------------------------------------------------------------------------------------------


def test_everything_at_the_pushed_revision_is_ready_with_the_kustomizations_reason_and_revision() -> None:
    report = judge(READY_SOURCE, READY_KUSTOMIZATION)
    assert report.state is ReadinessState.READY
    assert (report.reason, report.message) == ("ReconciliationSucceeded", f"Applied revision: {NEW}")
    assert (report.revision, report.expected_revision) == (NEW, NEW)
    assert [(o.kind, o.state) for o in report.objects] == [
        ("GitRepository", ReadinessState.READY),
        ("Kustomization", ReadinessState.READY),
    ]


# ---- The source: its artifact must be the pushed revision ------------------------------------------------------


def test_source_ready_for_the_old_artifact_before_it_noticed_the_push_is_in_progress() -> None:
    # Ready=True, current generation, not reconciling: all a generation-only check looks at.
    judged = judge_object("GitRepository", git_repository(stored(OLD), revision=OLD, handled=OLD_TOKEN), REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS
    assert judged.reason == "ArtifactOutdated"
    assert judged.message == f"artifact {OLD} is stored; waiting for {NEW}"


def test_source_ready_and_reconciling_while_it_fetches_the_new_revision_is_in_progress() -> None:
    # source-controller reconcile(): ProgressiveStatus(false, ...) marks Reconciling and keeps Ready=True for the
    # artifact it has (runtime/reconcile ProgressiveStatus touches Ready only on drift).
    conditions = [
        *stored(OLD),
        condition("Reconciling", "True", "Progressing", "reconciliation in progress"),
    ]
    report = judge(
        git_repository(conditions, revision=OLD, handled=OLD_TOKEN), kustomization(applied(OLD), revision=OLD)
    )
    assert report.state is ReadinessState.IN_PROGRESS
    assert report.reason == "ArtifactOutdated"
    assert report.message == (
        f"GitRepository/shop: artifact {OLD} is stored; waiting for {NEW} (reconciliation in progress)"
    )
    assert (report.revision, report.expected_revision) == (OLD, NEW)


def test_source_building_the_new_artifact_is_in_progress_naming_both_revisions() -> None:
    # reconcileSource found the new commit: ArtifactOutdated=True, Ready=Unknown "building artifact: ...".
    building = f"building artifact: new upstream revision '{NEW}'"
    conditions = [
        condition("Reconciling", "True", "Progressing", building),
        condition("Ready", "Unknown", "Progressing", building),
        condition("ArtifactOutdated", "True", "NewRevision", f"new upstream revision '{NEW}'"),
        stored(OLD)[1],
    ]
    judged = judge_object("GitRepository", git_repository(conditions, revision=OLD, handled=OLD_TOKEN), REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS
    assert (judged.reason, judged.message) == (
        "ArtifactOutdated",
        f"artifact {OLD} is stored; waiting for {NEW} ({building})",
    )


def test_source_at_the_new_revision_but_reconciling_again_is_in_progress() -> None:
    # A later reconcile request (or the interval) on a source already at the pushed revision: Ready stays True.
    conditions = [*stored(NEW), condition("Reconciling", "True", "Progressing", "reconciliation in progress")]
    judged = judge_object("GitRepository", git_repository(conditions), REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS
    assert (judged.reason, judged.message) == ("Progressing", "reconciliation in progress")
    # After a failed attempt source-controller retries with its own reason, which is passed on.
    retrying = [*stored(NEW), condition("Reconciling", "True", "ProgressingWithRetry", "retrying the fetch")]
    judged = judge_object("GitRepository", git_repository(retrying), REQUEST)
    assert (judged.state, judged.reason, judged.message) == (
        ReadinessState.IN_PROGRESS,
        "ProgressingWithRetry",
        "retrying the fetch",
    )


def test_source_failing_to_fetch_after_an_earlier_success_reports_flux_reason() -> None:
    message = f"failed to checkout and determine revision: unable to clone '{URL}': authentication required"
    conditions = [
        condition("Reconciling", "True", "ProgressingWithRetry", "reconciliation in progress"),
        condition("FetchFailed", "True", "GitOperationFailed", message),
        condition("Ready", "False", "GitOperationFailed", message),
        stored(OLD)[1],
    ]
    judged = judge_object("GitRepository", git_repository(conditions, revision=OLD), REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS
    assert (judged.reason, judged.message) == ("GitOperationFailed", message)


# ---- The Kustomization: lastAppliedRevision and lastHandledReconcileAt ----------------------------------------


def test_kustomization_still_at_the_old_revision_while_the_source_has_the_new_one_is_in_progress() -> None:
    # kustomize-controller handled this apply's requestedAt before the source had the new artifact: it re-applied
    # the old revision and wrote lastHandledReconcileAt anyway. Ready=True, current generation, token handled.
    report = judge(READY_SOURCE, kustomization(applied(OLD), revision=OLD, handled=NEW_TOKEN))
    assert report.state is ReadinessState.IN_PROGRESS
    assert report.reason == "RevisionNotApplied"
    assert report.message == f"Kustomization/shop: applied {OLD}; waiting for {NEW}"
    assert (report.revision, report.expected_revision) == (OLD, NEW)


def test_kustomization_that_never_applied_anything_says_so() -> None:
    judged = judge_object("Kustomization", kustomization(applied(NEW), revision=None), REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS
    assert (judged.reason, judged.message) == ("RevisionNotApplied", f"applied nothing yet; waiting for {NEW}")


def test_kustomization_at_the_new_revision_that_has_not_handled_this_request_is_in_progress() -> None:
    # The source's interval found the commit and the Kustomization applied it, but this apply's requestedAt token
    # has not been handled yet (lastHandledReconcileAt is the previous apply's).
    judged = judge_object("Kustomization", kustomization(applied(NEW), handled=OLD_TOKEN), REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS
    assert judged.reason == "ReconcileRequestNotHandled"
    assert judged.message == f"has not yet handled the reconcile request {NEW_TOKEN!r} (last handled: {OLD_TOKEN!r})"


def test_kustomization_applying_the_new_revision_reports_the_reconciling_message() -> None:
    # kustomize-controller reconcile(): Ready=Unknown "Reconciliation in progress" + Reconciling "Fetching manifests".
    fetching = f"Fetching manifests for revision {NEW} with a timeout of 2m0s"
    conditions = [
        condition("Ready", "Unknown", "Progressing", "Reconciliation in progress"),
        condition("Reconciling", "True", "Progressing", fetching),
    ]
    judged = judge_object("Kustomization", kustomization(conditions), REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS
    assert (judged.reason, judged.message) == ("Progressing", fetching)


def test_only_ready_true_counts() -> None:
    # Everything else right; Ready=Unknown (without Reconciling, which Flux sets alongside) is still not Ready.
    conditions = [condition("Ready", "Unknown", "Progressing", "Reconciliation in progress")]
    judged = judge_object("Kustomization", kustomization(conditions), REQUEST)
    assert (judged.state, judged.reason) == (ReadinessState.IN_PROGRESS, "Progressing")


# ---- Suspended: FAILED at once ---------------------------------------------------------------------------------


def test_suspended_source_fails_at_once_with_how_to_resume() -> None:
    # Suspended before the push: source-controller returns early, Ready stays True for the old artifact for ever.
    source = git_repository(stored(OLD), revision=OLD, handled=OLD_TOKEN, suspend=True)
    report = judge(source, kustomization(applied(OLD), revision=OLD))
    assert report.state is ReadinessState.FAILED
    assert report.reason == "Suspended"
    assert report.message == (
        "GitRepository/shop: suspended (spec.suspend: true): source-controller fetches nothing until it is resumed: "
        "flux resume source git shop -n shop"
    )


def test_suspended_kustomization_fails_at_once_with_how_to_resume() -> None:
    # kustomize-controller's finalizeStatus runs even when suspended, so lastHandledReconcileAt is this apply's token.
    report = judge(READY_SOURCE, kustomization(applied(OLD), revision=OLD, handled=NEW_TOKEN, suspend=True))
    assert report.state is ReadinessState.FAILED
    assert report.reason == "Suspended"
    assert report.message == (
        "Kustomization/shop: suspended (spec.suspend: true): kustomize-controller applies nothing until it is "
        "resumed: flux resume kustomization shop -n shop"
    )
    assert (report.revision, report.expected_revision) == (OLD, NEW)


def test_how_to_resume_names_the_requested_namespace() -> None:
    request = ReadinessRequest(namespace="team-shop", name="shop", revision=NEW, requested_at=NEW_TOKEN)
    source = git_repository(stored(NEW), suspend=True)
    source["metadata"]["namespace"] = "team-shop"
    judged = judge_object("GitRepository", source, request)
    assert (judged.state, judged.reason, judged.message) == (
        ReadinessState.FAILED,
        "Suspended",
        "suspended (spec.suspend: true): source-controller fetches nothing until it is resumed: "
        "flux resume source git shop -n team-shop",
    )


# ---- Terminating, Stalled -------------------------------------------------------------------------------------


def test_terminating_is_in_progress_even_when_everything_else_is_ready() -> None:
    obj = kustomization(applied(NEW))
    obj["metadata"]["deletionTimestamp"] = LATER
    judged = judge_object("Kustomization", obj, REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS
    assert (judged.reason, judged.message) == ("Terminating", f"being deleted since {LATER}")


def test_terminating_wins_over_suspended() -> None:
    # The controllers handle deletion before they look at spec.suspend.
    obj = git_repository(stored(NEW), suspend=True)
    obj["metadata"]["deletionTimestamp"] = LATER
    assert judge_object("GitRepository", obj, REQUEST).reason == "Terminating"


def test_stalled_at_the_current_generation_is_final() -> None:
    message = "Reconciliation failed terminally due to configuration error: invalid CEL expression"
    conditions = [
        condition("Ready", "False", "InvalidCELExpression", message),
        condition("Stalled", "True", "InvalidCELExpression", message),
    ]
    judged = judge_object("Kustomization", kustomization(conditions, revision=None), REQUEST)
    assert judged.state is ReadinessState.FAILED
    assert (judged.reason, judged.message) == ("InvalidCELExpression", message)


def test_stalled_is_final_before_the_first_success_too() -> None:
    message = "failed to parse url 'http://git.example.test/%zz': invalid URL escape \"%zz\""
    conditions = [
        condition("FetchFailed", "True", "URLInvalid", message),
        condition("Stalled", "True", "URLInvalid", message),
        condition("Ready", "False", "URLInvalid", message),
    ]
    source = git_repository(conditions, revision=None, observed=None, handled=None)
    judged = judge_object("GitRepository", source, REQUEST)
    assert judged.state is ReadinessState.FAILED
    assert (judged.reason, judged.message) == ("URLInvalid", message)


def test_stalled_about_an_older_generation_is_not_final() -> None:
    # The spec changed since it stalled (generation 2): the controller will try the new spec.
    message = "Reconciliation failed terminally due to configuration error: invalid CEL expression"
    conditions = [
        condition("Ready", "False", "InvalidCELExpression", message, generation=1),
        condition("Stalled", "True", "InvalidCELExpression", message, generation=1),
    ]
    judged = judge_object("Kustomization", kustomization(conditions, generation=2, observed=1), REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS


# ---- Before the first success: Flux's own reason, "Pending" only without any condition --------------------


def test_source_failing_before_its_first_success_reports_flux_reason_and_message() -> None:
    message = f"failed to checkout and determine revision: unable to clone '{URL}': repository not found"
    conditions = [
        condition("Reconciling", "True", "ProgressingWithRetry", "building artifact"),
        condition("FetchFailed", "True", "GitOperationFailed", message),
        condition("Ready", "False", "GitOperationFailed", message),
    ]
    source = git_repository(conditions, revision=None, observed=None)
    report = judge(source, kustomization([], revision=None, observed=None, handled=None))
    assert report.state is ReadinessState.IN_PROGRESS
    assert (report.reason, report.message) == ("GitOperationFailed", f"GitRepository/shop: {message}")
    assert (report.revision, report.expected_revision) == ("", NEW)


def test_kustomization_failing_before_its_first_success_reports_flux_reason_and_message() -> None:
    # kustomize-controller Reconcile: the source has no artifact yet; it returns before reconcile(), so no Reconciling.
    message = "Source artifact not found, retrying in 30s"
    conditions = [condition("Ready", "False", "ArtifactFailed", message)]
    judged = judge_object("Kustomization", kustomization(conditions, revision=None, observed=None), REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS
    assert (judged.reason, judged.message) == ("ArtifactFailed", message)


def test_build_failure_before_the_first_success_prefers_ready_false_over_reconciling() -> None:
    message = "kustomize build failed: accumulating resources: 'deployment.yaml': no such file or directory"
    conditions = [
        condition("Ready", "False", "BuildFailed", message),
        condition("Reconciling", "True", "ProgressingWithRetry", f"Building manifests for revision {NEW}"),
    ]
    judged = judge_object("Kustomization", kustomization(conditions, revision=None, observed=None), REQUEST)
    assert (judged.state, judged.reason, judged.message) == (ReadinessState.IN_PROGRESS, "BuildFailed", message)


def test_no_condition_at_all_is_pending() -> None:
    judged = judge_object("GitRepository", git_repository([], revision=None, observed=None, handled=None), REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS
    assert (judged.reason, judged.message) == ("Pending", "not reconciled yet: no status condition")


# ---- The generation rule ---------------------------------------------------------------------------------------


def test_observed_but_without_a_ready_condition_is_in_progress_without_crashing() -> None:
    conditions = [condition("Reconciling", "True", "Progressing", "reconciliation in progress", generation=2)]
    judged = judge_object("GitRepository", git_repository(conditions, generation=2, observed=2), REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS
    assert (judged.reason, judged.message) == ("Progressing", "reconciliation in progress")
    bare = judge_object("GitRepository", git_repository([], generation=2, observed=2), REQUEST)
    assert (bare.state, bare.reason, bare.message) == (
        ReadinessState.IN_PROGRESS,
        "Pending",
        "no status condition, although status.observedGeneration is 2",
    )


def test_observed_with_only_conditions_that_do_not_explain_is_in_progress_with_no_ready_condition() -> None:
    # status.observedGeneration 1 and everything else at the pushed revision, but no Ready condition: the other
    # conditions' own reasons ("Succeeded") would read as success, so the judgement names what is missing.
    source = git_repository([stored(NEW)[1]])  # ArtifactInStorage=True only
    kustomize = kustomization([condition("Healthy", "True", "Succeeded", "Health check passed")])
    report = judge(source, kustomize)
    assert report.state is ReadinessState.IN_PROGRESS
    assert (report.reason, report.message) == (
        "NoReadyCondition",
        "GitRepository/shop: no Ready condition yet (ArtifactInStorage=True)",
    )
    judged = judge_object("Kustomization", kustomize, REQUEST)
    assert (judged.state, judged.reason, judged.message) == (
        ReadinessState.IN_PROGRESS,
        "NoReadyCondition",
        "no Ready condition yet (Healthy=True)",
    )


@pytest.mark.parametrize("observed", [None, 0, "1"], ids=["absent", "zero", "not-a-number"])
def test_not_yet_observed_reports_flux_reason_not_a_generation_gap(observed: Any) -> None:
    # kustomize-controller's first reconcile of generation 1: Ready=Unknown at generation 1 and Reconciling, before
    # status.observedGeneration is ever written (0 or anything but a positive integer counts as not written).
    fetching = f"Fetching manifests for revision {NEW} with a timeout of 2m0s"
    conditions = [
        condition("Ready", "Unknown", "Progressing", "Reconciliation in progress"),
        condition("Reconciling", "True", "Progressing", fetching),
    ]
    obj = kustomization(conditions, revision=None, observed=None, handled=None)
    if observed is not None:
        obj["status"]["observedGeneration"] = observed
    judged = judge_object("Kustomization", obj, REQUEST)
    assert (judged.state, judged.reason, judged.message) == (ReadinessState.IN_PROGRESS, "Progressing", fetching)


def test_ready_condition_about_an_older_generation_is_in_progress() -> None:
    # status.observedGeneration is current, the Ready condition's is not: Ready describes the old spec.
    judged = judge_object("Kustomization", kustomization(applied(NEW, generation=1), generation=2, observed=2), REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS
    assert judged.reason == "LatestGenerationNotObserved"


def test_status_observed_generation_behind_is_in_progress() -> None:
    # The Ready condition is current, status.observedGeneration is not.
    judged = judge_object("Kustomization", kustomization(applied(NEW, generation=2), generation=2, observed=1), REQUEST)
    assert judged.state is ReadinessState.IN_PROGRESS
    assert judged.reason == "LatestGenerationNotObserved"
    assert judged.message == (
        "generation 2 not yet observed (status.observedGeneration 1, Ready condition's observedGeneration 2)"
    )


def test_a_failure_about_an_older_generation_is_not_reported_as_the_current_state() -> None:
    # Generation 1 failed, then the spec changed (generation 2) and nothing has observed it: the old failure says
    # nothing about the new spec.
    message = "kustomization path not found: stat /tmp/kustomization-1/k8s/overlays/staging: no such file or directory"
    conditions = [condition("Ready", "False", "ArtifactFailed", message, generation=1)]
    judged = judge_object("Kustomization", kustomization(conditions, generation=2, observed=1), REQUEST)
    assert (judged.state, judged.reason, judged.message) == (
        ReadinessState.IN_PROGRESS,
        "LatestGenerationNotObserved",
        "generation 2 not yet observed (status.observedGeneration 1, Ready condition's observedGeneration 1)",
    )


def test_a_new_generation_that_failed_reports_flux_reason() -> None:
    # status.observedGeneration moves only on success; Ready=False at generation 2 says why.
    message = "kustomization path not found: stat /tmp/kustomization-1/k8s/overlays/staging: no such file or directory"
    conditions = [condition("Ready", "False", "ArtifactFailed", message, generation=2)]
    judged = judge_object("Kustomization", kustomization(conditions, generation=2, observed=1), REQUEST)
    assert (judged.state, judged.reason, judged.message) == (ReadinessState.IN_PROGRESS, "ArtifactFailed", message)


# ---- summarize -------------------------------------------------------------------------------------------------


def test_summary_reports_the_kustomizations_message_when_ready_whatever_the_order() -> None:
    source = ObjectReadiness(
        "GitRepository", "shop", ReadinessState.READY, "Succeeded", f"stored artifact for revision '{NEW}'"
    )
    kustomize = ObjectReadiness(
        "Kustomization", "shop", ReadinessState.READY, "ReconciliationSucceeded", f"Applied revision: {NEW}"
    )
    for objects in ([source, kustomize], [kustomize, source]):
        report = summarize(objects, NEW, NEW)
        assert report.state is ReadinessState.READY
        assert (report.reason, report.message) == ("ReconciliationSucceeded", f"Applied revision: {NEW}")
        assert (report.revision, report.expected_revision) == (NEW, NEW)


def test_summary_reports_the_first_failing_then_the_first_waiting_object() -> None:
    ready = ObjectReadiness("GitRepository", "shop", ReadinessState.READY, "Succeeded", "stored")
    waiting = ObjectReadiness("Kustomization", "shop", ReadinessState.IN_PROGRESS, "ArtifactFailed", "path")
    stalled = ObjectReadiness("Kustomization", "shop", ReadinessState.FAILED, "BuildFailed", "boom")
    assert summarize([ready, waiting], OLD, NEW).reason == "ArtifactFailed"
    failed = summarize([waiting, stalled], OLD, NEW)
    assert (failed.state, failed.reason, failed.message) == (
        ReadinessState.FAILED,
        "BuildFailed",
        "Kustomization/shop: boom",
    )
    assert (failed.revision, failed.expected_revision) == (OLD, NEW)


def test_summary_is_never_ready_for_another_revision() -> None:
    kustomize = ObjectReadiness("Kustomization", "shop", ReadinessState.READY, "ReconciliationSucceeded", "ok")
    report = summarize([kustomize], OLD, NEW)
    assert report.state is ReadinessState.IN_PROGRESS
    assert report.reason == "RevisionNotApplied"


def test_summary_without_a_kustomization_is_never_ready() -> None:
    source = ObjectReadiness("GitRepository", "shop", ReadinessState.READY, "Succeeded", "stored")
    report = summarize([source], NEW, NEW)
    assert (report.state, report.reason, report.message) == (
        ReadinessState.IN_PROGRESS,
        "NotFound",
        "no Kustomization was judged",
    )
    assert (report.objects, report.revision, report.expected_revision) == ([source], NEW, NEW)


def test_summary_for_another_revision_names_what_was_applied() -> None:
    kustomize = ObjectReadiness("Kustomization", "shop", ReadinessState.READY, "ReconciliationSucceeded", "ok")
    report = summarize([kustomize], OLD, NEW)
    assert (report.state, report.reason, report.message) == (
        ReadinessState.IN_PROGRESS,
        "RevisionNotApplied",
        f"Kustomization/shop: applied {OLD}; waiting for {NEW}",
    )
    nothing = summarize([kustomize], "", NEW)
    assert (nothing.state, nothing.reason, nothing.message) == (
        ReadinessState.IN_PROGRESS,
        "RevisionNotApplied",
        f"Kustomization/shop: applied nothing yet; waiting for {NEW}",
    )
    assert (nothing.revision, nothing.expected_revision) == ("", NEW)


# ---- What the judgement says about statuses Flux would not write ----------------------------------------------
#
# A condition written by something else than a Flux controller may lack a reason or a message: the judgement still
# names a reason (a fixed one per rule) and never invents a message.


def bare(cond: dict[str, Any]) -> dict[str, Any]:
    """`cond` without its reason and message."""
    return {key: value for key, value in cond.items() if key not in ("reason", "message")}


def test_source_without_an_artifact_says_none_is_stored() -> None:
    judged = judge_object("GitRepository", git_repository(stored(NEW), revision=None), REQUEST)
    assert (judged.state, judged.reason, judged.message) == (
        ReadinessState.IN_PROGRESS,
        "ArtifactOutdated",
        f"no artifact stored yet; waiting for {NEW}",
    )


def test_kustomization_that_never_handled_a_reconcile_request_says_so() -> None:
    judged = judge_object("Kustomization", kustomization(applied(NEW), handled=None), REQUEST)
    assert (judged.state, judged.reason, judged.message) == (
        ReadinessState.IN_PROGRESS,
        "ReconcileRequestNotHandled",
        f"has not yet handled the reconcile request {NEW_TOKEN!r} (none handled yet)",
    )


def test_no_ready_condition_lists_every_condition_present() -> None:
    conditions = [stored(NEW)[1], condition("FetchFailed", "False", "Succeeded", "fetched")]
    judged = judge_object("GitRepository", git_repository(conditions), REQUEST)
    assert (judged.state, judged.reason, judged.message) == (
        ReadinessState.IN_PROGRESS,
        "NoReadyCondition",
        "no Ready condition yet (ArtifactInStorage=True, FetchFailed=False)",
    )


def test_not_yet_observed_with_only_a_ready_condition_reports_it() -> None:
    # Ready=Unknown before status.observedGeneration is written, without Reconciling=True: Ready says why.
    conditions = [condition("Ready", "Unknown", "Progressing", "Reconciliation in progress")]
    judged = judge_object("Kustomization", kustomization(conditions, revision=None, observed=None), REQUEST)
    assert (judged.state, judged.reason, judged.message) == (
        ReadinessState.IN_PROGRESS,
        "Progressing",
        "Reconciliation in progress",
    )
    bare_ready = judge_object("Kustomization", kustomization([bare(conditions[0])], observed=None), REQUEST)
    assert (bare_ready.state, bare_ready.reason, bare_ready.message) == (ReadinessState.IN_PROGRESS, "Ready", "")
    reconciling = [bare(condition("Reconciling", "True", "Progressing", "x"))]
    bare_reconciling = judge_object("Kustomization", kustomization(reconciling, observed=None), REQUEST)
    assert (bare_reconciling.reason, bare_reconciling.message) == ("Reconciling", "")


def test_ready_unknown_at_the_current_generation_reports_its_message() -> None:
    conditions = [condition("Ready", "Unknown", "Progressing", "Reconciliation in progress")]
    judged = judge_object("Kustomization", kustomization(conditions), REQUEST)
    assert (judged.state, judged.reason, judged.message) == (
        ReadinessState.IN_PROGRESS,
        "Progressing",
        "Reconciliation in progress",
    )
    unexplained = judge_object("Kustomization", kustomization([bare(conditions[0])]), REQUEST)
    assert (unexplained.state, unexplained.reason, unexplained.message) == (ReadinessState.IN_PROGRESS, "Unknown", "")


def test_reconciling_false_does_not_hold_back_readiness() -> None:
    conditions = [*applied(NEW), condition("Reconciling", "False", "Succeeded", "reconciliation done")]
    judged = judge_object("Kustomization", kustomization(conditions), REQUEST)
    assert (judged.state, judged.reason, judged.message) == (
        ReadinessState.READY,
        "ReconciliationSucceeded",
        f"Applied revision: {NEW}",
    )
    outdated = [*stored(OLD), condition("Reconciling", "False", "Succeeded", "reconciliation done")]
    source = judge_object("GitRepository", git_repository(outdated, revision=OLD), REQUEST)
    assert (source.state, source.reason, source.message) == (
        ReadinessState.IN_PROGRESS,
        "ArtifactOutdated",
        f"artifact {OLD} is stored; waiting for {NEW}",
    )


def test_conditions_without_reason_or_message_get_the_rules_own_reason() -> None:
    def judged(kind: str, obj: dict[str, Any]) -> tuple[ReadinessState, str, str]:
        verdict = judge_object(kind, obj, REQUEST)
        return verdict.state, verdict.reason, verdict.message

    stalled = [bare(condition("Ready", "False", "x", "y")), bare(condition("Stalled", "True", "x", "y"))]
    assert judged("Kustomization", kustomization(stalled)) == (ReadinessState.FAILED, "Stalled", "")
    new_generation_failed = [bare(condition("Ready", "False", "x", "y", generation=2))]
    assert judged("Kustomization", kustomization(new_generation_failed, generation=2, observed=1)) == (
        ReadinessState.IN_PROGRESS,
        "NotReady",
        "",
    )
    failed = [bare(condition("Ready", "False", "x", "y"))]
    assert judged("Kustomization", kustomization(failed)) == (ReadinessState.IN_PROGRESS, "NotReady", "")
    reconciling = [*stored(NEW), bare(condition("Reconciling", "True", "x", "y"))]
    assert judged("GitRepository", git_repository(reconciling)) == (ReadinessState.IN_PROGRESS, "Progressing", "")
    ready = [bare(applied(NEW)[0])]
    assert judged("Kustomization", kustomization(ready)) == (ReadinessState.READY, "Succeeded", "")
