"""The project routes on the real stack: start, repeat, conflict, read, list, tear down, and operator
decisions. Flux (simulated) is held where a run must still be running when it is looked at."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from provisioner.api import create_app
from provisioner.api import progress as progress_module
from provisioner.contracts import PROVISIONING_STEPS, TEARDOWN_STEPS, ProjectStatus, StepName
from tests.api.conftest import API_BASE_URL, TOKEN, Stack, project_body, unique_slug

WAIT_SECONDS = 30.0


async def project(api: httpx.AsyncClient, slug: str) -> dict[str, Any]:
    response = await api.get(f"/projects/{slug}")
    assert response.status_code == 200, response.text
    detail: dict[str, Any] = response.json()
    return detail


async def wait_for(api: httpx.AsyncClient, slug: str, status: ProjectStatus) -> dict[str, Any]:
    """Poll GET /projects/{slug} until the progress of its latest operation has `status`."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        detail = await project(api, slug)
        if detail["progress"] is not None and detail["progress"]["status"] == status.value:
            return detail
        assert time.monotonic() < deadline, f"{slug} never reached {status.value}: {detail['progress']}"
        await asyncio.sleep(0.1)


async def wait_for_step(api: httpx.AsyncClient, slug: str, step: StepName) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        detail = await project(api, slug)
        steps = {s["name"]: s for s in (detail["progress"] or {}).get("steps", [])}
        if steps.get(step.value, {}).get("state") == "running":
            return detail
        assert time.monotonic() < deadline, f"{slug} never ran {step.value}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def held_project(api: httpx.AsyncClient, stack: Stack) -> AsyncIterator[str]:
    """A project whose provisioning runs until released: Flux never reports Ready for it meanwhile."""
    slug = unique_slug("held")
    stack.cluster.flux.hold(namespace=slug)
    try:
        yield slug
    finally:
        stack.cluster.flux.release(namespace=slug)


async def test_post_starts_provisioning_and_a_repeat_joins_the_same_run(
    api: httpx.AsyncClient, stack: Stack, held_project: str
) -> None:
    slug = held_project
    first = await api.post("/projects", json=project_body(slug))
    assert first.status_code == 202, first.text
    assert first.headers["location"] == f"/projects/{slug}"
    accepted = first.json()
    assert accepted["slug"] == slug
    assert accepted["workflow_id"] == f"project-{slug}"
    assert accepted["run_id"]
    assert accepted["links"] == {"project": f"/projects/{slug}", "events": f"/projects/{slug}/events"}

    await wait_for_step(api, slug, StepName.AWAIT_READY)
    again = await api.post("/projects", json=project_body(slug))
    assert again.status_code == 202
    assert again.headers["location"] == f"/projects/{slug}"
    assert again.json()["run_id"] == accepted["run_id"]

    different = await api.post("/projects", json=project_body(slug, display_name="Someone else's project"))
    assert different.status_code == 409
    assert "another display_name" in different.json()["detail"]

    stack.cluster.flux.release(namespace=slug)
    result = await stack.provisioner.wait(slug)
    assert result.status is ProjectStatus.READY


async def test_get_shows_the_record_and_the_live_progress(
    api: httpx.AsyncClient, stack: Stack, held_project: str
) -> None:
    slug = held_project
    assert (await api.post("/projects", json=project_body(slug))).status_code == 202

    running = await wait_for_step(api, slug, StepName.AWAIT_READY)
    progress = running["progress"]
    assert progress["status"] == "provisioning"
    assert progress["workflow_id"] == f"project-{slug}"
    assert [step["name"] for step in progress["steps"]] == [step.value for step in PROVISIONING_STEPS]
    assert 0 < progress["percent"] < 100
    assert running["record"]["status"] == "provisioning"  # written before the Flux resources are applied
    assert progress["operation"] == "create"

    stack.cluster.flux.release(namespace=slug)
    done = await wait_for(api, slug, ProjectStatus.READY)
    assert done["progress"]["percent"] == 100
    assert {step["state"] for step in done["progress"]["steps"]} == {"succeeded"}
    record = done["record"]
    assert record["status"] == "ready"
    assert record["workflow_id"] == f"project-{slug}"
    assert record["repo_url"].endswith(f"/{slug}.git")
    # ISO 8601 with an explicit UTC offset, for records and for progress alike.
    for stamp in (record["created_at"], record["ready_at"], done["progress"]["updated_at"]):
        assert datetime.fromisoformat(stamp).utcoffset() is not None and stamp.endswith("Z")


async def test_an_unknown_project_is_404(api: httpx.AsyncClient) -> None:
    for method, path in [("GET", "/projects/never-made"), ("DELETE", "/projects/never-made")]:
        response = await api.request(method, path)
        assert response.status_code == 404
        assert "never-made" in response.json()["detail"]


async def test_list_filters_by_status_and_pages_newest_first(api: httpx.AsyncClient, stack: Stack) -> None:
    slugs = [unique_slug("listed") for _ in range(3)]
    for index, slug in enumerate(slugs):  # one after the other, so that their creation order is known
        body = project_body(slug, wait_for_ready=index != 1)  # the middle one ends `provisioned`
        assert (await api.post("/projects", json=body)).status_code == 202
        await stack.provisioner.wait(slug)

    provisioned = (await api.get("/projects", params={"status": "provisioned", "limit": 500})).json()
    assert slugs[1] in [item["slug"] for item in provisioned["items"]]
    assert {item["status"] for item in provisioned["items"]} == {"provisioned"}
    ready = [item["slug"] for item in (await api.get("/projects?status=ready&limit=500")).json()["items"]]
    assert slugs[0] in ready and slugs[2] in ready and slugs[1] not in ready

    everything = [item["slug"] for item in (await api.get("/projects?limit=500")).json()["items"]]
    ours = [slug for slug in everything if slug in slugs]
    assert ours == list(reversed(slugs))

    first_page = (await api.get("/projects?limit=2")).json()
    second_page = (await api.get("/projects?limit=2&offset=2")).json()
    assert (first_page["limit"], first_page["offset"], first_page["next_offset"]) == (2, 0, 2)
    assert [item["slug"] for item in first_page["items"] + second_page["items"]] == everything[:4]
    last_page = (await api.get(f"/projects?limit=2&offset={len(everything) - 1}")).json()
    assert len(last_page["items"]) == 1 and last_page["next_offset"] is None


async def test_delete_tears_the_project_down(api: httpx.AsyncClient, stack: Stack) -> None:
    slug = unique_slug("doomed")
    assert (await api.post("/projects", json=project_body(slug))).status_code == 202
    await stack.provisioner.wait(slug)

    response = await api.delete(f"/projects/{slug}")
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/projects/{slug}"
    assert response.json()["workflow_id"] == f"project-{slug}"

    gone = await wait_for(api, slug, ProjectStatus.DELETED)
    assert [step["name"] for step in gone["progress"]["steps"]] == [step.value for step in TEARDOWN_STEPS]
    assert gone["progress"]["operation"] == "teardown"  # the latest operation of the project
    assert gone["record"]["status"] == "deleted"


async def test_delete_while_provisioning_is_a_conflict(api: httpx.AsyncClient, stack: Stack, held_project: str) -> None:
    slug = held_project
    assert (await api.post("/projects", json=project_body(slug))).status_code == 202
    await wait_for_step(api, slug, StepName.AWAIT_READY)
    response = await api.delete(f"/projects/{slug}?delete_repository=true")
    assert response.status_code == 409
    assert "being created" in response.json()["detail"]
    assert (await project(api, slug))["progress"]["operation"] == "create"


async def test_abort_of_a_stalled_project_rolls_it_back(api: httpx.AsyncClient, stack: Stack) -> None:
    slug = unique_slug("abort")
    stack.cluster.flux.stall(slug, slug, reason="BuildFailed", message="kustomize build failed")
    try:
        assert (await api.post("/projects", json=project_body(slug))).status_code == 202
        waiting = await wait_for(api, slug, ProjectStatus.AWAITING_DECISION)
        assert waiting["progress"]["decision"]["step"] == StepName.AWAIT_READY.value
        assert waiting["progress"]["decision"]["default_action"] == "abort"
        assert waiting["record"]["status"] == ProjectStatus.AWAITING_DECISION.value

        aborted = await api.post(f"/projects/{slug}/abort", json={"reason": "wrong overlay"})
        assert aborted.status_code == 202, aborted.text
        failed = await wait_for(api, slug, ProjectStatus.FAILED)
    finally:
        stack.cluster.flux.unstall(slug, slug)
    assert failed["record"]["status"] == ProjectStatus.ROLLED_BACK.value
    assert "wrong overlay" in failed["record"]["last_message"]
    assert not stack.namespace_exists(slug)
    # Decided already: a second decision is a conflict.
    again = await api.post(f"/projects/{slug}/retry")
    assert again.status_code == 409


@pytest.mark.parametrize("operation", ["retry", "abort"])
async def test_decisions_need_a_run_awaiting_one(
    api: httpx.AsyncClient, held_project: str, operation: str
) -> None:
    missing = await api.post(f"/projects/never-{uuid.uuid4().hex[:6]}/{operation}")
    assert missing.status_code == 404
    assert "has no run" in missing.json()["detail"]

    assert (await api.post("/projects", json=project_body(held_project))).status_code == 202
    await wait_for_step(api, held_project, StepName.AWAIT_READY)
    busy = await api.post(f"/projects/{held_project}/{operation}")
    assert busy.status_code == 409
    assert "is not awaiting a decision" in busy.json()["detail"]


async def test_a_progress_no_worker_answers_is_503_with_the_reason(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "QUERY_TIMEOUT", timedelta(milliseconds=500))
    unpolled = replace(stack.settings, task_queue=f"nobody-{uuid.uuid4().hex[:6]}")
    app = create_app(unpolled, client=stack.temporal, tokens=frozenset({TOKEN}))
    slug = unique_slug("orphan")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=API_BASE_URL, headers=headers) as api:
        assert (await api.post("/projects", json=project_body(slug))).status_code == 202
        try:
            response = await api.get(f"/projects/{slug}")
        finally:
            await stack.provisioner.handle(slug).terminate("test over")
    assert response.status_code == 503
    assert f"is a worker polling task queue {unpolled.task_queue!r}?" in response.json()["detail"]


async def test_patch_updates_the_project_to_a_new_commit_and_a_second_post_is_refused(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    slug = unique_slug("patched")
    assert (await api.post("/projects", json=project_body(slug))).status_code == 202
    created = await stack.provisioner.wait(slug)

    preview = await api.patch(f"/projects/{slug}", params={"dry_run": "true"}, json={"parameters": {"replicas": 4}})
    assert preview.status_code == 200, preview.text
    assert preview.json()["base_commit"] == created.commit_sha and preview.json()["diff"].startswith("diff --git")
    assert (await project(api, slug))["progress"]["operation"] == "create"  # the dry run started no operation

    accepted = await api.patch(f"/projects/{slug}", json={"parameters": {"replicas": 4}})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["workflow_id"] == f"project-{slug}"
    done = await wait_for(api, slug, ProjectStatus.READY)
    record, progress = done["record"], done["progress"]
    assert progress["operation"] == "update" and record["operation"] == "update"
    assert record["commit_sha"] != created.commit_sha and record["parameters"]["replicas"] == 4
    assert record["applied_revision"] == progress["applied_revision"] == f"main@sha1:{record['commit_sha']}"

    refused = await api.post("/projects", json=project_body(slug, parameters={"owner": "payments", "replicas": 2}))
    assert refused.status_code == 409
    assert "parameters.replicas" in refused.json()["detail"]


async def test_patch_of_no_project_is_404_and_bad_parameters_are_422(api: httpx.AsyncClient, stack: Stack) -> None:
    missing = await api.patch(f"/projects/{unique_slug('ghost')}", json={"parameters": {"replicas": 3}})
    assert missing.status_code == 404
    slug = unique_slug("strict")
    assert (await api.post("/projects", json=project_body(slug))).status_code == 202
    await stack.provisioner.wait(slug)
    invalid = await api.patch(f"/projects/{slug}", json={"parameters": {"replicas": 99, "colour": "red"}})
    assert invalid.status_code == 422, invalid.text
    fields = {item["field"] for item in invalid.json()["detail"]}
    assert fields == {"parameters.replicas", "parameters.colour"}
    template = await api.patch(f"/projects/{slug}", json={"template": "worker"})
    assert template.status_code == 422  # the template cannot change through an update
