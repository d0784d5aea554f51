"""Template safety beyond test_templating.py: parameter values stay data in file names too, a parameter cannot move a
directory out of the tree (nor into `.git`, in any case), a tenant's number cannot make a template allocate without
bound, and oversized parameters are refused field by field before anything renders. Each limit is tried just at and
just past its edge; the template's files are re-checked when read, after the scan; names that are not UTF-8 are a
broken template, refused for good rather than failing in a way that would be retried."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from provisioner import templating
from provisioner.contracts import (
    MAX_PARAMETER_VALUE_LENGTH,
    MAX_PARAMETERS,
    MAX_PARAMETERS_TOTAL_LENGTH,
    ErrorType,
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
from tests.templating.test_templating import activity_error, custom_spec, render_error, web_spec, write_template

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
