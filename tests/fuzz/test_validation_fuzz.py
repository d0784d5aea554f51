"""Fuzzing the request validation shared by every entry point (validate_spec) and the template's own checks
(render_project, what the validate_template activity runs), without any service.

Properties: a valid request passes, renders and reaches a worker unchanged; a corrupted one is refused with errors
naming exactly its corrupted fields, briefly; whatever the input, validation answers with a field error or a
template error, never another exception; a name validation accepts is one Kubernetes, the database and the
filesystem accept too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from provisioner.contracts import (
    DISPLAY_NAME_MAX_LENGTH,
    MAX_READY_TIMEOUT,
    MIN_READY_TIMEOUT,
    SLUG_MAX_LENGTH,
    Parameters,
    ProjectSpec,
    is_template_name,
    project_workflow_id,
    slug_errors,
    validate_spec,
)
from provisioner.db.models import ENVIRONMENT_LENGTH, SLUG_LENGTH, TEMPLATE_LENGTH, WORKFLOW_ID_LENGTH
from provisioner.templating import InvalidInput, TemplateError, UnknownTemplate, load_template, render_project
from tests.fuzz.checks import assert_clear, error_heads, round_trip
from tests.fuzz.strategies import (
    LONE_SURROGATES,
    SHIPPED_TEMPLATES,
    SPEC_FIELDS,
    WEB_SERVICE,
    Corrupted,
    Refused,
    display_names,
    is_kubernetes_label,
    is_parameter_name,
    parameter_names,
    parameters_for,
    ready_timeouts,
    shape_corrupted_specs,
    slugs,
    template_rejected_specs,
    unicode_text,
    valid_specs,
)

CHEAP = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@CHEAP
@given(valid_specs())
def test_valid_requests_pass_render_and_reach_a_worker_unchanged(spec: ProjectSpec) -> None:
    assert validate_spec(spec) == []

    tree = render_project(spec, SHIPPED_TEMPLATES)

    assert tree.environment == spec.environment
    assert any(path.startswith(f"{tree.kustomize_path}/kustomization") for path in tree.files)
    assert asdict(round_trip(spec)) == asdict(spec)


@settings(CHEAP, max_examples=200)
@given(shape_corrupted_specs())
def test_malformed_requests_are_refused_naming_exactly_the_corrupted_fields(corrupted: Corrupted) -> None:
    errors = validate_spec(corrupted.spec)

    assert error_heads(errors) == corrupted.fields, errors
    assert_clear(errors)
    # The validate_template activity refuses it the same way, before reading any template file.
    with pytest.raises(InvalidInput) as refused:
        render_project(corrupted.spec, SHIPPED_TEMPLATES)
    assert error_heads(refused.value.field_errors) == corrupted.fields
    assert_clear(refused.value.field_errors)


@settings(CHEAP, max_examples=100)
@given(template_rejected_specs())
def test_requests_the_template_refuses_name_the_one_field_at_fault(refused: Refused) -> None:
    assert validate_spec(refused.spec) == []

    with pytest.raises(TemplateError) as caught:
        render_project(refused.spec, SHIPPED_TEMPLATES)

    assert type(caught.value) is (UnknownTemplate if refused.unknown_template else InvalidInput)
    assert [error.field for error in caught.value.field_errors] == [refused.field]
    assert_clear(caught.value.field_errors)


def scalars() -> st.SearchStrategy[Any]:
    """JSON-ish scalars and their edges: lone surrogates, non-finite floats, integers beyond any JSON client."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(0, 5000).map(lambda digits: 10**digits),
        st.floats(),
        unicode_text,
        st.sampled_from(LONE_SURROGATES),
        st.binary(max_size=8),
    )


def anything() -> st.SearchStrategy[Any]:
    return st.one_of(
        scalars(), st.lists(scalars(), max_size=3), st.dictionaries(st.text(max_size=5), scalars(), max_size=3)
    )


def long_labels() -> st.SearchStrategy[str]:
    return st.tuples(st.from_regex(r"[a-z][-a-z0-9]{0,10}", fullmatch=True), st.integers(0, 400)).map(
        lambda parts: parts[0] + "a" * parts[1]
    )


def any_text(valid: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, st.text(max_size=80), long_labels(), anything())


# What an arbitrary request puts in each field: a valid value, any text, or anything at all.
ARBITRARY_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "slug": any_text(slugs()),
    "display_name": any_text(display_names()),
    "template": any_text(st.sampled_from(["web-service", "../web-service", "no-such-template"])),
    "environment": any_text(st.sampled_from(sorted(WEB_SERVICE.environments))),
    "parameters": st.one_of(
        parameters_for(WEB_SERVICE),
        st.dictionaries(st.one_of(parameter_names(), st.text(max_size=70), st.integers()), anything(), max_size=5),
        anything(),
    ),
    "ready_timeout": st.one_of(ready_timeouts(), st.timedeltas(), anything()),
}
TEMPLATE_JUDGED_FIELDS = {"template", "environment", "parameters"}


@st.composite
def arbitrary_requests(draw: st.DrawFn) -> tuple[ProjectSpec, frozenset[str]]:
    """A valid request with any set of its fields (often none) given arbitrary values; the request and that set."""
    spec = draw(valid_specs())
    fields = draw(st.sets(st.sampled_from(SPEC_FIELDS)))
    return replace(spec, **{name: draw(ARBITRARY_FIELDS[name]) for name in sorted(fields)}), frozenset(fields)


def plainly_invalid_fields(spec: ProjectSpec) -> set[str]:
    """The fields whose value no request may carry, by the contract's rules stated independently of validate_spec."""
    slug, name, timeout = spec.slug, spec.display_name, spec.ready_timeout
    checks = {
        "slug": isinstance(slug, str) and len(slug) <= SLUG_MAX_LENGTH and is_kubernetes_label(slug),
        "display_name": isinstance(name, str) and bool(name.strip()) and name.isprintable()
        and len(name) <= DISPLAY_NAME_MAX_LENGTH,
        "template": isinstance(spec.template, str) and is_kubernetes_label(spec.template),
        "environment": isinstance(spec.environment, str) and is_kubernetes_label(spec.environment),
        "parameters": isinstance(spec.parameters, dict) and all(map(is_parameter_name, spec.parameters)),
        "ready_timeout": isinstance(timeout, timedelta) and MIN_READY_TIMEOUT <= timeout <= MAX_READY_TIMEOUT,
    }
    return {field for field, valid in checks.items() if not valid}


def fields_web_service_refuses(spec: ProjectSpec) -> set[str]:
    """Well-formed fields the shipped web-service template refuses: an environment or parameter it does not declare,
    a required parameter missing. (Values outside a declaration: see the template_rejected_specs test.)"""
    if spec.template != WEB_SERVICE.name:
        return set()
    refused = set()
    if isinstance(spec.environment, str) and spec.environment not in WEB_SERVICE.environments:
        refused.add("environment")
    parameters = spec.parameters if isinstance(spec.parameters, dict) else {}
    required = {name for name, parameter in WEB_SERVICE.parameters.items() if parameter.required}
    if set(parameters) - set(WEB_SERVICE.parameters) or required - set(parameters):
        refused.add("parameters")
    return refused


@settings(CHEAP, max_examples=200)
@given(arbitrary_requests())
@example((ProjectSpec("demo-app", "Demo", "web-service", {"owner": "payments"}), frozenset()))
# Found by this test: a well-formed template name too long for the filesystem crashed with an OSError.
@example((ProjectSpec("demo-app", "Demo", "a" * 256, {"owner": "payments"}), frozenset({"template"})))
@example((ProjectSpec("demo-app", "Demo", "no-such-template", {"owner": "payments"}), frozenset({"template"})))
def test_any_request_is_rendered_or_refused_naming_its_faulty_fields(
    drawn: tuple[ProjectSpec, frozenset[str]],
) -> None:
    """A request whose fields are all valid is accepted and rendered. Otherwise only fields given arbitrary values
    are ever blamed, every plainly invalid one is, validation and rendering refuse alike, and nothing crashes."""
    spec, arbitrary = drawn
    errors = validate_spec(spec)
    assert_clear(errors)
    invalid = plainly_invalid_fields(spec)
    assert invalid <= error_heads(errors) <= arbitrary, errors
    # (a template name plainly valid is a plain directory name)
    unknown_template = "template" not in invalid and not (SHIPPED_TEMPLATES / spec.template).is_dir()
    expected = invalid | fields_web_service_refuses(spec) | ({"template"} if unknown_template else set())

    try:
        tree = render_project(spec, SHIPPED_TEMPLATES)
    except TemplateError as refusal:
        blamed = error_heads(refusal.field_errors)
        assert arbitrary, f"a valid request was refused: {refusal}"
        assert expected <= blamed <= arbitrary, refusal.field_errors
        assert_clear(refusal.field_errors)
        if errors:  # what validation found, first, and what the template finds besides, at once
            assert type(refusal) is InvalidInput and refusal.field_errors[: len(errors)] == errors
            assert error_heads(refusal.field_errors[len(errors) :]) <= TEMPLATE_JUDGED_FIELDS
        elif unknown_template:
            assert type(refusal) is UnknownTemplate and [e.field for e in refusal.field_errors] == ["template"]
        else:
            assert type(refusal) is InvalidInput and blamed <= TEMPLATE_JUDGED_FIELDS
    else:
        assert not errors and not expected
        assert (tree.template, tree.environment) == (spec.template, spec.environment)


@settings(CHEAP, max_examples=200)
@given(valid_specs(), st.dictionaries(parameter_names(), scalars(), max_size=4))
# Found by this test: each passed validation, then could not be sent to a worker (a lone surrogate), arrived
# changed (NaN) or could not be read back by the worker (an integer of 4300 digits or more).
@example(ProjectSpec("demo-app", "Demo", "web-service"), {"note": "\ud800"})
@example(ProjectSpec("demo-app", "Demo", "web-service"), {"ratio": math.nan})
@example(ProjectSpec("demo-app", "Demo", "web-service"), {"count": 10**4300})
def test_accepted_parameter_values_reach_a_worker_unchanged(spec: ProjectSpec, parameters: Parameters) -> None:
    spec = replace(spec, parameters=parameters)
    errors = validate_spec(spec)
    assert_clear(errors)

    if not errors:
        assert asdict(round_trip(spec)) == asdict(spec)
    else:
        assert error_heads(errors) == {"parameters"}


@settings(CHEAP, max_examples=200)
@given(st.one_of(unicode_text, st.text(), st.from_regex(r"[a-z0-9][-a-z0-9]{0,120}", fullmatch=True), long_labels()))
@example("a" * 64)
@example("a" * 256)
def test_accepted_names_are_names_kubernetes_the_database_and_the_filesystem_accept(name: str) -> None:
    if not slug_errors(name):
        assert is_kubernetes_label(name)
        assert len(name) <= SLUG_LENGTH
        assert len(project_workflow_id(name)) <= WORKFLOW_ID_LENGTH
    if is_template_name(name):
        assert len(name) <= TEMPLATE_LENGTH
        try:  # a name that is no template is UnknownTemplate, never an OSError from the filesystem
            load_template(SHIPPED_TEMPLATES, name)
        except UnknownTemplate as unknown:
            assert [error.field for error in unknown.field_errors] == ["template"]
    environment_errors = [
        error
        for error in validate_spec(ProjectSpec("demo-app", "Demo", "web-service", environment=name))
        if error.field == "environment"
    ]
    if not environment_errors:
        assert is_kubernetes_label(name) and len(name) <= ENVIRONMENT_LENGTH


@pytest.mark.parametrize(
    ("timeout", "valid"),
    [
        (timedelta(seconds=1), True),
        (timedelta(minutes=30), True),
        (timedelta(seconds=1) - timedelta(microseconds=1), False),
        (timedelta(minutes=30, microseconds=1), False),
        (timedelta(0), False),
        (-timedelta(minutes=5), False),
        (timedelta.max, False),
        (timedelta.min, False),
    ],
)
def test_ready_timeout_bounds_are_inclusive_to_the_microsecond(timeout: timedelta, valid: bool) -> None:
    spec = ProjectSpec("demo-app", "Demo", "web-service", {"owner": "payments"}, ready_timeout=timeout)

    assert [error.field for error in validate_spec(spec)] == ([] if valid else ["ready_timeout"])
    assert round_trip(spec).ready_timeout == timeout
