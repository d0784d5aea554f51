"""Request validation that every entry point (client, API, workflow) shares."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from provisioner.contracts import (
    MAX_DECISION_TIMEOUT,
    SLUG_MAX_LENGTH,
    SLUG_MIN_LENGTH,
    FailureAction,
    FailurePolicy,
    ProjectSpec,
    ProjectUpdate,
    TeardownSpec,
    validate_spec,
    validate_teardown_spec,
    validate_update,
)


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


# ---- The slug: a whole DNS-1123 label of 3 to 40 characters ------------------------------------------------


@pytest.mark.parametrize("slug", ["billing-api\n", "billing-api\nkube-system", "\nbilling-api", "billing-api "])
def test_a_slug_is_matched_whole_so_a_trailing_newline_is_refused(slug: str) -> None:
    # `$` also matches before a final newline: only a full match keeps "billing-api\n" out of namespace names.
    [error] = validate_spec(ProjectSpec(slug, "Billing API", "web-service"))
    assert error.field == "slug" and "lower case letters" in error.message
    assert [e.field for e in validate_teardown_spec(TeardownSpec(slug))] == ["slug"]
    assert [e.field for e in validate_update(ProjectUpdate(slug))] == ["slug"]


@pytest.mark.parametrize("slug", ["abc", "a" * 39 + "z", "a" + "-" * 38 + "z"], ids=["minimum", "maximum", "dashes"])
def test_slugs_at_the_length_limits_are_accepted(slug: str) -> None:
    assert SLUG_MIN_LENGTH == 3 and SLUG_MAX_LENGTH == 40
    assert validate_spec(ProjectSpec(slug, "Billing API", "web-service")) == []
    assert validate_teardown_spec(TeardownSpec(slug)) == []


@pytest.mark.parametrize("slug", ["ab", "a" * 40 + "b"], ids=["one-short", "one-over"])
def test_slugs_one_past_the_length_limits_are_refused_for_their_length(slug: str) -> None:
    assert [(e.field, e.message) for e in validate_spec(ProjectSpec(slug, "Billing API", "web-service"))] == [
        ("slug", "must be 3 to 40 characters long")
    ]


# ---- The failure policy (on_failure): its own rules, for a create and an update alike ----------------------


def policy_errors(policy: Any) -> list[tuple[str, str]]:
    """The errors of `policy`, which must be the same whether a create or an update carries it."""
    spec = ProjectSpec("billing-api", "Billing API", "web-service", on_failure=policy)
    from_spec = [(e.field, e.message) for e in validate_spec(spec)]
    from_update = [(e.field, e.message) for e in validate_update(ProjectUpdate("billing-api", on_failure=policy))]
    assert from_spec == from_update
    return from_spec


def test_the_default_failure_policy_is_valid() -> None:
    assert FailurePolicy() == FailurePolicy(timedelta(hours=24), FailureAction.ABORT, delete_repository_on_abort=False)
    assert policy_errors(FailurePolicy()) == []


@pytest.mark.parametrize("action", [FailureAction.ABORT, FailureAction.LEAVE, "abort", "leave"])
def test_abort_and_leave_are_valid_default_actions(action: Any) -> None:
    assert policy_errors(FailurePolicy(default_action=action)) == []


@pytest.mark.parametrize("action", [FailureAction.RETRY, "retry", "ABORT", "", None])
def test_any_other_default_action_is_refused(action: Any) -> None:
    # A default retry would run the failed step again and again, for ever, on a failure that needs a human.
    assert policy_errors(FailurePolicy(default_action=action)) == [
        ("on_failure.default_action", "must be 'abort' or 'leave'")
    ]


@pytest.mark.parametrize(
    "timeout", [timedelta(0), timedelta(seconds=1), MAX_DECISION_TIMEOUT], ids=["zero", "second", "maximum"]
)
def test_decision_timeouts_from_zero_to_the_maximum_are_valid(timeout: timedelta) -> None:
    assert timedelta(days=30) == MAX_DECISION_TIMEOUT  # the limit these cases sit on
    assert policy_errors(FailurePolicy(decision_timeout=timeout)) == []


@pytest.mark.parametrize(
    "timeout",
    [-timedelta(microseconds=1), MAX_DECISION_TIMEOUT + timedelta(microseconds=1), 3600, None],
    ids=["negative", "over-the-maximum", "a-number", "none"],
)
def test_other_decision_timeouts_are_refused(timeout: Any) -> None:
    assert policy_errors(FailurePolicy(decision_timeout=timeout)) == [
        ("on_failure.decision_timeout", "must be between 0 s and 30 days")
    ]


def test_every_bad_field_of_a_policy_is_reported_at_once_with_the_rest_of_the_request() -> None:
    policy = FailurePolicy(decision_timeout=timedelta(days=31), default_action=FailureAction.RETRY)
    spec = ProjectSpec("billing-api", "Billing API", "web-service", ready_timeout=timedelta(0), on_failure=policy)
    assert fields(spec) == {"on_failure.decision_timeout", "on_failure.default_action", "ready_timeout"}


@pytest.mark.parametrize("policy", [None, "abort", {"default_action": "abort"}])
def test_an_on_failure_that_is_not_a_policy_is_refused(policy: Any) -> None:
    assert policy_errors(policy) == [("on_failure", "must be a failure policy")]
