"""Activities against the Kubernetes cluster: apply the project's Flux resources, judge their readiness, delete them.

A private repository (`RepositoryInfo.requires_credentials`) also gets a basic-auth Secret in the project's
namespace, built here from the worker's own settings, and the GitRepository names it in `spec.secretRef`; the
activity's result names the Secret and carries none of its data.

Everything goes through server-side apply with one field manager, so applying the same desired state twice is a
no-op on the server (no new resourceVersion). Readiness is judged the way the flux CLI does, and only for exactly
the revision the run pushed and the reconcile request its apply wrote.

Deletion only touches objects labelled as this project's, with the read object's uid as a precondition (so an object
recreated meanwhile is never deleted unseen), and treats 404 as done. It only requests deletion: finalizers (Flux's
`finalizers.fluxcd.io`, the namespace's `kubernetes`) are honoured, and `check_flux_deletion` reports what remains.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

from kubernetes import client as kube
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from temporalio import activity
from temporalio.exceptions import ApplicationError
from urllib3.util.retry import Retry

from provisioner.contracts import (
    MANAGED_BY,
    DeletionReport,
    ErrorType,
    FluxApplyRequest,
    FluxApplyResult,
    FluxDeletionRequest,
    FluxDeletionResult,
    KubeObjectRef,
    ObjectReadiness,
    ProjectSpec,
    ReadinessReport,
    ReadinessRequest,
    ReadinessState,
    RemainingObject,
    RepositoryInfo,
)
from provisioner.settings import Secret, Settings

log = logging.getLogger(__name__)

SOURCE_GROUP, SOURCE_VERSION, GIT_REPOSITORIES = "source.toolkit.fluxcd.io", "v1", "gitrepositories"
KUSTOMIZE_GROUP, KUSTOMIZE_VERSION, KUSTOMIZATIONS = "kustomize.toolkit.fluxcd.io", "v1", "kustomizations"
REQUESTED_AT_ANNOTATION = "reconcile.fluxcd.io/requestedAt"
PROJECT_LABEL = "provisioner.dev/project"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
# The basic-auth Secret of a private repository, in the project's namespace (so deleting the namespace removes it).
GIT_CREDENTIALS_SECRET = "provisioner-git-credentials"

# (group, version, plural) of the project's custom objects.
CUSTOM_KINDS: dict[str, tuple[str, str, str]] = {
    "GitRepository": (SOURCE_GROUP, SOURCE_VERSION, GIT_REPOSITORIES),
    "Kustomization": (KUSTOMIZE_GROUP, KUSTOMIZE_VERSION, KUSTOMIZATIONS),
}
# The Kustomization goes first so kustomize-controller prunes what it applied (spec.prune) before anything else
# disappears; the Namespace last, which also sweeps whatever is left inside it.
DELETION_ORDER = ("Kustomization", "GitRepository", "Namespace")
# kubectl's default: the API answers at once and the garbage collector removes dependents afterwards; Foreground
# would add a `foregroundDeletion` finalizer the teardown would then wait on for nothing it needs.
PROPAGATION_POLICY = "Background"
NAMESPACE_REMAINING_CONDITIONS = ("NamespaceContentRemaining", "NamespaceFinalizersRemaining")
# (connect, read) seconds for every API request. The client waits forever by default, and a hung request would hold
# its activity thread long after Temporal timed the attempt out (20 s for a readiness check); this bounds it.
REQUEST_TIMEOUT = (5.0, 10.0)
# Per request, as client-go does: a 429 (after its Retry-After) or a 5xx is sent again a few times, so one refused
# request out of the five an apply makes does not fail the whole attempt. Every verb used here is safe to repeat
# (server-side apply, GET, DELETE with a uid precondition). A read that timed out is not re-sent (urllib3 would by
# default, stretching one hung GET to four read timeouts): Temporal's retries, visible in the progress, take over.
CLIENT_RETRIES = Retry(
    total=3,
    read=0,
    status_forcelist=(429, 500, 502, 503, 504),
    allowed_methods=None,
    backoff_factor=0.2,
    respect_retry_after_header=True,
    raise_on_status=False,  # the last answer then raises as an ApiException with its Status body
)
# `ApplicationError.type` for an object of the project's name that this project does not manage (not in
# `contracts.ErrorType`: the teardown brief allowed one new type there, ProjectBusy).


def project_labels(slug: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY, PROJECT_LABEL: slug}


def namespace_manifest(spec: ProjectSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": spec.namespace,
            "labels": project_labels(spec.slug),
            "annotations": {"provisioner.dev/display-name": spec.display_name},
        },
    }


def git_credentials_manifest(spec: ProjectSpec, username: str, password: Secret) -> dict[str, Any]:
    """The basic-auth Secret Flux clones a private repository with (`username`/`password`, as the GitRepository
    spec reads them). Built on the worker from its own settings; it never leaves the activity."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": GIT_CREDENTIALS_SECRET, "namespace": spec.namespace, "labels": project_labels(spec.slug)},
        "type": "Opaque",
        # `data`, not `stringData`: the server stores `data`, so applying the same values again changes nothing.
        "data": {
            "username": base64.b64encode(username.encode()).decode("ascii"),
            "password": base64.b64encode(password.reveal().encode()).decode("ascii"),
        },
    }


def git_repository_manifest(
    spec: ProjectSpec, repository: RepositoryInfo, requested_at: str, interval: str
) -> dict[str, Any]:
    source_spec: dict[str, Any] = {
        "url": repository.clone_url,
        "ref": {"branch": repository.default_branch},
        "interval": interval,
        "timeout": "60s",
    }
    if repository.requires_credentials:
        source_spec["secretRef"] = {"name": GIT_CREDENTIALS_SECRET}
    return {
        "apiVersion": f"{SOURCE_GROUP}/{SOURCE_VERSION}",
        "kind": "GitRepository",
        "metadata": {
            "name": spec.slug,
            "namespace": spec.namespace,
            "labels": project_labels(spec.slug),
            # The workflow's token for this apply (the same on the activity's retries, so they change nothing): a
            # new value asks Flux for an immediate reconcile, and the Kustomization echoes it once handled.
            "annotations": {REQUESTED_AT_ANNOTATION: requested_at},
        },
        "spec": source_spec,
    }


def kustomization_manifest(spec: ProjectSpec, kustomize_path: str, requested_at: str, interval: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{KUSTOMIZE_GROUP}/{KUSTOMIZE_VERSION}",
        "kind": "Kustomization",
        "metadata": {
            "name": spec.slug,
            "namespace": spec.namespace,
            "labels": project_labels(spec.slug),
            "annotations": {REQUESTED_AT_ANNOTATION: requested_at},
        },
        "spec": {
            "interval": interval,
            "path": f"./{kustomize_path.strip('/')}",
            "prune": True,
            "sourceRef": {"kind": "GitRepository", "name": spec.slug},
            "targetNamespace": spec.namespace,
            "timeout": "2m",
            # Ready only once the applied workloads are Current by kstatus (kustomize-controller checkHealth), else
            # HealthCheckFailed after the timeout: "Ready" then means the service runs, not just that it was applied.
            "wait": True,
        },
    }


# ---- Readiness -----------------------------------------------------------------------------------------------
#
# Revision-exact readiness: Ready=True at the current generation is not enough, since it may describe an older
# revision (the upstream source each rule mirrors is cited where it is checked). The run waits for the revision it
# pushed (ReadinessRequest.revision) and the requestedAt token its apply wrote (ReadinessRequest.requested_at).
#
# Reasons this module reports besides Flux's own (GitOperationFailed, ArtifactFailed, BuildFailed, Progressing, the
# Stalled reasons... are passed through as Flux wrote them):
#   NotFound                     the object does not exist (yet)                                       IN_PROGRESS
#   Pending                      no status condition at all: no controller has written a status yet    IN_PROGRESS
#   NoReadyCondition             conditions, but neither a Ready one nor Reconciling=True: nothing says
#                                why the object is not Ready (flux2 isObjectReady: not ready)          IN_PROGRESS
#   Terminating                  metadata.deletionTimestamp is set (kstatus's TerminatingStatus)       IN_PROGRESS
#   Suspended                    spec.suspend: Flux reconciles nothing until it is resumed             FAILED
#   LatestGenerationNotObserved  status.observedGeneration or the Ready condition's observedGeneration
#                                is not metadata.generation (kstatus's reason for the same check)      IN_PROGRESS
#   ArtifactOutdated             the GitRepository's status.artifact.revision is not the pushed one
#                                (source-controller's own condition for "a new revision is found")    IN_PROGRESS
#   RevisionNotApplied           the Kustomization's status.lastAppliedRevision is not the pushed one  IN_PROGRESS
#   ReconcileRequestNotHandled   the Kustomization's status.lastHandledReconcileAt is not this apply's
#                                requestedAt token                                                     IN_PROGRESS

READY_CONDITION, RECONCILING_CONDITION, STALLED_CONDITION = "Ready", "Reconciling", "Stalled"
# How an operator resumes a suspended object (flux2 cmd/flux resume_source_git.go, resume_kustomization.go).
RESUME_COMMANDS = {"GitRepository": "flux resume source git", "Kustomization": "flux resume kustomization"}
SUSPENDED_CONTROLLERS = {"GitRepository": "source-controller fetches", "Kustomization": "kustomize-controller applies"}


def judge_object(kind: str, obj: Mapping[str, Any], request: ReadinessRequest) -> ObjectReadiness:
    """Whether one Flux object (a GitRepository or a Kustomization) is Ready for exactly `request.revision`.

    Generic rules first, in kstatus's order, then the revision-exact ones. `message` is Flux's own when Flux's
    condition explains the state; the report prefixes it with `Kind/name`."""
    metadata = obj.get("metadata") or {}
    name = request.name  # the object was read by this name (check_flux_readiness)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    conditions = _conditions(status)
    ready = conditions.get(READY_CONDITION)
    generation = metadata.get("generation")

    def result(state: ReadinessState, reason: str, message: str) -> ObjectReadiness:
        return ObjectReadiness(kind=kind, name=name, state=state, reason=reason, message=message)

    # kstatus pkg/kstatus/status/generic.go checkGenericProperties: deletionTimestamp -> Terminating, before anything
    # else (both controllers' Reconcile also handle deletion before looking at spec.suspend).
    if metadata.get("deletionTimestamp"):
        return result(ReadinessState.IN_PROGRESS, "Terminating", f"being deleted since {metadata['deletionTimestamp']}")
    # flux2 cmd/flux/reconcile.go reconcileCommand.run: "resource is suspended" is refused at once; the controllers'
    # Reconcile (source-controller gitrepository_controller.go, kustomize-controller kustomization_controller.go)
    # return before reconciling, leaving Ready as it was, possibly True at an old revision for ever.
    if spec.get("suspend") is True:
        controller = SUSPENDED_CONTROLLERS[kind]
        resume = f"{RESUME_COMMANDS[kind]} {name} -n {request.namespace}"
        message = f"suspended (spec.suspend: true): {controller} nothing until it is resumed: {resume}"
        return result(ReadinessState.FAILED, "Suspended", message)
    observed = status.get("observedGeneration")
    # kstatus checkGenericProperties: Stalled=True -> Failed. Checked before the first success too: kustomize-controller
    # (Reconcile, terminal errors) and source-controller (runtime/reconcile AddPatchOptions) stall with the
    # generation observed. A Stalled condition about an older generation describes a spec that has changed since
    # (kstatus checkGeneration comes first); a condition without observedGeneration falls back to the status's
    # (flux2 readiness.go isObjectReady does the same for Ready).
    stalled = conditions.get(STALLED_CONDITION)
    stalled_generation = (stalled or {}).get("observedGeneration") or observed
    if stalled is not None and stalled.get("status") == "True" and stalled_generation == generation:
        reason, message = str(stalled.get("reason") or "Stalled"), str(stalled.get("message", ""))
        return result(ReadinessState.FAILED, reason, message)
    # flux2 cmd/flux/readiness.go isObjectReady: "Object not reconciled yet" (observedGeneration < 1), and no Ready
    # condition is not ready either. Before the first success Ready already carries Flux's reason
    # (GitOperationFailed, ArtifactFailed, BuildFailed...): report it; "Pending" only when there is no condition.
    reconciled = isinstance(observed, int) and observed >= 1
    if not reconciled or ready is None:
        explained = _explanation(conditions)
        if explained is not None:
            return result(ReadinessState.IN_PROGRESS, *explained)
        if conditions:
            # No other condition says the object is not Ready (ArtifactInStorage=True, Healthy=True... do not):
            # passing its reason on would report "Succeeded" for an object that is not Ready.
            present = ", ".join(f"{type_}={c.get('status')}" for type_, c in conditions.items())
            return result(ReadinessState.IN_PROGRESS, "NoReadyCondition", f"no Ready condition yet ({present})")
        if reconciled:
            message = f"no status condition, although status.observedGeneration is {observed}"
            return result(ReadinessState.IN_PROGRESS, "Pending", message)
        return result(ReadinessState.IN_PROGRESS, "Pending", "not reconciled yet: no status condition")
    # flux2 readiness.go isObjectReady (the Ready condition's observedGeneration) and kstatus generic.go
    # checkGeneration (status.observedGeneration): both must be the current generation.
    if observed != generation or ready.get("observedGeneration") != generation:
        if ready.get("observedGeneration") == generation and ready.get("status") == "False":
            # The new generation was attempted and failed: status.observedGeneration moves only on success
            # (kustomize-controller finalizeStatus; runtime/reconcile AddPatchOptions), Ready says why.
            reason, message = str(ready.get("reason") or "NotReady"), str(ready.get("message", ""))
            return result(ReadinessState.IN_PROGRESS, reason, message)
        return result(
            ReadinessState.IN_PROGRESS,
            "LatestGenerationNotObserved",
            f"generation {generation} not yet observed (status.observedGeneration {observed}, "
            f"Ready condition's observedGeneration {ready.get('observedGeneration')})",
        )
    # Ready=False at the current generation: Flux's reason says why (e.g. GitOperationFailed with an old artifact kept).
    if ready.get("status") == "False":
        return result(ReadinessState.IN_PROGRESS, str(ready.get("reason") or "NotReady"), str(ready.get("message", "")))
    reconciling = conditions.get(RECONCILING_CONDITION)
    reconciling_now = reconciling is not None and reconciling.get("status") == "True"
    outdated = _revision_gap(kind, status, request.revision)
    if outdated is not None:
        reason, message = outdated
        if reconciling_now and reconciling is not None and reconciling.get("message"):
            message += f" ({reconciling['message']})"
        return result(ReadinessState.IN_PROGRESS, reason, message)
    # kstatus checkGenericProperties: Reconciling=True -> InProgress. source-controller's reconcile() sets it
    # (runtime/reconcile ProgressiveStatus with drift=false) while Ready stays True for the stored artifact.
    if reconciling_now and reconciling is not None:
        return result(
            ReadinessState.IN_PROGRESS,
            str(reconciling.get("reason") or "Progressing"),
            str(reconciling.get("message", "")),
        )
    if ready.get("status") != "True":
        return result(ReadinessState.IN_PROGRESS, str(ready.get("reason") or "Unknown"), str(ready.get("message", "")))
    # kustomize-controller kustomization_controller.go finalizeStatus writes lastHandledReconcileAt = the requestedAt
    # annotation after every reconcile; flux2 reconcile.go reconciliationHandled waits on it. Checked last: it is
    # written even when the artifact applied was an old one, so it is necessary, not sufficient.
    if kind == "Kustomization":
        handled = status.get("lastHandledReconcileAt") or ""  # absent: no requestedAt annotation was ever handled
        if handled != request.requested_at:
            last = f"last handled: {handled!r}" if handled else "none handled yet"
            message = f"has not yet handled the reconcile request {request.requested_at!r} ({last})"
            return result(ReadinessState.IN_PROGRESS, "ReconcileRequestNotHandled", message)
    return result(ReadinessState.READY, str(ready.get("reason") or "Succeeded"), str(ready.get("message", "")))


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    conditions = status.get("conditions") or []
    return {str(c.get("type")): c for c in conditions if isinstance(c, Mapping)}


def _explanation(conditions: Mapping[str, Mapping[str, Any]]) -> tuple[str, str] | None:
    """(reason, message) of the condition that says why an object is not Ready yet: Ready=False, else Reconciling,
    else Ready; None when there is neither a Ready condition nor Reconciling=True."""
    ready = conditions.get(READY_CONDITION)
    reconciling = conditions.get(RECONCILING_CONDITION)
    if ready is not None and ready.get("status") == "False":
        chosen = ready
    elif reconciling is not None and reconciling.get("status") == "True":
        chosen = reconciling
    elif ready is not None:
        chosen = ready
    else:
        return None
    # `chosen` is keyed by its type in `conditions`, so the type is always there to fall back on.
    return str(chosen.get("reason") or chosen["type"]), str(chosen.get("message", ""))


def _revision_gap(kind: str, status: Mapping[str, Any], expected: str) -> tuple[str, str] | None:
    """(reason, message) when the object holds another revision than `expected`, else None."""
    if kind == "GitRepository":
        # source-controller gitrepository_controller.go reconcileArtifact: status.artifact.revision is what it stored;
        # reconcileSource marks ArtifactOutdated=True ("new upstream revision") only once it found a newer one.
        current = str((status.get("artifact") or {}).get("revision") or "")
        if current == expected:
            return None
        held = f"artifact {current} is stored" if current else "no artifact stored yet"
        return "ArtifactOutdated", f"{held}; waiting for {expected}"
    # kustomize-controller kustomization_controller.go reconcile: lastAppliedRevision is set only after a successful
    # apply (and health checks), and stays at the old revision until the Kustomization is requeued.
    current = str(status.get("lastAppliedRevision") or "")
    if current == expected:
        return None
    held = f"applied {current}" if current else "applied nothing yet"
    return "RevisionNotApplied", f"{held}; waiting for {expected}"


def summarize(objects: list[ObjectReadiness], revision: str, expected_revision: str) -> ReadinessReport:
    """One report: the first FAILED object, else the first one in progress, else Ready with the Kustomization's
    reason and message. `revision` is the Kustomization's lastAppliedRevision, `expected_revision` the pushed one."""

    def report(state: ReadinessState, reason: str, message: str) -> ReadinessReport:
        return ReadinessReport(state, reason, message, objects, revision, expected_revision)

    for state in (ReadinessState.FAILED, ReadinessState.IN_PROGRESS):
        for item in objects:
            if item.state is state:
                return report(state, item.reason, f"{item.kind}/{item.name}: {item.message}")
    kustomization = next((item for item in objects if item.kind == "Kustomization"), None)
    if kustomization is None:
        return report(ReadinessState.IN_PROGRESS, "NotFound", "no Kustomization was judged")
    if revision != expected_revision:  # judge_object already says so; the report's contract must hold regardless
        applied = revision or "nothing yet"
        return report(
            ReadinessState.IN_PROGRESS,
            "RevisionNotApplied",
            f"{kustomization.kind}/{kustomization.name}: applied {applied}; waiting for {expected_revision}",
        )
    return report(ReadinessState.READY, kustomization.reason, kustomization.message)


class FluxActivities:
    def __init__(self, settings: Settings, api_client: kube.ApiClient | None = None) -> None:
        self._settings = settings
        self._api_client = api_client
        self._lock = threading.Lock()

    def _client(self) -> kube.ApiClient:
        with self._lock:
            if self._api_client is None:
                self._api_client = self._connect()
            return self._api_client

    def _connect(self) -> kube.ApiClient:
        """From the kubeconfig; inside a pod without one, from the service account (whose token the client re-reads
        as the kubelet rotates it)."""
        configuration = kube.Configuration()
        if self._settings.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=self._settings.kubeconfig,
                context=self._settings.kube_context,
                client_configuration=configuration,
            )
        configuration.retries = CLIENT_RETRIES
        return kube.ApiClient(configuration)

    @activity.defn(name="apply_flux_resources")
    def apply_flux_resources(self, request: FluxApplyRequest) -> FluxApplyResult:
        spec, interval = request.spec, self._settings.flux_interval
        existing = self._read("Namespace", spec.namespace, spec.namespace)
        if existing is not None:
            _check_managed("Namespace", existing, spec.slug, f"refusing to take it over for {spec.slug!r}")
        credentials = self._git_credentials(spec) if request.repository.requires_credentials else None
        objects: list[KubeObjectRef] = []
        with _kube_errors("apply the Flux resources"):
            objects.append(_ref(self._apply(namespace_manifest(spec))))
            if credentials is not None:
                # Before the GitRepository, so source-controller finds it on its first reconcile.
                objects.append(_ref(self._apply(credentials)))
            objects.append(
                _ref(self._apply(git_repository_manifest(spec, request.repository, request.requested_at, interval)))
            )
            objects.append(
                _ref(self._apply(kustomization_manifest(spec, request.kustomize_path, request.requested_at, interval)))
            )
        activity.logger.info("applied %s", ", ".join(f"{o.kind}/{o.name}@{o.resource_version}" for o in objects))
        return FluxApplyResult(namespace=spec.namespace, objects=objects)

    def _git_credentials(self, spec: ProjectSpec) -> dict[str, Any]:
        """The deploy credential's Secret, from the worker's settings (the payload only says one is needed)."""
        settings = self._settings
        password = settings.git_deploy_token or settings.git_token
        if not password:
            raise ApplicationError(
                f"repository {spec.slug!r} is private, but the worker has no credential for Flux to clone it with: "
                "set PROVISIONER_GIT_DEPLOY_TOKEN or PROVISIONER_GIT_TOKEN (or their _FILE variants)",
                type=ErrorType.INVALID_INPUT.value,
                non_retryable=True,
            )
        return git_credentials_manifest(spec, settings.git_deploy_username or settings.git_username, password)

    def _apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of one object, forcing ownership of the fields this product manages."""
        api_client = self._client()
        manager = self._settings.field_manager
        metadata = manifest["metadata"]
        if manifest["kind"] == "Secret":
            # Only the metadata is kept: the applied Secret's data must not travel any further.
            secret = kube.CoreV1Api(api_client).patch_namespaced_secret(
                metadata["name"],
                metadata["namespace"],
                manifest,
                field_manager=manager,
                force=True,
                _content_type=APPLY_CONTENT_TYPE,
                _request_timeout=REQUEST_TIMEOUT,
            )
            return {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": api_client.sanitize_for_serialization(secret.metadata),  # type: ignore[no-untyped-call]
            }
        if manifest["kind"] == "Namespace":
            namespace = kube.CoreV1Api(api_client).patch_namespace(
                metadata["name"],
                manifest,
                field_manager=manager,
                force=True,
                _content_type=APPLY_CONTENT_TYPE,
                _request_timeout=REQUEST_TIMEOUT,
            )
            return cast(dict[str, Any], api_client.sanitize_for_serialization(namespace))  # type: ignore[no-untyped-call]
        group, version = manifest["apiVersion"].split("/")
        plural = {"GitRepository": GIT_REPOSITORIES, "Kustomization": KUSTOMIZATIONS}[manifest["kind"]]
        custom = kube.CustomObjectsApi(api_client)
        namespace, name = metadata["namespace"], metadata["name"]
        applied = custom.patch_namespaced_custom_object(
            group,
            version,
            namespace,
            plural,
            name,
            manifest,
            field_manager=manager,
            force=True,
            _content_type=APPLY_CONTENT_TYPE,
            _request_timeout=REQUEST_TIMEOUT,
        )
        if applied is None:
            # The client maps only 200 for this call; an apply that created the object answers 201 with no body
            # the client will decode, so read back what the server stored.
            applied = custom.get_namespaced_custom_object(
                group, version, namespace, plural, name, _request_timeout=REQUEST_TIMEOUT
            )
        return cast(dict[str, Any], applied)

    @activity.defn(name="check_flux_readiness")
    def check_flux_readiness(self, request: ReadinessRequest) -> ReadinessReport:
        """Judge the GitRepository and the Kustomization against the revision and the requestedAt token this run
        waits for (read-only)."""
        custom = kube.CustomObjectsApi(self._client())
        judged: list[ObjectReadiness] = []
        applied_revision = ""
        for kind, group, version, plural in (
            ("GitRepository", SOURCE_GROUP, SOURCE_VERSION, GIT_REPOSITORIES),
            ("Kustomization", KUSTOMIZE_GROUP, KUSTOMIZE_VERSION, KUSTOMIZATIONS),
        ):
            try:
                with _kube_errors(f"read {kind} {request.namespace}/{request.name}"):
                    found = custom.get_namespaced_custom_object(
                        group, version, request.namespace, plural, request.name, _request_timeout=REQUEST_TIMEOUT
                    )
                    obj = cast(dict[str, Any], found)
            except _NotFound:
                judged.append(
                    ObjectReadiness(kind, request.name, ReadinessState.IN_PROGRESS, "NotFound", f"{kind} not found")
                )
                continue
            judged.append(judge_object(kind, obj, request))
            if kind == "Kustomization":
                applied_revision = str((obj.get("status") or {}).get("lastAppliedRevision") or "")
        return summarize(judged, applied_revision, request.revision)

    @activity.defn(name="delete_flux_resources")
    def delete_flux_resources(self, request: FluxDeletionRequest) -> FluxDeletionResult:
        """Request the deletion of the Kustomization, the GitRepository and the Namespace; absent ones are done."""
        requested: list[str] = []
        absent: list[str] = []
        for kind in DELETION_ORDER:
            name = request.namespace if kind == "Namespace" else request.name
            found = self._read(kind, request.namespace, name)
            if found is None:
                absent.append(f"{kind}/{name}")
                continue
            _check_managed(
                kind, found, request.project, f"refusing to delete it while tearing down {request.project!r}"
            )
            if self._delete(kind, request.namespace, found):
                requested.append(f"{kind}/{name}")
            else:
                absent.append(f"{kind}/{name}")
        activity.logger.info(
            "deletion of %s requested; absent: %s", ", ".join(requested) or "nothing", ", ".join(absent) or "none"
        )
        return FluxDeletionResult(requested=requested, absent=absent)

    @activity.defn(name="check_flux_deletion")
    def check_flux_deletion(self, request: FluxDeletionRequest) -> DeletionReport:
        """What of the project's objects still exists, and what holds it (deletionTimestamp, finalizers)."""
        remaining: list[RemainingObject] = []
        for kind in DELETION_ORDER:
            name = request.namespace if kind == "Namespace" else request.name
            found = self._read(kind, request.namespace, name)
            if found is not None:
                remaining.append(_remaining(kind, found))
        return DeletionReport(remaining=remaining)

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as JSON, or None when it does not exist."""
        api_client = self._client()
        try:
            with _kube_errors(f"read {kind} {name if kind == 'Namespace' else f'{namespace}/{name}'}"):
                if kind == "Namespace":
                    found: Any = kube.CoreV1Api(api_client).read_namespace(name, _request_timeout=REQUEST_TIMEOUT)
                    return cast(dict[str, Any], api_client.sanitize_for_serialization(found))  # type: ignore[no-untyped-call]
                group, version, plural = CUSTOM_KINDS[kind]
                found = kube.CustomObjectsApi(api_client).get_namespaced_custom_object(
                    group, version, namespace, plural, name, _request_timeout=REQUEST_TIMEOUT
                )
                return cast(dict[str, Any], found)
        except _NotFound:
            return None

    def _delete(self, kind: str, namespace: str, found: Mapping[str, Any]) -> bool:
        """Delete exactly the object that was read (uid precondition); False when it is gone already."""
        metadata = found["metadata"]
        name = metadata["name"]
        options = kube.V1DeleteOptions(
            propagation_policy=PROPAGATION_POLICY, preconditions=kube.V1Preconditions(uid=metadata["uid"])
        )
        api_client = self._client()
        try:
            with _kube_errors(f"delete {kind} {name if kind == 'Namespace' else f'{namespace}/{name}'}"):
                if kind == "Namespace":
                    kube.CoreV1Api(api_client).delete_namespace(name, body=options, _request_timeout=REQUEST_TIMEOUT)
                else:
                    group, version, plural = CUSTOM_KINDS[kind]
                    kube.CustomObjectsApi(api_client).delete_namespaced_custom_object(
                        group, version, namespace, plural, name, body=options, _request_timeout=REQUEST_TIMEOUT
                    )
        except _NotFound:
            return False
        return True


def _check_managed(kind: str, obj: Mapping[str, Any], project: str, refusal: str) -> None:
    """Refuse to touch what this project did not create: a slug may well name someone else's namespace."""
    labels = obj["metadata"].get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(PROJECT_LABEL) == project:
        return
    owner = labels.get(PROJECT_LABEL) if labels.get(MANAGED_BY_LABEL) == MANAGED_BY else None
    whose = f"belongs to project {owner!r}" if owner else f"is not managed by {MANAGED_BY}"
    raise ApplicationError(
        f"{kind} {obj['metadata']['name']!r} {whose}; {refusal}",
        type=ErrorType.RESOURCE_NOT_MANAGED.value,
        non_retryable=True,
    )


def _remaining(kind: str, obj: Mapping[str, Any]) -> RemainingObject:
    metadata = obj["metadata"]
    finalizers = list(metadata.get("finalizers") or [])
    detail = ""
    if kind == "Namespace":
        # The namespace's own finalizer (`kubernetes`) lives in spec; its conditions say what it waits for.
        finalizers += [f for f in (obj.get("spec") or {}).get("finalizers") or [] if f not in finalizers]
        conditions = (obj.get("status") or {}).get("conditions") or []
        detail = "; ".join(
            str(c.get("message", ""))
            for c in conditions
            if c.get("type") in NAMESPACE_REMAINING_CONDITIONS and c.get("status") == "True" and c.get("message")
        )
    return RemainingObject(
        kind=kind,
        name=metadata["name"],
        deletion_timestamp=_timestamp(metadata.get("deletionTimestamp")),
        finalizers=finalizers,
        detail=detail,
    )


def _timestamp(value: Any) -> str | None:
    """deletionTimestamp as RFC 3339 text (the typed client may hand back a datetime)."""
    if value is None or value == "":
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _ref(obj: Mapping[str, Any]) -> KubeObjectRef:
    metadata = obj["metadata"]
    return KubeObjectRef(
        api_version=obj["apiVersion"],
        kind=obj["kind"],
        namespace=metadata.get("namespace"),
        name=metadata["name"],
        resource_version=metadata["resourceVersion"],
        generation=metadata.get("generation"),
    )


class _NotFound(Exception):
    pass


# 401 is left out: an expired service-account token is refreshed and the next attempt passes.
PERMANENT_STATUS_CODES = frozenset({400, 403, 415, 422})


@contextmanager
def _kube_errors(action: str) -> Iterator[None]:
    """Translate the API's Status answers: 404 -> _NotFound, a 4xx no retry can fix -> non-retryable."""
    try:
        yield
    except ApiException as error:
        status = _status_body(error)
        detail = str(status.get("message", ""))
        message = f"could not {action}: {error.status} {status.get('reason', error.reason)}: {detail}"
        if error.status == 404:
            raise _NotFound(message) from None
        # A namespace that is still terminating refuses new content with 403 until it is gone: that one passes.
        terminating = error.status == 403 and "being terminated" in detail
        if error.status in PERMANENT_STATUS_CODES and not terminating:
            raise ApplicationError(message, type=ErrorType.CLUSTER_REJECTED.value, non_retryable=True) from None
        raise RuntimeError(message) from None


def _status_body(error: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}
