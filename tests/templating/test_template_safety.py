"""Template safety beyond test_templating.py: parameter values stay data in file names too, a parameter cannot move a
directory out of the tree, a tenant's number cannot make a template allocate without bound, and oversized
parameters are refused field by field before anything renders."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.contracts import (
    MAX_PARAMETER_VALUE_LENGTH,
    MAX_PARAMETERS,
    MAX_PARAMETERS_TOTAL_LENGTH,
    ErrorType,
)
from provisioner.templating import InvalidInput, render_project
from tests.templating.test_templating import custom_spec, render_error, write_template

# Rendering this file fails (SecurityError): a request refused with InvalidInput was refused before rendering.
UNRENDERABLE: dict[str, str | bytes] = {"evil.txt": "{{ ''.__class__.__mro__ }}"}
UNDERLINED_TITLE = "{{ project.display_name }}\n{{ '=' * project.display_name | length }}\n"


def test_parameter_values_in_file_names_stay_literal(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "named",
        {"{{ params.name }}.txt": "{{ params.name }}\n"},
        parameters={"name": {"type": "string", "default": "x"}},
    )

    tree = render_project(custom_spec("named", {"name": "{{ 7 * 7 }}{% if true %}y{% endif %}"}), tmp_path)

    assert tree.files["{{ 7 * 7 }}{% if true %}y{% endif %}.txt"] == b"{{ 7 * 7 }}{% if true %}y{% endif %}\n"
    assert not any("49" in path for path in tree.files)


@pytest.mark.parametrize(
    ("directory", "rendered", "problem"),
    [
        ("../../etc", "../../etc/x", "has an empty, '.' or '..' segment"),
        ("ok/../../etc", "ok/../../etc/x", "has an empty, '.' or '..' segment"),
        ("/etc", "/etc/x", "is absolute"),
        (".git/hooks", ".git/hooks/x", "writes into '.git'"),
    ],
)
def test_a_directory_named_by_a_parameter_cannot_leave_the_tree(
    tmp_path: Path, directory: str, rendered: str, problem: str
) -> None:
    write_template(
        tmp_path, "escape", {"{{ params.dir }}/x": "x\n"}, parameters={"dir": {"type": "string", "default": "src"}}
    )
    assert "src/x" in render_project(custom_spec("escape"), tmp_path).files

    error = render_error(custom_spec("escape", {"dir": directory}), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == (
        f"template 'escape': file name '{{{{ params.dir }}}}/x' renders to {rendered!r}, which {problem}: refused"
    )


def test_repetition_is_bounded_by_the_render_budget_before_it_allocates(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "pad",
        {"README.md": UNDERLINED_TITLE + "{{ '-' * params.width }}"},
        parameters={"width": {"type": "integer", "default": 3}},  # no maximum: the template trusts its tenants
    )
    assert render_project(custom_spec("pad"), tmp_path).files["README.md"] == b"Demo\n====\n---"

    error = render_error(custom_spec("pad", {"width": 10**15}), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert "SecurityError: repeating 1 items 1000000000000000 times exceeds 8388608: refused" in error.message


def test_a_megabyte_parameter_value_is_a_field_error_before_anything_renders(tmp_path: Path) -> None:
    write_template(tmp_path, "evil", UNRENDERABLE, parameters={"note": {"type": "string", "default": "-"}})

    with pytest.raises(InvalidInput) as refused:
        render_project(custom_spec("evil", {"note": "x" * 1024 * 1024}), tmp_path)

    assert [str(error) for error in refused.value.field_errors] == [
        f"parameters.note: must be at most {MAX_PARAMETER_VALUE_LENGTH} characters"
    ]


def test_parameters_are_bounded_in_number_and_in_total_size(tmp_path: Path) -> None:
    blobs = MAX_PARAMETERS_TOTAL_LENGTH // MAX_PARAMETER_VALUE_LENGTH + 1
    declared = {f"blob{index}": {"type": "string", "default": "-"} for index in range(blobs)}
    write_template(tmp_path, "evil", UNRENDERABLE, parameters=declared)

    too_much = {name: "b" * MAX_PARAMETER_VALUE_LENGTH for name in declared}  # each within its own limit
    with pytest.raises(InvalidInput) as refused:
        render_project(custom_spec("evil", dict(too_much)), tmp_path)
    assert [str(error) for error in refused.value.field_errors] == [
        f"parameters: must total at most {MAX_PARAMETERS_TOTAL_LENGTH} characters of names and values"
    ]

    with pytest.raises(InvalidInput) as refused:
        render_project(custom_spec("evil", {f"p{index}": index for index in range(MAX_PARAMETERS + 1)}), tmp_path)
    assert str(refused.value.field_errors[0]) == f"parameters: must hold at most {MAX_PARAMETERS} entries"
    assert {error.field.split(".")[0] for error in refused.value.field_errors} == {"parameters"}
