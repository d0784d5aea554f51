"""Template loading, parameter validation, sandboxed rendering and the validate_template activity."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.template import TemplateActivities
from provisioner.binaries import bundled_binary
from provisioner.contracts import MAX_PARAMETER_VALUE_LENGTH, ErrorType, ParameterValue, ProjectSpec
from provisioner.settings import PROJECT_ROOT
from provisioner.templating import (
    RenderedTree,
    RenderLimits,
    TemplateError,
    list_templates,
    load_template,
    render_project,
    yaml_quote,
)
from tests.catalogue import catalogue_with_broken_template

SHIPPED_TEMPLATES = PROJECT_ROOT / "templates"


@pytest.fixture(scope="module")
def broken_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return catalogue_with_broken_template(tmp_path_factory.mktemp("catalogue"))


MINIMAL_KUSTOMIZATION = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: []\n"


def web_spec(parameters: dict[str, ParameterValue] | None = None, **overrides: Any) -> ProjectSpec:
    fields: dict[str, Any] = {
        "slug": "billing-api",
        "display_name": "Billing API",
        "template": "web-service",
        "parameters": {"owner": "payments"} if parameters is None else parameters,
    }
    fields.update(overrides)
    return ProjectSpec(**fields)


def render_error(spec: ProjectSpec, templates_dir: Path = SHIPPED_TEMPLATES, **kwargs: Any) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        render_project(spec, templates_dir, **kwargs)
    return caught.value


def yaml_documents(tree: RenderedTree, path: str) -> list[Any]:
    return list(yaml.safe_load_all(tree.files[path].decode("utf-8")))


def write_template(
    templates_dir: Path,
    name: str,
    files: dict[str, str | bytes],
    parameters: dict[str, Any] | None = None,
    environments: dict[str, Any] | None = None,
) -> Path:
    """A small template under `templates_dir`; by default its development kustomization sits at the root."""
    directory = templates_dir / name
    manifest = {
        "name": name,
        "description": "test template",
        "parameters": parameters or {},
        "environments": environments or {"development": {"kustomize_path": "."}},
    }
    (directory / "files").mkdir(parents=True)
    (directory / "template.yaml").write_text(yaml.safe_dump(manifest))
    for relative, content in {"kustomization.yaml": MINIMAL_KUSTOMIZATION, **files}.items():
        target = directory / "files" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return directory


def custom_spec(template: str, parameters: dict[str, ParameterValue] | None = None) -> ProjectSpec:
    return ProjectSpec(slug="demo-app", display_name="Demo", template=template, parameters=parameters or {})


# ---- The shipped web-service template ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "kustomize_path"),
    [("development", "k8s/overlays/development"), ("production", "k8s/overlays/production")],
)
def test_web_service_renders_a_deployable_tree_per_environment(environment: str, kustomize_path: str) -> None:
    tree = render_project(web_spec(environment=environment), SHIPPED_TEMPLATES)

    assert tree.kustomize_path == kustomize_path
    assert tree.environment == environment
    assert list(tree.files) == sorted(tree.files)
    assert {
        "README.md",
        "Dockerfile",
        "app/index.html",
        "k8s/base/kustomization.yaml",
        "k8s/base/deployment.yaml",
        "k8s/base/service.yaml",
        "k8s/overlays/development/kustomization.yaml",
        "k8s/overlays/production/kustomization.yaml",
    } <= set(tree.files)
    for path in tree.files:
        assert "{" not in path and not path.startswith("/") and ".." not in path.split("/")
        if path.endswith(".yaml"):
            assert all(document is not None for document in yaml_documents(tree, path)), path
        assert b"{{" not in tree.files[path] and b"{%" not in tree.files[path], path
    overlay = yaml_documents(tree, f"{kustomize_path}/kustomization.yaml")[0]
    assert overlay["namespace"] == "billing-api"
    assert overlay["resources"] == ["../../base"]
    base = yaml_documents(tree, "k8s/base/kustomization.yaml")[0]
    assert base["resources"] == ["deployment.yaml", "service.yaml"]
    deployment = yaml_documents(tree, "k8s/base/deployment.yaml")[0]
    assert deployment["metadata"]["name"] == "billing-api"
    assert deployment["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "billing-api"}


def test_web_service_overlays_patch_replicas_and_public_exposure() -> None:
    tree = render_project(web_spec({"owner": "payments", "replicas": 5, "public": True}), SHIPPED_TEMPLATES)

    development = yaml_documents(tree, "k8s/overlays/development/kustomization.yaml")[0]
    production = yaml_documents(tree, "k8s/overlays/production/kustomization.yaml")[0]
    assert yaml.safe_load(development["patches"][0]["patch"]) == [
        {"op": "replace", "path": "/spec/replicas", "value": 1}
    ]
    assert yaml.safe_load(production["patches"][0]["patch"]) == [
        {"op": "replace", "path": "/spec/replicas", "value": 5}
    ]
    assert production["patches"][1]["target"] == {"kind": "Service", "name": "billing-api"}
    assert yaml.safe_load(production["patches"][1]["patch"])[0]["value"] == "LoadBalancer"

    private = render_project(web_spec({"owner": "payments"}), SHIPPED_TEMPLATES)
    assert len(yaml_documents(private, "k8s/overlays/production/kustomization.yaml")[0]["patches"]) == 1


@pytest.mark.parametrize(
    ("environment", "replicas", "service_type"), [("development", 1, "ClusterIP"), ("production", 4, "LoadBalancer")]
)
def test_web_service_overlays_build_with_real_kustomize(
    tmp_path: Path, environment: str, replicas: int, service_type: str
) -> None:
    parameters: dict[str, ParameterValue] = {"owner": "payments", "replicas": 4, "public": True}
    tree = render_project(web_spec(parameters, environment=environment), SHIPPED_TEMPLATES)
    for path, content in tree.files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(content)

    built = subprocess.run(
        [bundled_binary("kubectl"), "kustomize", str(tmp_path / tree.kustomize_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert built.returncode == 0, built.stderr
    objects = {document["kind"]: document for document in yaml.safe_load_all(built.stdout)}
    assert set(objects) == {"Deployment", "Service"}
    assert {document["metadata"]["namespace"] for document in objects.values()} == {"billing-api"}
    assert objects["Deployment"]["spec"]["replicas"] == replicas
    assert objects["Service"]["spec"]["type"] == service_type
    assert objects["Deployment"]["metadata"]["labels"]["app.kubernetes.io/environment"] == environment


def test_file_names_are_rendered_from_templates() -> None:
    tree = render_project(web_spec(slug="orders"), SHIPPED_TEMPLATES)

    assert "docs/orders-runbook.md" in tree.files
    assert tree.files["docs/orders-runbook.md"].startswith(b"# Runbook: Billing API\n")


def test_defaults_are_applied_to_parameters_not_given() -> None:
    tree = render_project(web_spec({"owner": "payments"}), SHIPPED_TEMPLATES)

    container = yaml_documents(tree, "k8s/base/deployment.yaml")[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/example/web:1.0.0"
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    production = yaml_documents(tree, "k8s/overlays/production/kustomization.yaml")[0]
    assert yaml.safe_load(production["patches"][0]["patch"])[0]["value"] == 2
    assert b"listen 8080;" in tree.files["app/nginx.conf"]
    assert b"error_log /dev/stderr info;" in tree.files["app/nginx.conf"]


def test_given_parameters_override_defaults() -> None:
    parameters: dict[str, ParameterValue] = {"owner": "payments", "image": "registry.local/pay:2.3", "port": 9090}
    tree = render_project(web_spec(parameters), SHIPPED_TEMPLATES)

    container = yaml_documents(tree, "k8s/base/deployment.yaml")[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/pay:2.3"
    assert container["ports"][0]["containerPort"] == 9090
    assert yaml_documents(tree, "k8s/base/kustomization.yaml")[0]["labels"][0]["pairs"]["team"] == "payments"


def test_list_and_load_templates_describe_the_shipped_template() -> None:
    manifests = list_templates(SHIPPED_TEMPLATES)

    assert "web-service" in [manifest.name for manifest in manifests]
    manifest = load_template(SHIPPED_TEMPLATES, "web-service")
    assert manifest.parameters["owner"].required
    assert manifest.parameters["replicas"].type == "integer"
    assert manifest.parameters["replicas"].default == 2
    assert set(manifest.environments) == {"development", "production"}


@pytest.mark.parametrize(
    ("declared", "normalized"),
    [
        (".", "."),
        ("", "."),
        ("./", "."),
        ("./deploy/dev/", "deploy/dev"),
        ("././deploy", "deploy"),
        (" deploy/dev// ", "deploy/dev"),
        ("deploy/X", "deploy/X"),
    ],
)
def test_a_kustomize_path_is_normalized_when_the_manifest_loads(tmp_path: Path, declared: str, normalized: str) -> None:
    write_template(tmp_path, "paths", {}, environments={"development": {"kustomize_path": declared}})

    assert load_template(tmp_path, "paths").environments["development"].kustomize_path == normalized


def test_a_template_without_a_files_directory_is_broken(tmp_path: Path) -> None:
    shutil.rmtree(write_template(tmp_path, "empty", {}) / "files")

    error = render_error(custom_spec("empty"), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == "template 'empty' has no files/ directory"


def test_the_tree_records_every_value_the_template_saw() -> None:
    defaults = {
        name: parameter.default
        for name, parameter in load_template(SHIPPED_TEMPLATES, "web-service").parameters.items()
    }

    tree = render_project(web_spec({"owner": "payments", "replicas": 3}), SHIPPED_TEMPLATES)

    assert tree.parameters == defaults | {"owner": "payments", "replicas": 3}


# ---- Parameter and request validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "field", "message"),
    [
        ({"owner": "payments", "colour": "blue"}, "parameters.colour", "is not a parameter of template 'web-service'"),
        ({}, "parameters.owner", "is required"),
        ({"owner": "payments", "replicas": "3"}, "parameters.replicas", "must be an integer"),
        ({"owner": "payments", "replicas": True}, "parameters.replicas", "must be an integer"),
        ({"owner": "payments", "port": 8080.0}, "parameters.port", "must be an integer"),
        ({"owner": "payments", "public": "yes"}, "parameters.public", "must be true or false"),
        ({"owner": "payments", "public": 1}, "parameters.public", "must be true or false"),
        ({"owner": 7}, "parameters.owner", "must be a string"),
        ({"owner": "Payments Team"}, "parameters.owner", "must match the pattern"),
        ({"owner": "a" * 64}, "parameters.owner", "must be at most 63 characters"),
        ({"owner": "payments", "replicas": 0}, "parameters.replicas", "must be at least 1"),
        ({"owner": "payments", "replicas": 21}, "parameters.replicas", "must be at most 20"),
        ({"owner": "payments", "log_level": "verbose"}, "parameters.log_level", "must be one of 'debug', 'info'"),
    ],
)
def test_invalid_parameters_are_reported_by_field(
    parameters: dict[str, ParameterValue], field: str, message: str
) -> None:
    error = render_error(web_spec(parameters))

    assert error.error_type is ErrorType.INVALID_INPUT
    assert [(error.field, message in error.message) for error in error.field_errors] == [(field, True)]
    assert str(error).startswith(f"invalid project request: {field}: ")


def test_number_parameters_accept_integers_and_floats_but_not_booleans(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "ratio",
        {"ratio.txt": "{{ params.ratio }}\n"},
        parameters={"ratio": {"type": "number", "default": 0.5, "minimum": 0, "maximum": 1}},
    )

    assert render_project(custom_spec("ratio", {"ratio": 1}), tmp_path).files["ratio.txt"] == b"1\n"
    assert render_project(custom_spec("ratio", {"ratio": 0.25}), tmp_path).files["ratio.txt"] == b"0.25\n"
    assert render_project(custom_spec("ratio"), tmp_path).files["ratio.txt"] == b"0.5\n"
    rejected: list[tuple[ParameterValue, str]] = [
        (True, "must be a number"),
        ("0.5", "must be a number"),
        (1.5, "must be at most 1"),
    ]
    for bad, message in rejected:
        error = render_error(custom_spec("ratio", {"ratio": bad}), tmp_path)
        assert [str(field_error) for field_error in error.field_errors] == [f"parameters.ratio: {message}"]


def test_a_malformed_environment_is_reported_once() -> None:
    error = render_error(web_spec(environment="Staging!"))

    assert [field_error.field for field_error in error.field_errors] == ["environment"]
    assert error.field_errors[0].message.startswith("must be an environment name such as 'development'")


def test_parameters_that_are_not_a_mapping_are_a_field_error() -> None:
    error = render_error(replace(web_spec(), parameters=cast(Any, None)))

    assert error.error_type is ErrorType.INVALID_INPUT
    assert [str(field_error) for field_error in error.field_errors] == [
        "parameters: must be a mapping of names to values",
        "parameters.owner: is required",
    ]


def test_unknown_environment_is_a_field_error() -> None:
    error = render_error(web_spec(environment="staging"))

    assert error.error_type is ErrorType.INVALID_INPUT
    assert [field_error.field for field_error in error.field_errors] == ["environment"]
    assert "has no environment 'staging' (declared: development, production)" in error.message


def test_every_problem_of_a_request_is_reported_at_once() -> None:
    spec = web_spec({"replicas": 0, "bogus": 1}, slug="X", environment="staging")

    error = render_error(spec)

    assert error.error_type is ErrorType.INVALID_INPUT
    assert [field_error.field for field_error in error.field_errors] == [
        "slug",
        "parameters.bogus",
        "parameters.owner",
        "parameters.replicas",
        "environment",
    ]
    assert error.message.startswith("invalid project request: slug: must be 3 to 40 characters long; ")


def test_unknown_template_is_its_own_error_type() -> None:
    error = render_error(web_spec(template="no-such-template"))

    assert error.error_type is ErrorType.UNKNOWN_TEMPLATE
    assert "unknown template 'no-such-template' (available: " in error.message
    assert "web-service" in error.message


@pytest.mark.parametrize("name", ["../templates", "web-service/../web-service", "/etc", ".", "", "Web-Service"])
def test_template_names_that_are_not_plain_directory_names_are_refused(name: str) -> None:
    with pytest.raises(TemplateError) as caught:
        load_template(SHIPPED_TEMPLATES, name)

    assert caught.value.error_type is ErrorType.UNKNOWN_TEMPLATE
    assert render_error(web_spec(template=name)).error_type is ErrorType.INVALID_INPUT


def test_parameter_values_over_the_contract_limit_are_refused() -> None:
    huge = "a" * (MAX_PARAMETER_VALUE_LENGTH + 1)

    error = render_error(web_spec({"owner": "payments", "image": huge}))

    assert error.error_type is ErrorType.INVALID_INPUT
    assert [str(field_error) for field_error in error.field_errors] == [
        f"parameters.image: must be at most {MAX_PARAMETER_VALUE_LENGTH} characters"
    ]


@pytest.mark.parametrize(
    ("declaration", "problem"),
    [
        ({"type": "integer"}, "parameters.x: must either be required or have a default"),
        ({"type": "text", "default": "a"}, "parameters.x.type: must be one of string, integer, number, boolean"),
        ({"type": "string", "default": "A", "pattern": "^[a-z]+$"}, "parameters.x.default: must match the pattern"),
        ({"type": "integer", "default": 1, "minimum": 5}, "parameters.x.default: must be at least 5"),
        ({"type": "string", "default": "a", "pattern": "("}, "parameters.x.pattern: is not a valid regular"),
        ({"type": "string", "default": "a", "requird": True}, "parameters.x.requird: unknown key"),
        ({"type": "string", "default": "a", "enum": ["b", 3]}, "parameters.x.enum[1]: must be a string"),
        ({"type": "boolean", "default": False, "minimum": 1}, "parameters.x.minimum: must be a number, on an"),
    ],
)
def test_a_broken_manifest_fails_the_template_not_the_request(
    tmp_path: Path, declaration: dict[str, Any], problem: str
) -> None:
    write_template(tmp_path, "broken", {}, parameters={"x": declaration})

    error = render_error(custom_spec("broken"), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert "template 'broken' has an invalid template.yaml: " in error.message
    assert problem in error.message


# ---- Sandboxing and path safety ----------------------------------------------------------------------------

SSTI_PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for x in range(3) %}boom{% endfor %}",
    "{{ 7 * 7 }}",
    "{{ config }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{% raw %}{{ x }}{% endraw %}{# comment #}",
]


@pytest.mark.parametrize("payload", SSTI_PAYLOADS)
def test_parameter_values_are_data_and_never_rendered_as_templates(tmp_path: Path, payload: str) -> None:
    write_template(
        tmp_path,
        "echo",
        {
            "note.txt": "{{ params.note }}|{{ project.display_name }}\n",
            "data.yaml": "note: {{ params.note|yaml_quote }}\n",
        },
        parameters={"note": {"type": "string", "default": "-"}},
    )
    spec = custom_spec("echo", {"note": payload})
    spec.display_name = payload

    tree = render_project(spec, tmp_path)

    assert tree.files["note.txt"].decode() == f"{payload}|{payload}\n"
    assert yaml.safe_load(tree.files["data.yaml"]) == {"note": payload}


def test_display_name_with_yaml_and_template_syntax_stays_literal_in_the_shipped_template() -> None:
    display_name = "Billing \"API\": {{ ''.__class__.__mro__ }} # not a comment"

    tree = render_project(web_spec(display_name=display_name), SHIPPED_TEMPLATES)

    deployment = yaml_documents(tree, "k8s/base/deployment.yaml")[0]
    assert deployment["metadata"]["annotations"]["provisioner.io/display-name"] == display_name
    assert tree.files["README.md"].decode().startswith(f"# {display_name}\n")
    assert "Billing &#34;API&#34;: {{ &#39;&#39;.__class__.__mro__ }}" in tree.files["app/index.html"].decode()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError"),
        ("{{ params.__class__.__init__.__globals__ }}", "SecurityError"),
        ("{{ project.update({'slug': 'x'}) }}", "SecurityError"),
        ("{% include '/etc/passwd' %}", "no loader"),
        ("{{ undefined_variable }}", "UndefinedError"),
        ("{{ [1, 2] | random }}", "No filter named 'random'"),
        ("{{ lipsum() }}", "UndefinedError"),
        ("{% if %}", "TemplateSyntaxError"),
        ("{{ cycler.__init__.__globals__ }}", "SecurityError"),
        ("{{ joiner.__init__.__globals__ }}", "SecurityError"),
        ("{{ namespace.__init__.__globals__ }}", "SecurityError"),
        ("{{ config }}", "UndefinedError"),
        ("{{ range(1000000) | list }}", "OverflowError"),
        ("{{ '-' * 100000000 }}", "SecurityError: repeating 1 items 100000000 times exceeds 8388608"),
        ("{{ [0] * 100000000 }}", "SecurityError: repeating 1 items 100000000 times exceeds 8388608"),
        ("{{ 10 ** 10000000 }}", "SecurityError: a power of more than 65536 bits"),
    ],
)
def test_template_code_runs_in_a_strict_sandbox(tmp_path: Path, content: str, reason: str) -> None:
    write_template(tmp_path, "evil", {"evil.txt": content})

    error = render_error(custom_spec("evil"), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert "template 'evil': cannot render 'evil.txt': " in error.message
    assert reason in error.message


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../x", "has an empty, '.' or '..' segment"),
        ("docs/../../x", "has an empty, '.' or '..' segment"),
        ("/etc/cron.d/x", "is absolute"),
        ("a//b", "has an empty, '.' or '..' segment"),
        ("", "has an empty, '.' or '..' segment"),
        ("a\\..\\b", "contains a backslash"),
        ("a\0b", "contains a backslash or a control character"),
        (".git/hooks/post-checkout", "writes into '.git'"),
    ],
)
def test_file_names_rendering_outside_the_tree_are_refused(tmp_path: Path, name: str, problem: str) -> None:
    write_template(
        tmp_path,
        "paths",
        {"{{ params.name }}": "content\n"},
        parameters={"name": {"type": "string", "default": "ok.txt"}},
    )
    assert "ok.txt" in render_project(custom_spec("paths"), tmp_path).files

    error = render_error(custom_spec("paths", {"name": name}), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert "file name '{{ params.name }}' renders to " in error.message
    assert problem in error.message


def test_directory_names_are_rendered_and_checked_too(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "dirs",
        {"{{ params.dir }}/file.txt": "x\n"},
        parameters={"dir": {"type": "string", "default": "src"}},
    )

    assert "src/file.txt" in render_project(custom_spec("dirs"), tmp_path).files
    assert "nested/src/file.txt" in render_project(custom_spec("dirs", {"dir": "nested/src"}), tmp_path).files
    assert render_error(custom_spec("dirs", {"dir": ".."}), tmp_path).error_type is ErrorType.TEMPLATE_RENDER_FAILED


def test_two_files_rendering_to_one_path_are_refused(tmp_path: Path) -> None:
    write_template(tmp_path, "clash", {"a.txt": "1\n", "{{ 'a.txt' }}": "2\n"})

    error = render_error(custom_spec("clash"), tmp_path)

    assert "two files render to the same path 'a.txt'" in error.message


@pytest.mark.parametrize(
    ("link", "shown"),
    [
        ("files/link.txt", "link.txt"),
        ("files/real/nested-link.txt", "real/nested-link.txt"),
        ("files/linked-dir", "linked-dir"),
        ("template.yaml", "template.yaml"),
        ("files", "files"),
    ],
)
def test_symlinks_anywhere_in_a_template_are_refused(tmp_path: Path, link: str, shown: str) -> None:
    directory = write_template(tmp_path, "linky", {"real/file.txt": "x\n"})
    outside = tmp_path / "outside.txt"
    outside.write_text("secret\n")
    if link in ("template.yaml", "files"):  # the real one moves aside and a link takes its place
        target = directory / f"moved-{link}"
        (directory / link).rename(target)
    else:
        target = directory / "files" / "real" if link.endswith("dir") else outside
    os.symlink(target, directory / link)

    error = render_error(custom_spec("linky"), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == f"template 'linky' contains a symlink at {shown!r}: refused"


def test_a_symlinked_template_directory_is_not_a_template(tmp_path: Path) -> None:
    write_template(tmp_path / "elsewhere", "real", {})
    (tmp_path / "templates").mkdir()
    os.symlink(tmp_path / "elsewhere" / "real", tmp_path / "templates" / "real")

    write_template(tmp_path / "templates", "genuine", {})
    (tmp_path / "templates" / "not-a-template").mkdir()

    assert render_error(custom_spec("real"), tmp_path / "templates").error_type is ErrorType.UNKNOWN_TEMPLATE
    assert [manifest.name for manifest in list_templates(tmp_path / "templates")] == ["genuine"]


def test_binary_files_are_copied_verbatim(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n\0\0{{ not a template }}\xff"
    latin1 = "caf\xe9 {{ x }}".encode("latin-1")
    write_template(tmp_path, "assets", {"logo.png": png, "legacy.txt": latin1})

    tree = render_project(custom_spec("assets"), tmp_path)

    assert tree.files["logo.png"] == png
    assert tree.files["legacy.txt"] == latin1


def test_executable_bits_are_kept_and_part_of_the_digest(tmp_path: Path) -> None:
    directory = write_template(tmp_path, "scripts", {"run.sh": "#!/bin/sh\necho {{ project.slug }}\n"})
    plain = render_project(custom_spec("scripts"), tmp_path)
    (directory / "files" / "run.sh").chmod(0o755)

    executable = render_project(custom_spec("scripts"), tmp_path)

    assert plain.mode("run.sh") == 0o100644
    assert executable.executable == frozenset({"run.sh"})
    assert executable.mode("run.sh") == 0o100755
    assert executable.files == plain.files
    assert executable.digest != plain.digest


# ---- Size limits -------------------------------------------------------------------------------------------


def test_a_parameter_that_blows_up_the_rendered_size_is_refused(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "repeat",
        {"big.txt": "{% for i in range(3000) %}{{ params.blob }}{% endfor %}"},
        parameters={"blob": {"type": "string", "default": "x"}},
    )
    assert render_project(custom_spec("repeat"), tmp_path).files["big.txt"] == b"x" * 3000

    error = render_error(custom_spec("repeat", {"blob": "y" * MAX_PARAMETER_VALUE_LENGTH}), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert "template 'repeat' renders more than 8388608 bytes (a parameter value may be too large)" in error.message


def test_render_limits_bound_total_size_and_file_count(tmp_path: Path) -> None:
    write_template(tmp_path, "many", {f"f{index}.txt": "0123456789" for index in range(5)})

    assert len(render_project(custom_spec("many"), tmp_path, RenderLimits(max_files=6)).files) == 6
    too_many = render_error(custom_spec("many"), tmp_path, limits=RenderLimits(max_files=5))
    assert "has more than 5 files" in too_many.message
    too_big = render_error(custom_spec("many"), tmp_path, limits=RenderLimits(max_total_bytes=100))
    assert "renders more than 100 bytes" in too_big.message


# ---- Checks on the rendered tree ---------------------------------------------------------------------------


def test_missing_overlay_for_the_environment_is_kustomize_path_missing(broken_catalogue: Path) -> None:
    error = render_error(web_spec(template="no-overlay"), broken_catalogue)

    assert error.error_type is ErrorType.KUSTOMIZE_PATH_MISSING
    assert error.message == (
        "template 'no-overlay' renders no kustomization at 'k8s/overlays/development' for environment 'development'"
    )
    production = render_project(web_spec(template="no-overlay", environment="production"), broken_catalogue)
    assert production.kustomize_path == "k8s/overlays/production"


@pytest.mark.parametrize("file_name", ["kustomization.yml", "Kustomization"])
def test_kustomization_file_name_variants_are_accepted(tmp_path: Path, file_name: str) -> None:
    directory = write_template(tmp_path, "variant", {}, environments={"development": {"kustomize_path": "deploy/dev/"}})
    (directory / "files" / "kustomization.yaml").unlink()
    (directory / "files" / "deploy" / "dev").mkdir(parents=True)
    (directory / "files" / "deploy" / "dev" / file_name).write_text(MINIMAL_KUSTOMIZATION)

    assert render_project(custom_spec("variant"), tmp_path).kustomize_path == "deploy/dev"


def test_an_overlay_referencing_a_base_the_template_lacks_is_refused(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "dangling",
        {"overlay/kustomization.yaml": "resources:\n  - ../base\n  - https://example.com/remote.yaml\n"},
        environments={"development": {"kustomize_path": "overlay"}},
    )

    error = render_error(custom_spec("dangling"), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == (
        "template 'dangling': 'overlay/kustomization.yaml' references '../base', which the template does not render"
    )


BASE: dict[str, str | bytes] = {
    "base/kustomization.yaml": "resources:\n  - deploy.yaml\n",
    "base/deploy.yaml": "kind: Deployment\n",
}


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        (  # every reference is checked, also those after one that exists
            {"overlay/kustomization.yaml": "resources:\n  - config.yaml\n  - missing.yaml\n"}
            | {"overlay/config.yaml": "a: 1\n"},
            "'overlay/kustomization.yaml' references 'missing.yaml', which the template does not render",
        ),
        (
            {"overlay/kustomization.yaml": "resources:\n  - ../base\n  - missing.yaml\n"},
            "'overlay/kustomization.yaml' references 'missing.yaml', which the template does not render",
        ),
        (  # a referenced kustomization is checked in turn
            {"overlay/kustomization.yaml": "resources:\n  - ../base\n", "base/kustomization.yaml": "bases: [gone]\n"},
            "'base/kustomization.yaml' references 'gone', which the template does not render",
        ),
        (
            {"overlay/kustomization.yaml": "resources:\n  - ../base/deploy.yaml\n  - ../manifests\n"}
            | {"manifests/service.yaml": "kind: Service\n"},
            "the directory 'manifests' is referenced as a kustomization but holds none",
        ),
        (
            {"overlay/kustomization.yaml": "resources:\n  - ../..\n"},
            "'overlay/kustomization.yaml' references '../..' outside the repository",
        ),
        (
            {"overlay/kustomization.yaml": "resources:\n  - ../../base\n"},
            "'overlay/kustomization.yaml' references '../../base' outside the repository",
        ),
        (
            {"overlay/kustomization.yaml": "resources:\n  - /etc/flux\n"},
            "'overlay/kustomization.yaml' references '/etc/flux' outside the repository",
        ),
        (
            {"overlay/kustomization.yaml": "- ../base\n"},
            "'overlay/kustomization.yaml' is not a mapping",
        ),
        (  # a file named Kustomization is not checked as YAML by its suffix: it is checked here
            {"overlay/Kustomization": b"resources: [\xff]\n"},
            "'overlay/Kustomization' is not valid YAML: "
            "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 12: invalid start byte",
        ),
    ],
    ids=[
        "after-a-file",
        "after-a-directory",
        "nested",
        "directory-without-kustomization",
        "parent-of-root",
        "outside-by-dotdot",
        "absolute",
        "not-a-mapping",
        "not-utf8",
    ],
)
def test_kustomization_references_are_checked_against_the_rendered_tree(
    tmp_path: Path, files: dict[str, str | bytes], problem: str
) -> None:
    write_template(tmp_path, "refs", BASE | files, environments={"development": {"kustomize_path": "overlay"}})

    error = render_error(custom_spec("refs"), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message == f"template 'refs': {problem}"


def test_a_kustomization_file_without_a_yaml_suffix_must_still_parse(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "refs",
        {"overlay/Kustomization": "resources: [unbalanced\n"},
        {},
        {"development": {"kustomize_path": "overlay"}},
    )

    error = render_error(custom_spec("refs"), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message.startswith(
        "template 'refs': 'overlay/Kustomization' is not valid YAML: ParserError: while parsing a flow sequence\n"
    )


@pytest.mark.parametrize("key", ["resources", "bases", "components", "patchesStrategicMerge", "crds"])
def test_each_kind_of_local_reference_is_checked(tmp_path: Path, key: str) -> None:
    references = f"{key}:\n  - present.yaml\n  - missing.yaml\n"
    write_template(tmp_path, "refs", {"kustomization.yaml": references, "present.yaml": "a: 1\n"})

    error = render_error(custom_spec("refs"), tmp_path)

    assert error.message == (
        "template 'refs': 'kustomization.yaml' references 'missing.yaml', which the template does not render"
    )
    (tmp_path / "refs" / "files" / "missing.yaml").write_text("b: 2\n")
    assert render_project(custom_spec("refs"), tmp_path).files["missing.yaml"] == b"b: 2\n"


@pytest.mark.parametrize("key", ["patches", "patchesJson6902"])
def test_the_path_of_each_patch_is_checked(tmp_path: Path, key: str) -> None:
    patches = f"{key}:\n  - path: present.yaml\n    target: {{kind: Deployment}}\n  - path: missing.yaml\n"
    write_template(tmp_path, "refs", {"kustomization.yaml": patches, "present.yaml": "a: 1\n"})

    error = render_error(custom_spec("refs"), tmp_path)

    assert error.message == (
        "template 'refs': 'kustomization.yaml' references 'missing.yaml', which the template does not render"
    )
    (tmp_path / "refs" / "files" / "missing.yaml").write_text("b: 2\n")
    assert render_project(custom_spec("refs"), tmp_path).files["missing.yaml"] == b"b: 2\n"


REFERENCES_LEFT_TO_KUSTOMIZE = """\
resources:
  - https://example.com/remote.yaml
  - git@github.com:example/infra//base?ref=v1
  - github.com/example/infra/base?ref=v1
  - gitlab.com/example/infra/base?ref=v1
  - 5
  - {path: not-a-string-reference.yaml}
components: {not: a list}
crds: 5
patchesStrategicMerge:
  - |
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: inline}
patches:
  - target: {kind: Deployment}
    patch: "- op: add"
  - just-a-string.yaml
patchesJson6902: 5
"""


def test_remote_inline_and_malformed_references_are_left_to_kustomize(tmp_path: Path) -> None:
    write_template(tmp_path, "refs", {"kustomization.yaml": REFERENCES_LEFT_TO_KUSTOMIZE})

    assert "kustomization.yaml" in render_project(custom_spec("refs"), tmp_path).files


@pytest.mark.parametrize(
    ("files", "kustomize_path"),
    [
        ({"overlay/kustomization.yaml": "resources:\n  - ..\n"}, "overlay"),  # the root's own kustomization
        ({"kustomization.yaml": "resources:\n  - overlay\n", "overlay/kustomization.yaml": "resources: [..]\n"}, "."),
        (
            {
                "overlay/kustomization.yaml": "resources: [../base]\n",
                "base/kustomization.yaml": "resources: [../overlay]\n",
            },
            "overlay",
        ),
        ({"overlay/kustomization.yaml": "resources: [., ./, ../overlay]\n"}, "overlay"),
    ],
    ids=["root", "cycle-through-root", "cycle", "itself"],
)
def test_kustomizations_referring_to_each_other_are_each_checked_once(
    tmp_path: Path, files: dict[str, str | bytes], kustomize_path: str
) -> None:
    write_template(tmp_path, "refs", files, environments={"development": {"kustomize_path": kustomize_path}})

    assert render_project(custom_spec("refs"), tmp_path).kustomize_path == kustomize_path


def test_rendered_yaml_must_parse(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "badyaml",
        {"config.yaml": "key: {{ params.value }}\n"},
        parameters={"value": {"type": "string", "default": "fine"}},
    )
    assert yaml.safe_load(render_project(custom_spec("badyaml"), tmp_path).files["config.yaml"]) == {"key": "fine"}

    error = render_error(custom_spec("badyaml", {"value": "[unbalanced"}), tmp_path)

    assert error.error_type is ErrorType.TEMPLATE_RENDER_FAILED
    assert error.message.startswith(
        "template 'badyaml': 'config.yaml' does not render to valid YAML: ParserError: while parsing a flow sequence\n"
    )


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        'quo"te',
        "back\\slash",
        "line\nbreak: x",
        "- item",
        "#hash",
        "\x7f\x85\u2028\ufeff",
        "emoji \U0001f680",
        "null",
        "true",
        "1e3",
        "",
    ],
)
def test_yaml_quote_round_trips_any_string(value: str) -> None:
    assert yaml.safe_load(f"key: {yaml_quote(value)}\n") == {"key": value}


# ---- Determinism -------------------------------------------------------------------------------------------


def test_digest_is_stable_across_renders_and_locations_and_follows_the_parameters(tmp_path: Path) -> None:
    first = render_project(web_spec(), SHIPPED_TEMPLATES)
    shutil.copytree(SHIPPED_TEMPLATES / "web-service", tmp_path / "web-service")
    elsewhere = render_project(web_spec(), tmp_path)
    changed = render_project(web_spec({"owner": "payments", "replicas": 3}), SHIPPED_TEMPLATES)

    assert elsewhere.files == first.files
    assert elsewhere.digest == first.digest == render_project(web_spec(), SHIPPED_TEMPLATES).digest
    assert len(first.digest) == 64
    assert changed.digest != first.digest


# ---- The validate_template activity ------------------------------------------------------------------------


def run_activity(spec: ProjectSpec, templates_dir: Path = SHIPPED_TEMPLATES) -> Any:
    return ActivityEnvironment().run(TemplateActivities(templates_dir).validate_template, spec)


def activity_error(spec: ProjectSpec, templates_dir: Path = SHIPPED_TEMPLATES) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        run_activity(spec, templates_dir)
    return caught.value


def test_activity_returns_the_render_summary() -> None:
    summary = run_activity(web_spec(environment="production"))
    tree = render_project(web_spec(environment="production"), SHIPPED_TEMPLATES)

    assert summary.template == "web-service"
    assert summary.file_count == len(tree.files)
    assert summary.tree_digest == tree.digest
    assert summary.kustomize_path == "k8s/overlays/production"


def test_activity_reports_invalid_input_as_a_non_retryable_error_with_field_errors() -> None:
    error = activity_error(web_spec({"owner": "payments", "replicas": 0}, slug="x"))

    assert error.type == "InvalidInput"
    assert error.non_retryable
    assert error.message == (
        "invalid project request: slug: must be 3 to 40 characters long; parameters.replicas: must be at least 1"
    )
    assert error.details == (
        {
            "field_errors": [
                {"field": "slug", "message": "must be 3 to 40 characters long"},
                {"field": "parameters.replicas", "message": "must be at least 1"},
            ]
        },
    )


@pytest.mark.parametrize(
    ("template", "error_type"), [("nope", "UnknownTemplate"), ("no-overlay", "KustomizePathMissing")]
)
def test_activity_maps_each_template_error_to_its_type(broken_catalogue: Path, template: str, error_type: str) -> None:
    error = activity_error(web_spec(template=template), broken_catalogue)

    assert error.type == error_type
    assert error.non_retryable


def test_activity_reports_a_sandbox_violation_as_template_render_failed(tmp_path: Path) -> None:
    write_template(tmp_path, "evil", {"evil.txt": "{{ ''.__class__.__mro__ }}"})

    error = activity_error(custom_spec("evil"), tmp_path)

    assert error.type == "TemplateRenderFailed"
    assert error.non_retryable
    assert "SecurityError" in error.message
    assert error.details == ({"field_errors": []},)
