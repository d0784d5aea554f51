"""Template safety beyond test_templating.py: parameter values stay data in file names too, a parameter cannot move a
directory out of the tree (nor into `.git`, in any case), a tenant's number cannot make a template allocate without
bound, and oversized parameters are refused field by field before anything renders. Each limit is tried just at and
just past its edge; the template's files are re-checked when read, after the scan; names that are not UTF-8 are a
broken template, refused for good rather than failing in a way that would be retried."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from provisioner import templating
from provisioner.contracts import (
    MAX_PARAMETER_VALUE_LENGTH,
    MAX_PARAMETERS,
    MAX_PARAMETERS_TOTAL_LENGTH,
    ErrorType,
    ParameterValue,
)
from provisioner.templating import (
    InvalidInput,
    RenderLimits,
    TemplateError,
    TemplateManifest,
    _SourceFile,
    load_template,
    render_project,
)
from tests.templating.test_templating import (
    MINIMAL_KUSTOMIZATION,
    activity_error,
    custom_spec,
    render_error,
    web_spec,
    write_template,
)

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
        (".GIT/hooks", ".GIT/hooks/x", "writes into '.git'"),  # git on a case-insensitive disk reads .GIT as .git
        ("src/.Git", "src/.Git/x", "writes into '.git'"),
        ("src/./lib", "src/./lib/x", "has an empty, '.' or '..' segment"),
        ("src\\lib", "src\\lib/x", "contains a backslash or a control character"),
        ("src\x1flib", "src\x1flib/x", "contains a backslash or a control character"),
        ("src\x7flib", "src\x7flib/x", "contains a backslash or a control character"),  # DEL
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


# ---- Names: .git in any case, the length limits, file and directory clashes, names that are not UTF-8 ----------


@pytest.mark.parametrize("name", [".GIT/hooks/post-checkout", ".Git/config", "src/.gIT/HEAD"])
def test_a_template_file_inside_git_in_any_case_is_refused(tmp_path: Path, name: str) -> None:
    write_template(tmp_path, "hooked", {name: "#!/bin/sh\necho owned\n"})

    error = render_error(custom_spec("hooked"), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == (
        f"template 'hooked': file name {name!r} renders to {name!r}, which writes into '.git': refused"
    )


FOUR_FULL_SEGMENTS = "/".join(["s" * 250] * 4)  # 1003 characters, each segment within the limit


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (FOUR_FULL_SEGMENTS + "/" + "t" * 20, None),  # 1024 characters: the longest path allowed
        (FOUR_FULL_SEGMENTS + "/" + "t" * 21, "is longer than 1024 characters"),
        ("d/" + "s" * 255, None),  # the longest segment allowed
        ("d/" + "s" * 256, "has a segment longer than 255 characters"),
    ],
    ids=["path-1024", "path-1025", "segment-255", "segment-256"],
)
def test_rendered_paths_and_their_segments_are_bounded_in_length(
    tmp_path: Path, name: str, problem: str | None
) -> None:
    write_template(
        tmp_path, "long", {"{{ params.name }}": "x\n"}, parameters={"name": {"type": "string", "default": "ok.txt"}}
    )
    spec = custom_spec("long", {"name": name})

    if problem is None:
        assert render_project(spec, tmp_path).files[name] == b"x\n"
        return
    error = render_error(spec, tmp_path)
    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == (
        f"template 'long': file name '{{{{ params.name }}}}' renders to {name[:200]!r}, which {problem}: refused"
    )


@pytest.mark.parametrize("directory", ["README.md", "docs/guide.md"])
def test_a_parameter_cannot_make_a_file_also_a_directory(tmp_path: Path, directory: str) -> None:
    write_template(
        tmp_path,
        "clash",
        {"README.md": "x\n", "docs/guide.md": "y\n", "{{ params.dir }}/b.txt": "z\n"},
        parameters={"dir": {"type": "string", "default": "src"}},
    )
    assert "src/b.txt" in render_project(custom_spec("clash"), tmp_path).files

    error = render_error(custom_spec("clash", {"dir": directory}), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == (
        f"template 'clash': {directory!r} renders both as a file and as the directory of '{directory}/b.txt'"
    )


def test_a_template_file_named_like_a_template_directory_is_refused(tmp_path: Path) -> None:
    # Two distinct names on disk ("{{ 'conf' }}" and "conf/"), one path once rendered.
    write_template(tmp_path, "clash", {"{{ 'conf' }}": "x\n", "conf/app.yaml": "y: 1\n"})

    error = render_error(custom_spec("clash"), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == "template 'clash': 'conf' renders both as a file and as the directory of 'conf/app.yaml'"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"\xff.txt", "\udcff.txt"),
        (b"{#\xff#}notes.txt", "{#\udcff#}notes.txt"),  # would render to a valid "notes.txt"
        (b"dir\xff/x.txt", "dir\udcff"),  # refused at the directory, before anything inside it
        (b"dir/\xff.txt", "dir/\udcff.txt"),
    ],
)
def test_a_file_name_that_is_not_utf8_is_a_permanent_refusal(tmp_path: Path, raw: bytes, shown: str) -> None:
    directory = write_template(tmp_path, "bytes", {})
    target = os.path.join(os.fsencode(directory / "files"), raw)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as stream:
        stream.write(b"x\n")

    error = activity_error(custom_spec("bytes"), tmp_path)

    assert error.type == "TemplateRenderFailed"
    assert error.non_retryable
    assert error.message == f"template 'bytes' has a file name that is not valid UTF-8 at {shown!r}: refused"
    assert error.message.isascii()  # the name is escaped, so the failure itself can be sent to Temporal


def test_a_name_rendering_to_a_lone_surrogate_is_a_permanent_refusal(tmp_path: Path) -> None:
    write_template(tmp_path, "surrogate", {"{{ '%c' % 56575 }}.txt": "x\n"})  # 56575 is U+DCFF

    error = activity_error(custom_spec("surrogate"), tmp_path)

    assert error.type == "TemplateRenderFailed"
    assert error.non_retryable
    assert error.message == (
        "template 'surrogate': file name \"{{ '%c' % 56575 }}.txt\" renders to '\\udcff.txt', "
        "which is not valid Unicode (it holds a lone surrogate): refused"
    )


@pytest.mark.parametrize(
    ("code_point", "refused"),
    [(0xD7FF, False), (0xD800, True), (0xDFFF, True), (0xE000, False)],
    ids=["D7FF", "D800", "DFFF", "E000"],
)
def test_only_surrogate_code_points_are_refused_in_names(tmp_path: Path, code_point: int, refused: bool) -> None:
    write_template(tmp_path, "surrogate", {f"{{{{ '%c' % {code_point} }}}}.txt": "x\n"})
    name = f"{chr(code_point)}.txt"

    if not refused:
        assert render_project(custom_spec("surrogate"), tmp_path).files[name] == b"x\n"
        return
    error = render_error(custom_spec("surrogate"), tmp_path)
    assert error.message == (
        f"template 'surrogate': file name \"{{{{ '%c' % {code_point} }}}}.txt\" renders to {name!r}, "
        "which is not valid Unicode (it holds a lone surrogate): refused"
    )


# ---- Files swapped after the scan, and special files -----------------------------------------------------------


def swap_after_scan(monkeypatch: pytest.MonkeyPatch, swap: Callable[[], None]) -> None:
    """Run `swap` once the template's files have been scanned and before any is read: the race, made certain."""
    scan = templating._collect_sources

    def scan_then_swap(manifest: TemplateManifest, limits: RenderLimits) -> list[_SourceFile]:
        sources = scan(manifest, limits)
        swap()
        return sources

    monkeypatch.setattr(templating, "_collect_sources", scan_then_swap)


def test_a_file_swapped_for_a_symlink_after_the_scan_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = write_template(tmp_path, "swap", {"notes.txt": "harmless\n"})
    notes = directory / "files" / "notes.txt"
    secret = tmp_path / "secret.txt"
    secret.write_text("secret\n")
    assert render_project(custom_spec("swap"), tmp_path).files["notes.txt"] == b"harmless\n"

    def to_symlink() -> None:
        notes.unlink()
        notes.symlink_to(secret)

    swap_after_scan(monkeypatch, to_symlink)
    error = render_error(custom_spec("swap"), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == "template 'swap' contains a symlink at 'notes.txt': refused"


@pytest.mark.timeout(20)  # opening a FIFO for reading without O_NONBLOCK waits for a writer forever
def test_a_file_swapped_for_a_fifo_after_the_scan_is_refused_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = write_template(tmp_path, "swap", {"notes.txt": "harmless\n"})
    notes = directory / "files" / "notes.txt"

    def to_fifo() -> None:
        notes.unlink()
        os.mkfifo(notes)

    swap_after_scan(monkeypatch, to_fifo)
    error = render_error(custom_spec("swap"), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == "template 'swap' contains a special file at 'notes.txt': refused"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("fifo", ["pipe", "nested/pipe"])
def test_a_fifo_in_a_template_is_refused_before_anything_renders(tmp_path: Path, fifo: str) -> None:
    # broken.txt sorts first and cannot render: a FIFO noticed only when read would report broken.txt instead.
    directory = write_template(tmp_path, "piped", {"broken.txt": "{{ undefined_variable }}", "nested/ok.txt": "x\n"})
    os.mkfifo(directory / "files" / fifo)

    error = render_error(custom_spec("piped"), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == f"template 'piped' contains a special file at {fifo!r}: refused"


# ---- Parameter values: the whole value matches the pattern, max_length is inclusive ----------------------------


def test_a_value_must_match_the_pattern_to_its_end_not_only_its_start() -> None:
    # "$" also matches before a final newline: only a full match keeps "payments\n" out of the rendered YAML.
    error = render_error(web_spec({"owner": "payments\n"}))

    assert error.error_type is ErrorType.INVALID_INPUT
    assert [str(field_error) for field_error in error.field_errors] == [
        "parameters.owner: must match the pattern '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"
    ]


def test_an_unanchored_pattern_still_covers_the_whole_value(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "unanchored",
        {"team.txt": "{{ params.team }}\n"},
        parameters={"team": {"type": "string", "default": "core", "pattern": "[a-z]+"}},
    )
    assert render_project(custom_spec("unanchored", {"team": "payments"}), tmp_path).files["team.txt"] == b"payments\n"

    error = render_error(custom_spec("unanchored", {"team": "payments: {x: 1}"}), tmp_path)

    assert error.error_type is ErrorType.INVALID_INPUT
    assert [str(field_error) for field_error in error.field_errors] == [
        "parameters.team: must match the pattern '[a-z]+'"
    ]


def test_a_value_of_exactly_max_length_is_accepted_and_one_more_is_refused(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "sized",
        {"name.txt": "{{ params.name }}\n"},
        parameters={"name": {"type": "string", "default": "x", "max_length": 5}},
    )

    assert render_project(custom_spec("sized", {"name": "abcde"}), tmp_path).files["name.txt"] == b"abcde\n"
    error = render_error(custom_spec("sized", {"name": "abcdef"}), tmp_path)
    assert error.error_type is ErrorType.INVALID_INPUT
    assert [str(field_error) for field_error in error.field_errors] == ["parameters.name: must be at most 5 characters"]


# ---- The manifest: a kustomize_path stays inside the rendered tree ---------------------------------------------


@pytest.mark.parametrize("kustomize_path", ["../x", "..", "deploy/../../x", "/etc/flux", ".GIT/overlay"])
def test_a_kustomize_path_outside_the_rendered_tree_is_refused(tmp_path: Path, kustomize_path: str) -> None:
    write_template(tmp_path, "esc", {}, environments={"development": {"kustomize_path": kustomize_path}})

    with pytest.raises(TemplateError) as caught:
        load_template(tmp_path, "esc")

    assert caught.value.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert caught.value.message == (
        "template 'esc' has an invalid template.yaml: "
        "environments.development.kustomize_path: must be a relative path inside the rendered tree"
    )
    assert render_error(custom_spec("esc"), tmp_path).message == caught.value.message


# ---- Parameter values: each type's refusal, and the bounds are inclusive -------------------------------------------

TYPED_PARAMETERS: dict[str, Any] = {
    "flag": {"type": "boolean", "default": False},
    "count": {"type": "integer", "default": 2, "minimum": 1, "maximum": 3},
}


@pytest.mark.parametrize(
    ("parameters", "problem"),
    [
        ({"flag": "yes"}, "parameters.flag: must be true or false"),
        ({"flag": 1}, "parameters.flag: must be true or false"),
        ({"count": 1.5}, "parameters.count: must be an integer"),
        ({"count": True}, "parameters.count: must be an integer"),
        ({"count": "2"}, "parameters.count: must be an integer"),
        ({"count": 0}, "parameters.count: must be at least 1"),
        ({"count": 4}, "parameters.count: must be at most 3"),
    ],
)
def test_a_value_of_the_wrong_type_or_out_of_bounds_is_refused(
    tmp_path: Path, parameters: dict[str, ParameterValue], problem: str
) -> None:
    write_template(tmp_path, "typed", UNRENDERABLE, parameters=TYPED_PARAMETERS)

    error = render_error(custom_spec("typed", parameters), tmp_path)

    assert error.error_type is ErrorType.INVALID_INPUT
    assert [str(field_error) for field_error in error.field_errors] == [problem]


def test_the_minimum_and_the_maximum_are_themselves_accepted(tmp_path: Path) -> None:
    write_template(tmp_path, "typed", {"count.txt": "{{ params.count }} {{ params.flag }}\n"}, TYPED_PARAMETERS)

    for count in (1, 3):
        tree = render_project(custom_spec("typed", {"count": count, "flag": True}), tmp_path)
        assert tree.files["count.txt"] == f"{count} True\n".encode()


@pytest.mark.parametrize("default", [float("inf"), float("-inf"), float("nan")])
def test_a_default_that_is_not_a_finite_number_breaks_the_manifest(tmp_path: Path, default: float) -> None:
    write_template(tmp_path, "ratio", {}, parameters={"ratio": {"type": "number", "default": default}})

    with pytest.raises(TemplateError) as caught:
        load_template(tmp_path, "ratio")

    assert caught.value.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert caught.value.message == (
        "template 'ratio' has an invalid template.yaml: parameters.ratio.default: must be a finite number"
    )


# ---- Arithmetic in the sandbox: ordinary numbers compute, `*` and `**` are bounded just past their edge -----------


@pytest.mark.parametrize(
    ("expression", "rendered"),
    [
        ("6 * 7", "42"),
        ("2 ** 10", "1024"),
        ("2.0 ** 3", "8.0"),
        ("2 ** 0.5 > 1.41", "True"),
        ("2 ** -2", "0.25"),
        ("1 ** 100000000", "1"),  # a base of 1 or -1 never grows, whatever the exponent
        ("(-1) ** 100000001", "-1"),
        ("(2 ** 32768) % 1000", str(pow(2, 32768, 1000))),  # 2 bits * 32768 = 65536 bits: just allowed
        ("('ab' * 500) | length", "1000"),  # exactly the budget of 1000 bytes
        ("(500 * 'ab') | length", "1000"),
    ],
)
def test_arithmetic_within_the_bounds_renders(tmp_path: Path, expression: str, rendered: str) -> None:
    write_template(tmp_path, "math", {"math.txt": f"{{{{ {expression} }}}}\n"})

    tree = render_project(custom_spec("math"), tmp_path, RenderLimits(max_total_bytes=1000))

    assert tree.files["math.txt"] == f"{rendered}\n".encode()


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("(2 ** 32769) % 1000", "a power of more than 65536 bits: refused"),
        # 2 ** 65536 built by multiplication (not bounded) has 65537 bits: even its first power is refused.
        ("((2 ** 32768) * (2 ** 32768)) ** 1 % 1000", "a power of more than 65536 bits: refused"),
        ("('ab' * 501) | length", "repeating 2 items 501 times exceeds 1000: refused"),
        ("(501 * 'ab') | length", "repeating 2 items 501 times exceeds 1000: refused"),
    ],
)
def test_arithmetic_just_past_the_bounds_is_refused(tmp_path: Path, expression: str, reason: str) -> None:
    write_template(tmp_path, "math", {"math.txt": f"{{{{ {expression} }}}}\n"})

    error = render_error(custom_spec("math"), tmp_path, limits=RenderLimits(max_total_bytes=1000))

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == f"template 'math': cannot render 'math.txt': SecurityError: {reason}"


# ---- Rendering: file names that fail, NUL bytes, the output budget to the byte ------------------------------------


def test_a_file_name_that_cannot_render_is_reported_with_its_error(tmp_path: Path) -> None:
    write_template(tmp_path, "names", {"{{ params.missing }}.txt": "x\n"})

    error = render_error(custom_spec("names"), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == (
        "template 'names': cannot render the file name '{{ params.missing }}.txt': "
        "UndefinedError: 'dict object' has no attribute 'missing'"
    )


def test_a_file_holding_a_nul_byte_is_copied_verbatim_even_when_it_is_utf8(tmp_path: Path) -> None:
    content = b"\0{{ project.slug }} {% if %}\n"  # valid UTF-8, and a broken template if it were rendered
    write_template(tmp_path, "nul", {"data.bin": content})

    assert render_project(custom_spec("nul"), tmp_path).files["data.bin"] == content


def test_output_filling_the_budget_to_the_byte_renders_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    # kustomization.yaml renders first, then last.txt (read against what is left of the budget): exactly 10 bytes.
    write_template(tmp_path, "full", {"last.txt": "0123456789"})
    exact = RenderLimits(max_total_bytes=len(MINIMAL_KUSTOMIZATION) + 10)

    assert render_project(custom_spec("full"), tmp_path, exact).files["last.txt"] == b"0123456789"
    error = render_error(
        custom_spec("full"), tmp_path, limits=replace(exact, max_total_bytes=exact.max_total_bytes - 1)
    )
    assert error.message == (
        f"template 'full' renders more than {exact.max_total_bytes - 1} bytes "
        "(a parameter value may be too large): refused"
    )


def test_rendering_stops_as_soon_as_the_output_exceeds_the_budget(tmp_path: Path) -> None:
    # Each pass of the loop is its own chunk of 600 characters; the undefined name after it is never reached.
    write_template(tmp_path, "runaway", {"big.txt": "{% for i in range(3) %}{{ 'x' * 600 }}{% endfor %}{{ nowhere }}"})

    error = render_error(custom_spec("runaway"), tmp_path, limits=RenderLimits(max_total_bytes=1000))

    assert (
        error.message == "template 'runaway' renders more than 1000 bytes (a parameter value may be too large): refused"
    )


def test_the_template_files_are_bounded_in_total_size_before_anything_renders(tmp_path: Path) -> None:
    # Each file is within the limit, together they are not; broken.txt sorts first and would fail if it rendered.
    write_template(tmp_path, "heavy", {"broken.txt": "{{ nowhere }}", "one.txt": "1" * 500, "two.txt": "2" * 500})

    error = render_error(custom_spec("heavy"), tmp_path, limits=RenderLimits(max_total_bytes=1000))

    assert (
        error.message == "template 'heavy' renders more than 1000 bytes (a parameter value may be too large): refused"
    )


def test_a_source_larger_than_what_is_left_of_the_budget_renders_when_its_output_fits(tmp_path: Path) -> None:
    # The comment renders to nothing, but its source is larger than the 10 bytes the other files leave of the budget:
    # read cut to those, its syntax would break. (The sources together stay within the bound the scan checks.)
    write_template(tmp_path, "late", {"a.txt": "{{ 'x' * 150 }}", "b.txt": "{# " + "c" * 120 + " #}"})
    limit = 150 + len(MINIMAL_KUSTOMIZATION.encode()) + 10

    tree = render_project(custom_spec("late"), tmp_path, RenderLimits(max_total_bytes=limit))

    assert tree.files["a.txt"] == b"x" * 150
    assert tree.files["b.txt"] == b""


def test_a_single_source_of_exactly_the_bound_is_read_whole_and_renders(tmp_path: Path) -> None:
    # The kustomization is the only source, padded by a comment to the bound: read one byte short, the comment
    # would not close; and a source as large as the bound has not grown past it.
    limit = 400
    padding = "{# " + "c" * (limit - len(MINIMAL_KUSTOMIZATION) - len("{#  #}")) + " #}"
    source = MINIMAL_KUSTOMIZATION + padding
    assert len(source.encode()) == limit
    write_template(tmp_path, "exact", {"kustomization.yaml": source})

    tree = render_project(custom_spec("exact"), tmp_path, RenderLimits(max_total_bytes=limit))

    assert tree.files == {"kustomization.yaml": MINIMAL_KUSTOMIZATION.encode()}


def test_a_source_grown_past_the_bound_since_the_scan_is_refused_as_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_template(tmp_path, "grows", {"a.txt": "small"})
    scan = templating._collect_sources

    def scan_then_grow(manifest: TemplateManifest, limits: RenderLimits) -> list[_SourceFile]:
        sources = scan(manifest, limits)
        (manifest.files_dir / "a.txt").write_text("y" * 400)
        return sources

    monkeypatch.setattr(templating, "_collect_sources", scan_then_grow)
    error = render_error(custom_spec("grows"), tmp_path, limits=RenderLimits(max_total_bytes=300))
    assert error.message == "template 'grows' renders more than 300 bytes (a parameter value may be too large): refused"


def test_the_output_budget_is_shared_by_all_the_files(tmp_path: Path) -> None:
    # Each file renders 600 bytes, within the limit on its own; the second one exceeds what the first left, and is
    # refused rather than cut to fit.
    write_template(tmp_path, "shared", {"one.txt": "{{ '1' * 600 }}", "two.txt": "2" * 600})

    assert len(render_project(custom_spec("shared"), tmp_path, RenderLimits(max_total_bytes=1300)).files) == 3
    error = render_error(custom_spec("shared"), tmp_path, limits=RenderLimits(max_total_bytes=1000))
    assert (
        error.message == "template 'shared' renders more than 1000 bytes (a parameter value may be too large): refused"
    )
