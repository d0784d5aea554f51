"""kube-apiserver semantics of the sandbox, proven through the official kubernetes client over real HTTP."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubesim import FluxSimulatorConfig, SandboxCluster
from kubesim.store import NAMESPACES
from tests.sandbox.conftest import FLUX_KUSTOMIZE, FLUX_SOURCE, Kube, as_object, wait_for

APPLY = "application/apply-patch+yaml"
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
LABEL_ERROR = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end "
    "with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)


def error_of(call: Any, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ApiException) as raised:
        call(*args, **kwargs)
    return raised.value.status, json.loads(raised.value.body or "{}")


def status_of(call: Any, *args: Any) -> int:
    """The HTTP status a call gets, success included: for waiting until something answers 404."""
    try:
        call(*args)
    except ApiException as error:
        return int(error.status)
    return 200


def git_repository(name: str, namespace: str, url: str = "http://127.0.0.1:1/repo.git", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"interval": "1m", "url": url, "ref": {"branch": "main"}, **spec},
    }


def kustomization(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"interval": "5m", "prune": True, "path": "./", "sourceRef": {"kind": "GitRepository", "name": name},
                 **spec},
    }


def raw_request(cluster: SandboxCluster, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, dict[str, str], dict[str, Any]]:
    request = urllib.request.Request(cluster.url + path, data=body, method=method,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


@pytest.fixture
def idle_kube() -> Iterator[Kube]:
    """A sandbox cluster without the flux simulator, so only the test writes to objects."""
    with SandboxCluster(flux=FluxSimulatorConfig(enabled=False)) as cluster:
        yield Kube.connect(cluster)


# ---- Namespaces ----------------------------------------------------------------------------------------------


def test_namespace_create_sets_server_fields(idle_kube: Kube) -> None:
    created = idle_kube.create_namespace("team-a", labels={"tier": "dev"})

    meta = created["metadata"]
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"])
    assert isinstance(meta["resourceVersion"], str) and meta["resourceVersion"].isdigit()
    assert "generation" not in meta
    assert meta["labels"] == {"tier": "dev", "kubernetes.io/metadata.name": "team-a"}
    assert created["spec"] == {"finalizers": ["kubernetes"]}
    assert created["status"] == {"phase": "Active"}
    raw = idle_kube.cluster.store.get(NAMESPACES, None, "team-a")
    assert RFC3339_Z.match(raw["metadata"]["creationTimestamp"])
    (entry,) = raw["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"], entry["fieldsType"]) == ("OpenAPI-Generator", "Update", "FieldsV1")
    assert entry["fieldsV1"] == {"f:metadata": {"f:labels": {".": {}, "f:tier": {}}}}


def test_invalid_namespace_names_are_rejected_with_kubes_messages(idle_kube: Kube) -> None:
    status, body = error_of(idle_kube.create_namespace, "Bad_Name")

    assert status == 422
    assert body["reason"] == "Invalid"
    assert body["message"] == (
        f'Namespace "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": {LABEL_ERROR}'
    )
    assert body["details"] == {
        "name": "Bad_Name",
        "kind": "Namespace",
        "causes": [{"reason": "FieldValueInvalid", "message": f'Invalid value: "Bad_Name": {LABEL_ERROR}',
                    "field": "metadata.name"}],
    }

    long_name = "a" * 64
    status, body = error_of(idle_kube.create_namespace, long_name)
    assert status == 422
    assert body["message"] == (
        f'Namespace "{long_name}" is invalid: metadata.name: Invalid value: "{long_name}": '
        "must be no more than 63 characters"
    )


def test_not_found_already_exists_and_missing_namespace(idle_kube: Kube) -> None:
    status, body = error_of(idle_kube.core.read_namespace, "nope")
    assert status == 404
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": 'namespaces "nope" not found', "reason": "NotFound",
                    "details": {"name": "nope", "kind": "namespaces"}, "code": 404}

    idle_kube.create_namespace("dup")
    status, body = error_of(idle_kube.create_namespace, "dup")
    assert (status, body["reason"], body["message"]) == (409, "AlreadyExists", 'namespaces "dup" already exists')

    status, body = error_of(idle_kube.create, FLUX_SOURCE, "ghost", git_repository("x", "ghost"))
    assert (status, body["message"], body["details"]) == (
        404, 'namespaces "ghost" not found', {"name": "ghost", "kind": "namespaces"})

    status, body = error_of(idle_kube.get, FLUX_KUSTOMIZE, "dup", "absent")
    assert status == 404
    assert body["message"] == 'kustomizations.kustomize.toolkit.fluxcd.io "absent" not found'
    assert body["details"] == {"name": "absent", "group": "kustomize.toolkit.fluxcd.io", "kind": "kustomizations"}


def test_list_with_label_selector(idle_kube: Kube) -> None:
    for name, env in (("one", "dev"), ("two", "prod"), ("three", "dev")):
        idle_kube.create_namespace(name, labels={"env": env})

    def names(selector: str) -> list[str]:
        listed = idle_kube.as_dict(idle_kube.core.list_namespace(label_selector=selector))
        assert listed["metadata"]["resourceVersion"] == idle_kube.cluster.store.resource_version
        return sorted(n["metadata"]["name"] for n in listed["items"])

    assert names("env=dev") == ["one", "three"]
    assert names("env!=dev") == ["two"]
    assert names("env in (dev,prod)") == ["one", "three", "two"]

    raw = idle_kube.list(FLUX_SOURCE, "one")
    assert raw["kind"] == "GitRepositoryList" and raw["items"] == []
    assert isinstance(raw["metadata"]["resourceVersion"], str)


# ---- Custom objects: generation, resourceVersion, status subresource -----------------------------------------


def test_generation_and_resource_version_rules(idle_kube: Kube) -> None:
    idle_kube.create_namespace("gen")
    body = git_repository("repo", "gen")
    body["status"] = {"observedGeneration": 99}
    created = idle_kube.create(FLUX_SOURCE, "gen", body)
    assert created["metadata"]["generation"] == 1
    assert "status" not in created
    rv = created["metadata"]["resourceVersion"]

    same = as_object(idle_kube.patch(FLUX_SOURCE, "gen", "repo", {"spec": {"interval": "1m"}}))
    assert same["metadata"]["resourceVersion"] == rv  # a write that changes nothing is not a write

    labelled = as_object(idle_kube.patch(FLUX_SOURCE, "gen", "repo", {"metadata": {"labels": {"a": "b"}}}))
    assert int(labelled["metadata"]["resourceVersion"]) > int(rv)
    assert labelled["metadata"]["generation"] == 1

    changed = as_object(idle_kube.patch(FLUX_SOURCE, "gen", "repo", {"spec": {"interval": "2m"}}))
    assert changed["metadata"]["generation"] == 2


def test_status_subresource_is_kept_apart(idle_kube: Kube) -> None:
    idle_kube.create_namespace("st")
    idle_kube.create(FLUX_SOURCE, "st", git_repository("r", "st"))

    current = idle_kube.get(FLUX_SOURCE, "st", "r")
    current["status"] = {"observedGeneration": 1}
    current["spec"]["interval"] = "9m"  # ignored by /status
    after_status = idle_kube.replace_status(FLUX_SOURCE, "st", "r", current)
    assert after_status["status"] == {"observedGeneration": 1}
    assert after_status["spec"]["interval"] == "1m"
    assert after_status["metadata"]["generation"] == 1
    status_entry = [e for e in after_status["metadata"]["managedFields"] if e.get("subresource") == "status"]
    assert status_entry and status_entry[0]["fieldsV1"] == {"f:status": {".": {}, "f:observedGeneration": {}}}

    again = idle_kube.replace_status(FLUX_SOURCE, "st", "r", after_status)
    assert again["metadata"]["resourceVersion"] == after_status["metadata"]["resourceVersion"]

    after_status["status"] = {"observedGeneration": 7}  # ignored by the main endpoint
    after_status["spec"]["interval"] = "3m"
    replaced = idle_kube.replace(FLUX_SOURCE, "st", "r", after_status)
    assert replaced["status"] == {"observedGeneration": 1}
    assert replaced["metadata"]["generation"] == 2


def test_optimistic_concurrency(idle_kube: Kube) -> None:
    idle_kube.create_namespace("occ")
    created = idle_kube.create(FLUX_SOURCE, "occ", git_repository("r", "occ"))
    idle_kube.patch(FLUX_SOURCE, "occ", "r", {"spec": {"interval": "2m"}})

    status, body = error_of(idle_kube.replace, FLUX_SOURCE, "occ", "r", created)
    assert (status, body["reason"]) == (409, "Conflict")
    assert body["message"] == (
        'Operation cannot be fulfilled on gitrepositories.source.toolkit.fluxcd.io "r": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )

    del created["metadata"]["resourceVersion"]
    status, body = error_of(idle_kube.replace, FLUX_SOURCE, "occ", "r", created)
    assert (status, body["reason"]) == (422, "Invalid")
    assert body["message"] == ('GitRepository.source.toolkit.fluxcd.io "r" is invalid: metadata.resourceVersion: '
                               "Invalid value: 0: must be specified for an update")

    namespace = idle_kube.read_namespace("occ")
    del namespace["metadata"]["resourceVersion"]
    namespace["metadata"]["labels"]["owner"] = "me"
    model = client.V1Namespace(metadata=client.V1ObjectMeta(name="occ", labels=namespace["metadata"]["labels"]))
    replaced = idle_kube.as_dict(idle_kube.core.replace_namespace("occ", model))  # unconditional: allowed
    assert replaced["metadata"]["labels"]["owner"] == "me"


# ---- Patches -------------------------------------------------------------------------------------------------


def test_json_patch_strategic_merge_and_unsupported_media_type(idle_kube: Kube) -> None:
    idle_kube.create_namespace("patches")
    idle_kube.create(FLUX_SOURCE, "patches", git_repository("r", "patches"))

    patched = as_object(idle_kube.patch(
        FLUX_SOURCE, "patches", "r", [{"op": "replace", "path": "/spec/ref/branch", "value": "dev"}],
        _content_type="application/json-patch+json",
    ))
    assert patched["spec"]["ref"] == {"branch": "dev"}
    assert patched["metadata"]["generation"] == 2

    namespace = idle_kube.as_dict(idle_kube.core.patch_namespace("patches", {"metadata": {"labels": {"team": "x"}}}))
    assert namespace["metadata"]["labels"]["team"] == "x"

    status, body = error_of(idle_kube.patch, FLUX_SOURCE, "patches", "r", {"spec": {}},
                            _content_type="application/strategic-merge-patch+json")
    assert (status, body["reason"]) == (415, "UnsupportedMediaType")


def test_bad_request_bodies(idle_kube: Kube) -> None:
    status, _, body = raw_request(idle_kube.cluster, "POST", "/api/v1/namespaces", b"{not json")
    assert (status, body["reason"]) == (400, "BadRequest")

    status, _, body = raw_request(idle_kube.cluster, "POST", "/api/v1/namespaces", b"[1, 2]")
    assert (status, body["reason"]) == (400, "BadRequest")


# ---- Server-side apply ---------------------------------------------------------------------------------------


def apply(kube: Kube, body: dict[str, Any], manager: str, force: bool = False) -> dict[str, Any]:
    meta = body["metadata"]
    kube.patch(FLUX_SOURCE, meta["namespace"], meta["name"], body, field_manager=manager, force=force,
               _content_type=APPLY)
    return kube.get(FLUX_SOURCE, meta["namespace"], meta["name"])


def test_server_side_apply_creates_and_is_idempotent(idle_kube: Kube) -> None:
    idle_kube.create_namespace("ssa")
    body = git_repository("r", "ssa")
    manifest = yaml.safe_dump(body).encode()
    status, _, created = raw_request(idle_kube.cluster, "PATCH",
                                     "/apis/source.toolkit.fluxcd.io/v1/namespaces/ssa/gitrepositories/r"
                                     "?fieldManager=provisioner", manifest, APPLY)
    assert status == 201  # the client maps 201 on PATCH to None, so prove it over plain HTTP
    assert created["metadata"]["generation"] == 1
    (entry,) = created["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"]) == ("provisioner", "Apply")
    assert entry["fieldsV1"] == {"f:spec": {".": {}, "f:interval": {}, "f:ref": {".": {}, "f:branch": {}},
                                            "f:url": {}}}

    again = apply(idle_kube, body, "provisioner", force=True)
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert again["metadata"]["managedFields"] == created["metadata"]["managedFields"]

    status, body_ = error_of(idle_kube.patch, FLUX_SOURCE, "ssa", "r", body, _content_type=APPLY)
    assert (status, body_["reason"]) == (422, "Invalid")
    assert "fieldManager: Required value" in body_["message"]


def test_server_side_apply_conflicts_force_and_removal(idle_kube: Kube) -> None:
    idle_kube.create_namespace("own")
    apply(idle_kube, git_repository("r", "own", timeout="30s"), "provisioner")

    rival = git_repository("r", "own")
    rival["spec"] = {"interval": "5m"}
    status, body = error_of(apply, idle_kube, rival, "rival")
    assert (status, body["reason"]) == (409, "Conflict")
    assert body["message"] == 'Apply failed with 1 conflict: conflict with "provisioner": .spec.interval'
    assert body["details"]["causes"] == [
        {"reason": "FieldManagerConflict", "message": 'conflict with "provisioner"', "field": ".spec.interval"}
    ]

    rival["spec"]["url"] = "http://127.0.0.1:1/repo.git"  # the same value as provisioner's: shared, no conflict
    forced = apply(idle_kube, rival, "rival", force=True)
    assert forced["spec"]["interval"] == "5m"
    owners = {e["manager"]: e["fieldsV1"]["f:spec"] for e in forced["metadata"]["managedFields"]}
    assert "f:interval" in owners["rival"] and "f:interval" not in owners["provisioner"]

    # provisioner stops applying timeout (only it owned it: removed) and url (co-owned by rival: kept)
    reduced = git_repository("r", "own")
    reduced["spec"] = {"ref": {"branch": "main"}}
    after = apply(idle_kube, reduced, "provisioner")
    assert "timeout" not in after["spec"]
    assert after["spec"]["url"] == "http://127.0.0.1:1/repo.git"
    assert after["spec"]["interval"] == "5m"

    idle_kube.patch(FLUX_SOURCE, "own", "r", {"spec": {"ref": {"branch": "edited"}}}, field_manager="kubectl")
    status, body = error_of(apply, idle_kube, reduced, "provisioner")
    assert status == 409
    assert re.fullmatch(r'Apply failed with 1 conflict: conflict with "kubectl" using source.toolkit.fluxcd.io/v1 '
                        r"at \S+Z: \.spec\.ref\.branch", body["message"])


def test_flux_specs_are_validated_like_the_crd_schema(idle_kube: Kube) -> None:
    idle_kube.create_namespace("schema")
    status, body = error_of(idle_kube.create, FLUX_SOURCE, "schema",
                            git_repository("r", "schema", url="ftp://example.com/repo"))
    assert status == 422
    assert body["message"] == (
        'GitRepository.source.toolkit.fluxcd.io "r" is invalid: spec.url: Invalid value: "ftp://example.com/repo": '
        "spec.url in body should match '^(http|https|ssh)://.*$'"
    )
    assert body["details"]["group"] == "source.toolkit.fluxcd.io"

    broken = kustomization("k", "schema")
    del broken["spec"]["prune"]
    del broken["spec"]["sourceRef"]["name"]
    status, body = error_of(idle_kube.create, FLUX_KUSTOMIZE, "schema", broken)
    assert status == 422
    assert [(c["field"], c["reason"]) for c in body["details"]["causes"]] == [
        ("spec.prune", "FieldValueRequired"), ("spec.sourceRef.name", "FieldValueRequired")]
    assert body["message"].startswith('Kustomization.kustomize.toolkit.fluxcd.io "k" is invalid: [spec.prune: ')

    status, body = error_of(idle_kube.create, FLUX_KUSTOMIZE, "schema", kustomization("Not_Valid", "schema"))
    assert status == 422
    assert "a lowercase RFC 1123 subdomain must consist of" in body["message"]


# ---- Deletion ------------------------------------------------------------------------------------------------


def test_finalizers_hold_an_object_until_removed(idle_kube: Kube) -> None:
    idle_kube.create_namespace("fin")
    body = git_repository("r", "fin")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    idle_kube.create(FLUX_SOURCE, "fin", body)

    deleted = idle_kube.delete(FLUX_SOURCE, "fin", "r", propagation_policy="Foreground")
    assert RFC3339_Z.match(deleted["metadata"]["deletionTimestamp"])
    assert deleted["metadata"]["deletionGracePeriodSeconds"] == 0
    still = idle_kube.get(FLUX_SOURCE, "fin", "r")
    assert still["metadata"]["deletionTimestamp"] == deleted["metadata"]["deletionTimestamp"]

    status, body_ = error_of(idle_kube.patch, FLUX_SOURCE, "fin", "r",
                             {"metadata": {"finalizers": ["example.com/hold", "another"]}})
    assert (status, body_["reason"]) == (422, "Invalid")

    idle_kube.patch(FLUX_SOURCE, "fin", "r", {"metadata": {"finalizers": None}})
    assert error_of(idle_kube.get, FLUX_SOURCE, "fin", "r")[0] == 404

    idle_kube.create(FLUX_SOURCE, "fin", git_repository("plain", "fin"))
    idle_kube.delete(FLUX_SOURCE, "fin", "plain")
    assert error_of(idle_kube.get, FLUX_SOURCE, "fin", "plain")[0] == 404


def test_namespace_termination(idle_kube: Kube) -> None:
    idle_kube.create_namespace("doomed")
    held = git_repository("held", "doomed")
    held["metadata"]["finalizers"] = ["finalizers.fluxcd.io"]
    idle_kube.create(FLUX_SOURCE, "doomed", held)
    idle_kube.create(FLUX_SOURCE, "doomed", git_repository("free", "doomed"))

    # The typed client expects a Status here, so it hands back the Namespace kube sends as a plain dict.
    response = as_object(idle_kube.core.delete_namespace(
        "doomed", body=client.V1DeleteOptions(propagation_policy="Background")))
    assert response["status"]["phase"] == "Terminating"
    assert response["metadata"]["deletionTimestamp"]

    status, body = error_of(idle_kube.create, FLUX_SOURCE, "doomed", git_repository("late", "doomed"))
    assert (status, body["reason"]) == (403, "Forbidden")
    assert body["message"] == ('gitrepositories.source.toolkit.fluxcd.io "late" is forbidden: unable to create new '
                               "content in namespace doomed because it is being terminated")

    wait_for(lambda: status_of(idle_kube.get, FLUX_SOURCE, "doomed", "free") == 404, what="content removal")
    assert idle_kube.get(FLUX_SOURCE, "doomed", "held")["metadata"]["deletionTimestamp"]
    namespace = idle_kube.read_namespace("doomed")
    assert namespace["status"]["phase"] == "Terminating"
    remaining = {c["type"]: c["message"] for c in namespace["status"]["conditions"]}
    assert remaining["NamespaceFinalizersRemaining"] == (
        "Some content in the namespace has finalizers remaining: finalizers.fluxcd.io in 1 resource instances")

    idle_kube.patch(FLUX_SOURCE, "doomed", "held", {"metadata": {"finalizers": []}})
    wait_for(lambda: status_of(idle_kube.core.read_namespace, "doomed") == 404, what="namespace removal")


# ---- Discovery, persistence, faults --------------------------------------------------------------------------


def test_discovery_endpoints(idle_kube: Kube) -> None:
    version = idle_kube.as_dict(client.VersionApi(idle_kube.api).get_code())
    assert version["gitVersion"].startswith("v1.")
    assert idle_kube.as_dict(client.CoreApi(idle_kube.api).get_api_versions())["versions"] == ["v1"]
    groups = idle_kube.as_dict(client.ApisApi(idle_kube.api).get_api_versions())["groups"]
    assert {"source.toolkit.fluxcd.io", "kustomize.toolkit.fluxcd.io"} <= {g["name"] for g in groups}
    resources = idle_kube.as_dict(idle_kube.core.get_api_resources())["resources"]
    assert "namespaces" in {r["name"] for r in resources}


def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "cluster.json"
    disabled = FluxSimulatorConfig(enabled=False)
    with SandboxCluster(state_file=state, flux=disabled) as first:
        kube = Kube.connect(first)
        kube.create_namespace("kept")
        created = kube.create(FLUX_SOURCE, "kept", git_repository("r", "kept"))
        last_rv = first.store.resource_version
    assert state.is_file()

    with SandboxCluster(state_file=state, flux=disabled) as second:
        kube = Kube.connect(second)
        assert kube.get(FLUX_SOURCE, "kept", "r") == created
        assert second.store.resource_version == last_rv
        updated = as_object(kube.patch(FLUX_SOURCE, "kept", "r", {"spec": {"interval": "2m"}}))
        assert int(updated["metadata"]["resourceVersion"]) > int(last_rv)


def test_debounced_saves_happen_while_running(tmp_path: Path) -> None:
    state = tmp_path / "live.json"
    with SandboxCluster(state_file=state, flux=FluxSimulatorConfig(enabled=False)) as cluster:
        Kube.connect(cluster).create_namespace("saved")
        saved = wait_for(lambda: state.is_file() and "saved" in state.read_text(), what="a debounced save")
        assert saved


def test_fault_injection(idle_kube: Kube) -> None:
    faults = idle_kube.cluster.faults
    faults.configure(error_rate=1.0)
    status, body = error_of(idle_kube.core.list_namespace)
    assert (status, body["reason"]) == (500, "InternalError")

    faults.configure(error_rate=0.0, throttle_rate=1.0, retry_after_seconds=2)
    status, headers, body = raw_request(idle_kube.cluster, "GET", "/api/v1/namespaces")
    assert (status, body["reason"], headers["Retry-After"]) == (429, "TooManyRequests", "2")

    faults.configure(throttle_rate=0.0, timeout_rate=1.0, timeout_seconds=1.0)
    with pytest.raises(urllib3.exceptions.MaxRetryError):  # urllib3 retries the read timeouts, then gives up
        idle_kube.core.list_namespace(_request_timeout=0.2)

    faults.reset()
    assert idle_kube.as_dict(idle_kube.core.list_namespace())["items"] == []
    assert faults.injected["error"] == 1 and faults.injected["throttle"] == 1
    assert faults.injected["timeout"] >= 1


def test_namespace_server_side_apply_is_idempotent(idle_kube: Kube) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "applied", "labels": {"app.kubernetes.io/managed-by": "provisioner"}}}

    def apply_namespace() -> dict[str, Any]:
        applied = idle_kube.core.patch_namespace("applied", body, field_manager="provisioner", force=True,
                                                 _content_type=APPLY)
        return idle_kube.as_dict(applied)

    first, second = apply_namespace(), apply_namespace()
    assert first["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]
    assert second["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "provisioner",
                                            "kubernetes.io/metadata.name": "applied"}
    assert (second["spec"], second["status"]) == ({"finalizers": ["kubernetes"]}, {"phase": "Active"})
