"""Request validation that every entry point (client, API, workflow) shares."""

from __future__ import annotations

from datetime import timedelta

import pytest

from provisioner.contracts import ProjectSpec, TeardownSpec, validate_spec, validate_teardown_spec


def fields(spec: ProjectSpec) -> set[str]:
    return {error.field for error in validate_spec(spec)}


def test_a_good_request_has_no_errors() -> None:
    assert validate_spec(ProjectSpec("billing-api", "Billing API", "web-service", {"owner": "payments"})) == []


@pytest.mark.parametrize("slug", ["default", "flux-system", "kube-system", "kube-public", "flux-apps", "system-x"])
def test_slugs_naming_the_clusters_own_namespaces_are_refused(slug: str) -> None:
    errors = validate_spec(ProjectSpec(slug, "x", "web-service"))
    assert [(e.field, "reserved" in e.message) for e in errors] == [("slug", True)]
    assert [e.field for e in validate_teardown_spec(TeardownSpec(slug))] == ["slug"]


@pytest.mark.parametrize("slug", ["ab", "Billing", "9lives", "ends-", "a_b", "x" * 41])
def test_malformed_slugs_are_refused(slug: str) -> None:
    assert fields(ProjectSpec(slug, "x", "web-service")) == {"slug"}


def test_every_bad_field_is_reported_at_once() -> None:
    spec = ProjectSpec(
        "ok-slug", " ", "../x", {"bad name": 1, "huge": "x" * 5000}, "Prod!", ready_timeout=timedelta(hours=1)
    )
    assert fields(spec) == {
        "display_name",
        "template",
        "environment",
        "parameters.bad name",
        "parameters.huge",
        "ready_timeout",
    }
