"""Activities against the Kubernetes cluster: apply the project's Flux resources and judge their readiness.

Everything goes through server-side apply with one field manager, so applying the same desired state twice is a
no-op on the server (no new resourceVersion). Readiness is judged the way the flux CLI does.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

from kubernetes import client as kube
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from temporalio import activity
from temporalio.exceptions import ApplicationError

from provisioner.contracts import (
    MANAGED_BY,
    ErrorType,
    FluxApplyRequest,
    FluxApplyResult,
    KubeObjectRef,
    ObjectReadiness,
    ProjectSpec,
    ReadinessReport,
    ReadinessRequest,
    ReadinessState,
    RepositoryInfo,
)
from provisioner.settings import Settings

log = logging.getLogger(__name__)

SOURCE_GROUP, SOURCE_VERSION, GIT_REPOSITORIES = "source.toolkit.fluxcd.io", "v1", "gitrepositories"
KUSTOMIZE_GROUP, KUSTOMIZE_VERSION, KUSTOMIZATIONS = "kustomize.toolkit.fluxcd.io", "v1", "kustomizations"
REQUESTED_AT_ANNOTATION = "reconcile.fluxcd.io/requestedAt"
PROJECT_LABEL = "provisioner.dev/project"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"


def project_labels(slug: str) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": MANAGED_BY, PROJECT_LABEL: slug}


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


def git_repository_manifest(
    spec: ProjectSpec, repository: RepositoryInfo, commit_sha: str, interval: str
) -> dict[str, Any]:
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
        "spec": {
            "url": repository.clone_url,
            "ref": {"branch": repository.default_branch},
            "interval": interval,
            "timeout": "60s",
        },
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
                self._api_client = kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=self._settings.kubeconfig, context=self._settings.kube_context
                )
            return self._api_client

    @activity.defn(name="apply_flux_resources")
    def apply_flux_resources(self, request: FluxApplyRequest) -> FluxApplyResult:
        spec, interval = request.spec, self._settings.flux_interval
        with _kube_errors("apply the Flux resources"):
            namespace = self._apply(namespace_manifest(spec))
            source = self._apply(git_repository_manifest(spec, request.repository, request.commit_sha, interval))
            kustomization = self._apply(
                kustomization_manifest(spec, request.kustomize_path, request.commit_sha, interval)
            )
        objects = [_ref(namespace), _ref(source), _ref(kustomization)]
        activity.logger.info("applied %s", ", ".join(f"{o.kind}/{o.name}@{o.resource_version}" for o in objects))
        return FluxApplyResult(namespace=spec.namespace, objects=objects)

    def _apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of one object, forcing ownership of the fields this product manages."""
        api_client = self._client()
        manager = self._settings.field_manager
        metadata = manifest["metadata"]
        if manifest["kind"] == "Namespace":
            namespace = kube.CoreV1Api(api_client).patch_namespace(
                metadata["name"], manifest, field_manager=manager, force=True, _content_type=APPLY_CONTENT_TYPE
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
        )
        if applied is None:
            # The client maps only 200 for this call; an apply that created the object answers 201 with no body
            # the client will decode, so read back what the server stored.
            applied = custom.get_namespaced_custom_object(group, version, namespace, plural, name)
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
                    found = custom.get_namespaced_custom_object(group, version, request.namespace, plural, request.name)
                    obj = cast(dict[str, Any], found)
            except _NotFound:
                judged.append(
                    ObjectReadiness(kind, request.name, ReadinessState.IN_PROGRESS, "NotFound", f"{kind} not found")
                )
                continue
            judged.append(judge_object(kind, obj))
            revision = (obj.get("status") or {}).get("lastAppliedRevision", revision) or revision
        return summarize(judged, revision)


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


PERMANENT_STATUS_CODES = frozenset({400, 401, 403, 415, 422})


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
