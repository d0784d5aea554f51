"""Request validation that every entry point (client, API, workflow) shares."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from provisioner.contracts import (
    MAX_DECISION_TIMEOUT,
    MAX_DELETION_TIMEOUT,
    MAX_PARAMETERS_TOTAL_LENGTH,
    MIN_DELETION_TIMEOUT,
    SLUG_MAX_LENGTH,
    SLUG_MIN_LENGTH,
    FailureAction,
    FailurePolicy,
    ParameterValue,
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


# ---- A teardown: the slug, and a deletion timeout from 1 s to 60 min ----------------------------------------


def teardown_errors(spec: TeardownSpec) -> list[tuple[str, str]]:
    return [(e.field, e.message) for e in validate_teardown_spec(spec)]


@pytest.mark.parametrize(
    "timeout", [MIN_DELETION_TIMEOUT, timedelta(minutes=5), MAX_DELETION_TIMEOUT], ids=["minimum", "default", "maximum"]
)
def test_deletion_timeouts_from_the_minimum_to_the_maximum_are_valid(timeout: timedelta) -> None:
    assert (timedelta(seconds=1), timedelta(hours=1)) == (MIN_DELETION_TIMEOUT, MAX_DELETION_TIMEOUT)
    assert teardown_errors(TeardownSpec("billing-api", deletion_timeout=timeout)) == []


@pytest.mark.parametrize(
    "timeout",
    [
        MIN_DELETION_TIMEOUT - timedelta(microseconds=1),
        timedelta(0),
        MAX_DELETION_TIMEOUT + timedelta(microseconds=1),
        300,
        None,
    ],
    ids=["under-the-minimum", "zero", "over-the-maximum", "a-number", "none"],
)
def test_other_deletion_timeouts_are_refused(timeout: Any) -> None:
    assert teardown_errors(TeardownSpec("billing-api", deletion_timeout=timeout)) == [
        ("deletion_timeout", "must be between 1 s and 60 min")
    ]


def test_a_teardown_reports_a_bad_slug_and_a_bad_timeout_at_once() -> None:
    assert teardown_errors(TeardownSpec("ab", deletion_timeout=timedelta(days=1))) == [
        ("slug", "must be 3 to 40 characters long"),
        ("deletion_timeout", "must be between 1 s and 60 min"),
    ]


# ---- An update: only what it changes is checked; `unset` names parameters it does not also set ---------------


def update_errors(change: ProjectUpdate) -> list[tuple[str, str]]:
    return [(e.field, e.message) for e in validate_update(change)]


def test_a_good_update_has_no_errors() -> None:
    change = ProjectUpdate(
        "billing-api", {"replicas": 3}, unset=["owner", "_old_1"], environment="staging", display_name="Billing"
    )
    assert update_errors(change) == []


def test_an_update_checks_the_display_name_it_sets() -> None:
    assert update_errors(ProjectUpdate("billing-api", display_name=" ")) == [("display_name", "must not be empty")]
    assert update_errors(ProjectUpdate("billing-api", display_name=5)) == [  # type: ignore[arg-type]
        ("display_name", "must be a string")
    ]


def test_an_update_checks_the_environment_it_sets() -> None:
    assert update_errors(ProjectUpdate("billing-api", environment="Prod!")) == [
        ("environment", "must be an environment name such as 'development' (at most 63 characters)")
    ]


@pytest.mark.parametrize(
    "unset",
    [["bad name"], ["owner", "9lives"], ["owner", 1], [None], "owner", ("owner",), None],
    ids=["bad-name", "one-bad-name", "a-number", "none-in-list", "a-string", "a-tuple", "none"],
)
def test_an_unset_that_is_not_a_list_of_parameter_names_is_refused(unset: Any) -> None:
    assert update_errors(ProjectUpdate("billing-api", unset=unset)) == [("unset", "must be a list of parameter names")]


def test_an_update_may_not_unset_a_parameter_it_also_sets() -> None:
    change = ProjectUpdate("billing-api", {"replicas": 3, "owner": "payments"}, unset=["replicas", "tier"])
    assert update_errors(change) == [("unset", "must not name a parameter that the update also sets")]


def test_an_unset_beside_parameters_that_are_not_a_mapping_reports_only_the_parameters() -> None:
    change = ProjectUpdate("billing-api", ["replicas"], unset=["replicas"])  # type: ignore[arg-type]
    assert update_errors(change) == [("parameters", "must be a mapping of names to values")]
    change = ProjectUpdate("billing-api", None, unset=["replicas"])  # type: ignore[arg-type]
    assert update_errors(change) == [("parameters", "must be a mapping of names to values")]


# ---- The display name, template and environment of a request -------------------------------------------------


def spec_errors(**changes: Any) -> list[tuple[str, str]]:
    spec = ProjectSpec("billing-api", "Billing API", "web-service")
    for name, value in changes.items():
        setattr(spec, name, value)
    return [(e.field, e.message) for e in validate_spec(spec)]


@pytest.mark.parametrize("name", ["B", "x" * 100, "Billing API (EU) — ünïcode"], ids=["one", "maximum", "unicode"])
def test_display_names_up_to_100_printable_characters_are_valid(name: str) -> None:
    assert spec_errors(display_name=name) == []
    assert update_errors(ProjectUpdate("billing-api", display_name=name)) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (None, "must be a string"),
        (7, "must be a string"),
        ("", "must not be empty"),
        (" \t ", "must not be empty"),
        ("x" * 101, "must be printable and at most 100 characters"),
        ("Billing\nAPI", "must be printable and at most 100 characters"),
        ("Billing\x1bAPI", "must be printable and at most 100 characters"),
    ],
    ids=["none", "a-number", "empty", "blank", "one-over", "a-newline", "an-escape"],
)
def test_other_display_names_are_refused(name: Any, message: str) -> None:
    assert spec_errors(display_name=name) == [("display_name", message)]
    if name is not None:  # an update without a display name keeps the project's
        assert update_errors(ProjectUpdate("billing-api", display_name=name)) == [("display_name", message)]


TEMPLATE_MESSAGE = "must be a template name such as 'web-service' (at most 63 characters)"
ENVIRONMENT_MESSAGE = "must be an environment name such as 'development' (at most 63 characters)"


@pytest.mark.parametrize("template", ["web-service", "a", "9", "a" * 63], ids=["usual", "one", "digit", "maximum"])
def test_template_names_up_to_63_characters_are_valid(template: str) -> None:
    assert spec_errors(template=template) == []


@pytest.mark.parametrize(
    "template",
    ["a" * 64, "", "../x", "Web", "web-", "web_service", "web-service\n", None, 7],
    ids=["one-over", "empty", "a-path", "upper-case", "trailing-dash", "underscore", "newline", "none", "a-number"],
)
def test_other_template_names_are_refused(template: Any) -> None:
    assert spec_errors(template=template) == [("template", TEMPLATE_MESSAGE)]


@pytest.mark.parametrize("environment", ["development", "a", "a" * 63], ids=["default", "one", "maximum"])
def test_environment_names_up_to_63_characters_are_valid(environment: str) -> None:
    assert spec_errors(environment=environment) == []
    assert update_errors(ProjectUpdate("billing-api", environment=environment)) == []


@pytest.mark.parametrize(
    "environment",
    ["a" * 64, "", "Prod", "9prod", "prod-", "prod\n", None, 7],
    ids=["one-over", "empty", "upper-case", "leading-digit", "trailing-dash", "newline", "none", "a-number"],
)
def test_other_environment_names_are_refused(environment: Any) -> None:
    assert spec_errors(environment=environment) == [("environment", ENVIRONMENT_MESSAGE)]


# ---- The slug's messages: what the user is told ---------------------------------------------------------------

SLUG_PATTERN_MESSAGE = (
    "must consist of lower case letters, digits or '-', start with a letter "
    "and end with a letter or digit (e.g. 'billing-api')"
)


@pytest.mark.parametrize("slug", [None, 123, ["billing-api"]], ids=["none", "a-number", "a-list"])
def test_a_slug_that_is_not_a_string_is_refused_for_its_length(slug: Any) -> None:
    assert spec_errors(slug=slug) == [("slug", "must be 3 to 40 characters long")]
    assert teardown_errors(TeardownSpec(slug)) == [("slug", "must be 3 to 40 characters long")]
    assert update_errors(ProjectUpdate(slug)) == [("slug", "must be 3 to 40 characters long")]


@pytest.mark.parametrize("slug", ["Billing", "9lives", "ends-", "a_b", "billing-api\n"])
def test_a_slug_that_is_not_a_dns_label_is_told_the_rule(slug: str) -> None:
    assert spec_errors(slug=slug) == [("slug", SLUG_PATTERN_MESSAGE)]
    assert teardown_errors(TeardownSpec(slug)) == [("slug", SLUG_PATTERN_MESSAGE)]


@pytest.mark.parametrize("slug", ["default", "flux-system", "kube-system", "flux-apps", "system-x"])
def test_a_reserved_slug_is_told_so_by_name(slug: str) -> None:
    assert spec_errors(slug=slug) == [("slug", f"'{slug}' is reserved for the cluster's own namespaces")]
    assert teardown_errors(TeardownSpec(slug)) == [("slug", f"'{slug}' is reserved for the cluster's own namespaces")]


@pytest.mark.parametrize("slug", ["kubernetes", "fluxcd", "systemd", "defaults", "my-kube-app", "app-flux-system"])
def test_slugs_that_only_resemble_the_reserved_ones_are_accepted(slug: str) -> None:
    assert spec_errors(slug=slug) == []
    assert teardown_errors(TeardownSpec(slug)) == []


# ---- Parameters: names, values, their number and their total size ---------------------------------------------


def parameter_errors(parameters: Any) -> list[tuple[str, str]]:
    """The errors of `parameters`, which must be the same whether a create or an update carries them."""
    from_spec = spec_errors(parameters=parameters)
    assert update_errors(ProjectUpdate("billing-api", parameters)) == from_spec
    return from_spec


@pytest.mark.parametrize("parameters", [None, ["replicas"], "replicas=3", 3], ids=["none", "a-list", "a-string", "int"])
def test_parameters_that_are_not_a_mapping_are_refused(parameters: Any) -> None:
    assert parameter_errors(parameters) == [("parameters", "must be a mapping of names to values")]


@pytest.mark.parametrize(
    "name", ["a", "_", "A_b9", "_" + "x" * 63, "replicas"], ids=["one", "underscore", "mixed", "maximum", "usual"]
)
def test_parameter_names_are_identifiers_of_up_to_64_characters(name: str) -> None:
    assert parameter_errors({name: 1}) == []


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("x" * 65, "x" * 65),
        ("9lives", "9lives"),
        ("bad-name", "bad-name"),
        ("", ""),
        ("owner\n", "owner\n"),
        (7, "7"),
        ("é", "é"),
        ("-" * 80, "-" * 80),
        ("-" * 81, "-" * 80 + "..."),
    ],
    ids=["one-over", "leading-digit", "dash", "empty", "newline", "a-number", "accent", "shown-whole", "shortened"],
)
def test_a_bad_parameter_name_is_reported_by_its_name_shortened_to_80_characters(name: Any, shown: str) -> None:
    assert parameter_errors({name: 1}) == [(f"parameters.{shown}", "is not a valid parameter name")]


def test_a_bad_name_is_reported_once_and_the_entries_after_it_are_still_checked() -> None:
    parameters = {"bad name": None, "owner": None, "replicas": 3}
    assert parameter_errors(parameters) == [
        ("parameters.bad name", "is not a valid parameter name"),
        ("parameters.owner", "must be a string, number or boolean"),
    ]


def test_up_to_64_parameters_are_valid_and_more_are_refused() -> None:
    assert parameter_errors({f"p{i}": i for i in range(64)}) == []
    assert parameter_errors({f"p{i}": i for i in range(65)}) == [("parameters", "must hold at most 64 entries")]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 4096,
        "ünïcode ✓",
        True,
        False,
        0,
        -(2**53 - 1),
        2**53 - 1,
        0.5,
        -1e308,
    ],
    ids=["empty", "longest", "unicode", "true", "false", "zero", "lowest", "highest", "float", "huge-float"],
)
def test_strings_numbers_and_booleans_are_valid_parameter_values(value: Any) -> None:
    assert parameter_errors({"value": value}) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x" * 4097, "must be at most 4096 characters"),
        ("a\ud800b", "must be valid Unicode text (it holds a lone surrogate)"),
        (2**53, "must be between -9007199254740991 and 9007199254740991"),
        (-(2**53), "must be between -9007199254740991 and 9007199254740991"),
        (10**5000, "must be between -9007199254740991 and 9007199254740991"),
        (float("inf"), "must be a finite number"),
        (float("-inf"), "must be a finite number"),
        (float("nan"), "must be a finite number"),
        (None, "must be a string, number or boolean"),
        (["a"], "must be a string, number or boolean"),
        ({"a": 1}, "must be a string, number or boolean"),
        (b"bytes", "must be a string, number or boolean"),
    ],
    ids=[
        "too-long",
        "lone-surrogate",
        "over-the-safe-integers",
        "under-the-safe-integers",
        "enormous",
        "infinity",
        "minus-infinity",
        "nan",
        "none",
        "a-list",
        "a-mapping",
        "bytes",
    ],
)
def test_other_parameter_values_are_refused_saying_why(value: Any, message: str) -> None:
    assert parameter_errors({"value": value}) == [("parameters.value", message)]


def parameters_of_total_length(total: int) -> dict[str, ParameterValue]:
    """Parameters whose names and string values add up to `total` characters (an integer counts its name only)."""
    parameters: dict[str, ParameterValue] = {"n": 12345}  # counts 1
    left = total - 1
    index = 0
    while left:
        name = f"p{index:02d}"
        size = min(4096, left - len(name))
        parameters[name] = "x" * size
        left -= len(name) + size
        index += 1
    return parameters


def test_parameters_totalling_64_kib_of_names_and_values_are_valid_and_one_character_more_is_refused() -> None:
    assert MAX_PARAMETERS_TOTAL_LENGTH == 65536
    assert parameter_errors(parameters_of_total_length(65536)) == []
    assert parameter_errors(parameters_of_total_length(65537)) == [
        ("parameters", "must total at most 65536 characters of names and values")
    ]


def test_an_oversized_value_is_reported_once_and_does_not_count_towards_the_total() -> None:
    parameters = parameters_of_total_length(65536)
    parameters["huge"] = "x" * 4097
    parameters["bad name"] = "x" * 4000
    assert parameter_errors(parameters) == [
        ("parameters.huge", "must be at most 4096 characters"),
        ("parameters.bad name", "is not a valid parameter name"),
    ]


# ---- The ready timeout: from 1 s to 30 min ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "timeout", [timedelta(seconds=1), timedelta(minutes=5), timedelta(minutes=30)], ids=["minimum", "default", "max"]
)
def test_ready_timeouts_from_one_second_to_30_minutes_are_valid(timeout: timedelta) -> None:
    assert spec_errors(ready_timeout=timeout) == []
    assert update_errors(ProjectUpdate("billing-api", ready_timeout=timeout)) == []


@pytest.mark.parametrize(
    "timeout",
    [timedelta(seconds=1) - timedelta(microseconds=1), timedelta(minutes=30, microseconds=1), 60, None],
    ids=["under-the-minimum", "over-the-maximum", "a-number", "none"],
)
def test_other_ready_timeouts_are_refused(timeout: Any) -> None:
    assert spec_errors(ready_timeout=timeout) == [("ready_timeout", "must be between 1 s and 30 min")]
    assert update_errors(ProjectUpdate("billing-api", ready_timeout=timeout)) == [
        ("ready_timeout", "must be between 1 s and 30 min")
    ]


def test_a_request_reports_its_errors_in_field_order() -> None:
    spec = ProjectSpec(
        "ab",
        "",
        "Web",
        {"bad name": 1},
        "Prod",
        ready_timeout=timedelta(0),
        on_failure=FailurePolicy(default_action=FailureAction.RETRY),
    )
    assert [e.field for e in validate_spec(spec)] == [
        "slug",
        "display_name",
        "template",
        "environment",
        "parameters.bad name",
        "on_failure.default_action",
        "ready_timeout",
    ]
    change = ProjectUpdate(
        "ab",
        {"bad name": 1},
        unset=[1],  # type: ignore[list-item]
        environment="Prod",
        display_name="",
        ready_timeout=timedelta(0),
        on_failure=FailurePolicy(default_action=FailureAction.RETRY),
    )
    assert [e.field for e in validate_update(change)] == [
        "slug",
        "display_name",
        "environment",
        "parameters.bad name",
        "unset",
        "on_failure.default_action",
        "ready_timeout",
    ]
