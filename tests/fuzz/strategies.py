"""Hypothesis strategies for project requests.

Valid requests are drawn from the shipped template's own declarations (its parameters' types, bounds, patterns and
enums; its environments). Invalid ones are a valid request with chosen fields corrupted, each corruption known to
break exactly its field, so a test can demand that the errors name exactly the corrupted fields:

- `shape_corrupted_specs`: broken whatever the template (validate_spec's rules), optionally only with values the
  payload converter can carry to a worker (what a workflow started directly can receive);
- `template_rejected_specs`: well-formed, but refused by the template (unknown template, parameter or environment, a
  value outside the parameter's declaration, a missing required parameter).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from hypothesis import strategies as st

from provisioner.contracts import (
    DISPLAY_NAME_MAX_LENGTH,
    MAX_PARAMETER_INTEGER,
    MAX_PARAMETER_VALUE_LENGTH,
    MAX_PARAMETERS,
    MAX_PARAMETERS_TOTAL_LENGTH,
    MAX_READY_TIMEOUT,
    MIN_READY_TIMEOUT,
    RESERVED_SLUG_PREFIXES,
    RESERVED_SLUGS,
    SLUG_MAX_LENGTH,
    Parameters,
    ParameterValue,
    ProjectSpec,
)
from provisioner.settings import PROJECT_ROOT
from provisioner.templating import ParameterSpec, TemplateManifest, load_template

SHIPPED_TEMPLATES = PROJECT_ROOT / "templates"
WEB_SERVICE = load_template(SHIPPED_TEMPLATES, "web-service")

# The fields of a request that validate_spec judges (on_failure has rules of its own: tests/test_contracts.py).
SPEC_FIELDS = ("slug", "display_name", "template", "environment", "parameters", "ready_timeout")

# Kubernetes' rule for namespace names (a DNS-1123 label), stated here independently of the contract's patterns:
# whatever is not such a label can be no slug, template or environment name.
KUBERNETES_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
KUBERNETES_LABEL_MAX_LENGTH = 63
ONE_MICROSECOND = timedelta(microseconds=1)
ONE_MEGABYTE = 1024 * 1024

# Text that JSON (and so the payload converter) can carry: no lone surrogates.
unicode_text = st.text(st.characters(codec="utf-8"))


def is_kubernetes_label(text: str) -> bool:
    return len(text) <= KUBERNETES_LABEL_MAX_LENGTH and KUBERNETES_LABEL.fullmatch(text) is not None


def is_parameter_name(name: object) -> bool:
    """An ASCII identifier of at most 64 characters (how templates refer to `params.<name>`)."""
    return isinstance(name, str) and name.isascii() and name.isidentifier() and len(name) <= 64


# ---- Valid requests ----------------------------------------------------------------------------------------


def slugs() -> st.SearchStrategy[str]:
    """Valid slugs of at most 33 characters, so that `unique()` can make them unique within the bound."""
    return st.from_regex(r"[a-z][-a-z0-9]{1,31}[a-z0-9]", fullmatch=True).filter(
        lambda slug: slug not in RESERVED_SLUGS and not slug.startswith(RESERVED_SLUG_PREFIXES)
    )


def unique(slug: str, suffix: str) -> str:
    """`slug` made unique by a 6-character suffix, still within the slug length bound."""
    made = f"{slug}-{suffix[:6]}"
    assert len(made) <= SLUG_MAX_LENGTH
    return made


def display_names() -> st.SearchStrategy[str]:
    printable = st.one_of(st.characters(categories=["L", "M", "N", "P", "S"], codec="utf-8"), st.just(" "))
    return st.text(printable, min_size=1, max_size=DISPLAY_NAME_MAX_LENGTH).filter(
        lambda name: bool(name.strip()) and name.isprintable()
    )


def ready_timeouts() -> st.SearchStrategy[timedelta]:
    edges = [
        MIN_READY_TIMEOUT,
        MAX_READY_TIMEOUT,
        MIN_READY_TIMEOUT + ONE_MICROSECOND,
        MAX_READY_TIMEOUT - ONE_MICROSECOND,
    ]
    return st.one_of(st.sampled_from(edges), st.timedeltas(min_value=MIN_READY_TIMEOUT, max_value=MAX_READY_TIMEOUT))


def parameter_values(parameter: ParameterSpec) -> st.SearchStrategy[ParameterValue]:
    """Values the declaration accepts."""
    if parameter.enum is not None:
        return st.sampled_from(parameter.enum)
    if parameter.type == "boolean":
        return st.booleans()
    low = -MAX_PARAMETER_INTEGER if parameter.minimum is None else parameter.minimum
    high = MAX_PARAMETER_INTEGER if parameter.maximum is None else parameter.maximum
    if parameter.type == "integer":
        return st.integers(math.ceil(low), math.floor(high))
    if parameter.type == "number":
        return st.floats(low, high, allow_nan=False, allow_infinity=False)
    limit = MAX_PARAMETER_VALUE_LENGTH if parameter.max_length is None else parameter.max_length
    text = unicode_text if parameter.pattern is None else st.from_regex(parameter.pattern, fullmatch=True)
    return text.filter(lambda value: len(value) <= limit)


def parameters_for(manifest: TemplateManifest) -> st.SearchStrategy[dict[str, ParameterValue]]:
    """Every required parameter, and any of the optional ones."""
    required = {name: parameter_values(p) for name, p in manifest.parameters.items() if p.required}
    optional = {name: parameter_values(p) for name, p in manifest.parameters.items() if not p.required}
    return st.fixed_dictionaries(required, optional=optional)


@st.composite
def valid_specs(draw: st.DrawFn, manifest: TemplateManifest = WEB_SERVICE) -> ProjectSpec:
    return ProjectSpec(
        slug=draw(slugs()),
        display_name=draw(display_names()),
        template=manifest.name,
        parameters=draw(parameters_for(manifest)),
        environment=draw(st.sampled_from(sorted(manifest.environments))),
        wait_for_ready=draw(st.booleans()),
        ready_timeout=draw(ready_timeouts()),
    )


# ---- Corruptions that no template can accept ---------------------------------------------------------------

NOT_PRINTABLE = ["\n", "\t", "\r", "\x00", "\x1b", "\x7f", "\x85", "\u00a0", "\u200b", "\u2028", "\ufeff"]
LONE_SURROGATES = ["\ud800", "\udfff", "a\udc80b"]
PATH_LIKE_NAMES = ["", ".", "..", "../x", "../../etc/passwd", "/etc", "web-service/../web-service", "web-service/"]


def _not_a_label(extra: list[str], *, letter_first: bool) -> st.SearchStrategy[str]:
    """Names no label field accepts: path tricks, case, length, odd characters (and digits first, if a letter must
    come first)."""
    candidates = [
        st.sampled_from([*PATH_LIKE_NAMES, *extra, "Web", "a_b", "a b", "a-", "-a", "wéb", "ǆemo", "a\n"]),
        unicode_text.filter(lambda text: not is_kubernetes_label(text)),
        st.from_regex(r"[a-z][a-z0-9]{63,90}", fullmatch=True),
    ]
    if letter_first:
        candidates.append(st.from_regex(r"[0-9][a-z0-9]{0,20}", fullmatch=True))
    return st.one_of(candidates)


def _wrong_types() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=8), st.lists(st.integers(), max_size=2))


def _not_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.binary(max_size=8), st.lists(st.integers(), max_size=2), st.just({"a": 1}))


def invalid_slugs(encodable_only: bool) -> st.SearchStrategy[Any]:
    typed = st.one_of(
        _not_a_label(["ab", "x" * (SLUG_MAX_LENGTH + 1), "default", "flux-system"], letter_first=True),
        st.from_regex(r"[a-z][a-z0-9]{40,62}", fullmatch=True),  # a Kubernetes label, too long for a slug
        st.tuples(st.sampled_from(RESERVED_SLUG_PREFIXES), st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True)).map(
            "".join
        ),
    )
    return typed if encodable_only else st.one_of(typed, st.sampled_from(LONE_SURROGATES), _wrong_types())


def invalid_display_names(encodable_only: bool, max_size: int) -> st.SearchStrategy[Any]:
    around = display_names().map(lambda name: name[:40])
    typed = st.one_of(
        st.sampled_from(["", " ", "   "]),
        st.integers(DISPLAY_NAME_MAX_LENGTH + 1, max_size).map(lambda size: "D" * size),
        st.builds(lambda a, char, b: a + char + b, around, st.sampled_from(NOT_PRINTABLE), around),
    )
    return typed if encodable_only else st.one_of(typed, st.sampled_from(LONE_SURROGATES), _wrong_types())


def invalid_templates(encodable_only: bool) -> st.SearchStrategy[Any]:
    typed = _not_a_label(["Web-Service", "web_service"], letter_first=False)
    return typed if encodable_only else st.one_of(typed, _wrong_types())


def invalid_environments(encodable_only: bool) -> st.SearchStrategy[Any]:
    typed = _not_a_label(["Production", "prod!"], letter_first=True)
    return typed if encodable_only else st.one_of(typed, _wrong_types())


def invalid_ready_timeouts(encodable_only: bool) -> st.SearchStrategy[Any]:
    typed = st.one_of(
        st.sampled_from(
            [
                timedelta(0),
                MIN_READY_TIMEOUT - ONE_MICROSECOND,
                MAX_READY_TIMEOUT + ONE_MICROSECOND,
                -MIN_READY_TIMEOUT,
                timedelta.min,
                timedelta.max,
            ]
        ),
        st.timedeltas(max_value=MIN_READY_TIMEOUT - ONE_MICROSECOND),
        st.timedeltas(min_value=MAX_READY_TIMEOUT + ONE_MICROSECOND),
    )
    untyped = st.one_of(st.sampled_from([60, 60.0, "PT60S", "60", None]), st.integers())
    return typed if encodable_only else st.one_of(typed, untyped)


def parameter_names() -> st.SearchStrategy[str]:
    return st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)


def invalid_parameters(valid: Parameters, encodable_only: bool, max_size: int) -> st.SearchStrategy[Any]:
    """`valid` with one entry added (or replaced) that no template accepts, or too many or too much of them."""
    bad_names = st.one_of(
        st.sampled_from(["", "1abc", "a-b", "a b", "a.b", "é", "x" * 65, "$x", "owner\n"]),
        unicode_text.filter(lambda name: not is_parameter_name(name)),
    )
    huge_integers = st.integers(MAX_PARAMETER_INTEGER + 1, 10**100)
    entry = st.one_of(
        st.tuples(bad_names, st.just("x")),
        st.tuples(parameter_names(), st.integers(MAX_PARAMETER_VALUE_LENGTH + 1, max_size).map("v".__mul__)),
        st.tuples(parameter_names(), st.sampled_from([math.nan, math.inf, -math.inf])),
        st.tuples(parameter_names(), st.one_of(huge_integers, huge_integers.map(int.__neg__))),
    )
    too_many = st.integers(MAX_PARAMETERS + 1, MAX_PARAMETERS + 20).map(
        lambda count: {**valid, **{f"p{index}": index for index in range(count)}}
    )
    blob = MAX_PARAMETER_VALUE_LENGTH - 96
    too_much = st.integers(MAX_PARAMETERS_TOTAL_LENGTH // blob + 1, MAX_PARAMETERS // 2).map(
        lambda count: {**valid, **{f"blob{index}": "b" * blob for index in range(count)}}
    )
    typed = st.one_of(entry.map(lambda item: {**valid, item[0]: item[1]}), too_many, too_much)
    if encodable_only:
        return typed
    unencodable = st.one_of(
        st.tuples(parameter_names(), st.one_of(st.sampled_from(LONE_SURROGATES), _not_scalars())),
        st.tuples(st.one_of(st.integers(), st.none()), st.just("x")),
    )
    return st.one_of(
        typed,
        unencodable.map(lambda item: {**valid, item[0]: item[1]}),
        st.one_of(st.none(), st.lists(st.text(), max_size=2), st.text(max_size=5)),
    )


# field -> (the valid spec, encodable only, the largest oversized value) -> values that break the field
SHAPE_CORRUPTIONS: dict[str, Callable[[ProjectSpec, bool, int], st.SearchStrategy[Any]]] = {
    "slug": lambda _, encodable_only, __: invalid_slugs(encodable_only),
    "display_name": lambda _, encodable_only, max_size: invalid_display_names(encodable_only, max_size),
    "template": lambda _, encodable_only, __: invalid_templates(encodable_only),
    "environment": lambda _, encodable_only, __: invalid_environments(encodable_only),
    "parameters": lambda spec, encodable_only, max_size: invalid_parameters(spec.parameters, encodable_only, max_size),
    "ready_timeout": lambda _, encodable_only, __: invalid_ready_timeouts(encodable_only),
}


@dataclass(frozen=True)
class Corrupted:
    spec: ProjectSpec
    fields: frozenset[str]  # the top-level fields that were corrupted


@st.composite
def shape_corrupted_specs(
    draw: st.DrawFn,
    *,
    encodable_only: bool = False,
    max_size: int = ONE_MEGABYTE,
    fields_from: tuple[str, ...] = SPEC_FIELDS,
    max_fields: int | None = None,
) -> Corrupted:
    """A valid request with a non-empty set of `fields_from` corrupted beyond what any template accepts.

    `encodable_only`: only values the payload converter carries (a workflow's input); `max_size`: the largest
    oversized string (a workflow's input must stay under Temporal's payload limit)."""
    spec = draw(valid_specs())
    fields = draw(st.sets(st.sampled_from(fields_from), min_size=1, max_size=max_fields))
    changes = {name: draw(SHAPE_CORRUPTIONS[name](spec, encodable_only, max_size)) for name in sorted(fields)}
    return Corrupted(replace(spec, **changes), frozenset(fields))


# ---- Corruptions that only the template refuses ------------------------------------------------------------


def values_refused_by(parameter: ParameterSpec) -> st.SearchStrategy[ParameterValue]:
    """Well-formed values (strings, finite numbers, booleans) that the declaration refuses."""
    strings = unicode_text.filter(lambda value: len(value) <= 50)
    if parameter.type == "boolean":
        return st.one_of(st.integers(-5, 5), strings)
    if parameter.type in ("integer", "number"):
        wrong_type = st.one_of(strings, st.booleans())
        out_of_range = []
        if parameter.minimum is not None:
            out_of_range.append(st.integers(-MAX_PARAMETER_INTEGER, math.ceil(parameter.minimum) - 1))
        if parameter.maximum is not None:
            out_of_range.append(st.integers(math.floor(parameter.maximum) + 1, MAX_PARAMETER_INTEGER))
        if parameter.type == "integer":
            wrong_type = st.one_of(wrong_type, st.floats(allow_nan=False, allow_infinity=False))
        return st.one_of(wrong_type, *out_of_range)
    wrong_type = st.one_of(st.integers(-5, 5), st.booleans())
    refused: list[st.SearchStrategy[ParameterValue]] = [wrong_type]
    if parameter.enum is not None:
        refused.append(strings.filter(lambda value: value not in (parameter.enum or ())))
    if parameter.pattern is not None:
        pattern = parameter.pattern
        refused.append(strings.filter(lambda value: not pattern.fullmatch(value)))
    if parameter.max_length is not None:
        refused.append(st.integers(parameter.max_length + 1, MAX_PARAMETER_VALUE_LENGTH).map("a".__mul__))
    return st.one_of(refused)


@dataclass(frozen=True)
class Refused:
    spec: ProjectSpec
    field: str  # the field the template's error names, e.g. "parameters.port"
    unknown_template: bool = False


TEMPLATE_REFUSALS = (
    "unknown_template",
    "unknown_parameter",
    "refused_value",
    "missing_required",
    "unknown_environment",
)


@st.composite
def template_rejected_specs(
    draw: st.DrawFn, manifest: TemplateManifest = WEB_SERVICE, refusals: tuple[str, ...] = TEMPLATE_REFUSALS
) -> Refused:
    """A request validate_spec accepts and the template refuses, for exactly one reason (one of `refusals`)."""
    spec = draw(valid_specs(manifest))
    labels = st.from_regex(r"[a-z][-a-z0-9]{0,20}[a-z0-9]", fullmatch=True)
    refusal = draw(st.sampled_from(refusals))
    if refusal == "unknown_template":
        name = draw(labels.filter(lambda label: not (SHIPPED_TEMPLATES / label).exists()))
        return Refused(replace(spec, template=name), "template", unknown_template=True)
    if refusal == "unknown_environment":
        environment = draw(labels.filter(lambda label: label not in manifest.environments))
        return Refused(replace(spec, environment=environment), "environment")
    if refusal == "unknown_parameter":
        name = draw(parameter_names().filter(lambda name: name not in manifest.parameters))
        return Refused(replace(spec, parameters={**spec.parameters, name: "x"}), f"parameters.{name}")
    if refusal == "missing_required":
        required = sorted(name for name, parameter in manifest.parameters.items() if parameter.required)
        name = draw(st.sampled_from(required))
        parameters = {key: value for key, value in spec.parameters.items() if key != name}
        return Refused(replace(spec, parameters=parameters), f"parameters.{name}")
    name = draw(st.sampled_from(sorted(manifest.parameters)))
    value = draw(values_refused_by(manifest.parameters[name]))
    return Refused(replace(spec, parameters={**spec.parameters, name: value}), f"parameters.{name}")
