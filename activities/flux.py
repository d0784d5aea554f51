"""Activities against the Kubernetes cluster: apply the project's Flux resources, judge their readiness, delete them.

A private repository (`RepositoryInfo.requires_credentials`) also gets a basic-auth Secret in the project's
namespace, built here from the worker's own settings, and the GitRepository names it in `spec.secretRef`; the
activity's result names the Secret and carries none of its data.

Everything goes through server-side apply with one field manager, so applying the same desired state twice is a
no-op on the server (no new resourceVersion). Readiness is judged the way the flux CLI does.

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
    spec: ProjectSpec, repository: RepositoryInfo, commit_sha: str, interval: str
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
            # Keyed to the commit: a new push asks Flux for an immediate reconcile, a re-run changes nothing.
            "annotations": {REQUESTED_AT_ANNOTATION: commit_sha},
        },
        "spec": source_spec,
    }


def kustomization_manifest(spec: ProjectSpec, kustomize_path: str, commit_sha: str, interval: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{KUSTOMIZE_GROUP}/{KUSTOMIZE_VERSION}",
        "kind": "Kustomization",
        "metadata": {
            "name": spec.slug,
            "namespace": spec.namespace,
            "labels": project_labels(spec.slug),
            "annotations": {REQUESTED_AT_ANNOTATION: commit_sha},
        },
        "spec": {
            "interval": interval,
            "path": f"./{kustomize_path.strip('/')}",
            "prune": True,
            "sourceRef": {"kind": "GitRepository", "name": spec.slug},
            "targetNamespace": spec.namespace,
            "timeout": "2m",
            "wait": False,
        },
    }


def judge_object(kind: str, obj: Mapping[str, Any]) -> ObjectReadiness:
    """kstatus as the flux CLI applies it: only a Ready condition that describes the current generation counts."""
    metadata = obj.get("metadata", {})
    name = metadata.get("name", "")
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready")

    def result(state: ReadinessState, reason: str, message: str) -> ObjectReadiness:
        return ObjectReadiness(kind=kind, name=name, state=state, reason=reason, message=message)

    if metadata.get("deletionTimestamp"):
        return result(ReadinessState.IN_PROGRESS, "Terminating", f"{kind} is being deleted")
    generation = metadata.get("generation")
    if (status.get("observedGeneration") or 0) < 1 or ready is None:
        return result(ReadinessState.IN_PROGRESS, "Pending", f"{kind} has not been reconciled yet")
    if ready.get("observedGeneration") != generation or status.get("observedGeneration") != generation:
        return result(ReadinessState.IN_PROGRESS, "Progressing", f"{kind} generation {generation} not yet observed")
    stalled = conditions.get("Stalled")
    if stalled is not None and stalled.get("status") == "True":
        return result(ReadinessState.FAILED, stalled.get("reason", "Stalled"), stalled.get("message", ""))
    if ready.get("status") == "True":
        return result(ReadinessState.READY, ready.get("reason", "Succeeded"), ready.get("message", ""))
    reconciling = conditions.get("Reconciling")
    if reconciling is not None and reconciling.get("status") == "True":
        return result(ReadinessState.IN_PROGRESS, reconciling.get("reason", "Progressing"), ready.get("message", ""))
    # Ready=False or Unknown (e.g. ArtifactFailed while the source catches up) is transient until the deadline.
    return result(ReadinessState.IN_PROGRESS, ready.get("reason", "Unknown"), ready.get("message", ""))


def summarize(objects: list[ObjectReadiness], revision: str) -> ReadinessReport:
    for state in (ReadinessState.FAILED, ReadinessState.IN_PROGRESS):
        for item in objects:
            if item.state is state:
                return ReadinessReport(
                    state, item.reason, f"{item.kind}/{item.name}: {item.message}", objects, revision
                )
    kustomization = objects[-1]
    return ReadinessReport(ReadinessState.READY, kustomization.reason, kustomization.message, objects, revision)


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
                _ref(self._apply(git_repository_manifest(spec, request.repository, request.commit_sha, interval)))
            )
            objects.append(
                _ref(self._apply(kustomization_manifest(spec, request.kustomize_path, request.commit_sha, interval)))
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
        custom = kube.CustomObjectsApi(self._client())
        judged: list[ObjectReadiness] = []
        revision = ""
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
            judged.append(judge_object(kind, obj))
            revision = (obj.get("status") or {}).get("lastAppliedRevision", revision) or revision
        return summarize(judged, revision)

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
