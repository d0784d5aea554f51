"""Project templates: load a template's manifest, validate request parameters against it, render its file tree.

A template is a directory `<templates_dir>/<name>/` holding `template.yaml` (the manifest: parameters and
environments) and `files/` (the tree to render). Rendering is pure: it reads the template, renders into memory
and returns a `RenderedTree` whose digest is identical on every worker, so a later activity on another host can
render again and push exactly what validation saw.

Security model (tenants choose parameters; operators write templates):
- parameter values are data handed to the templates, never rendered as templates themselves;
- templates run in Jinja's immutable sandbox, with no loader (no include/import of other files), strict
  undefined and without the non-deterministic helpers (`random`, `lipsum`); `*` and `**` are bounded before they
  compute, so that text repeated by a tenant's number cannot allocate gigabytes before the output limit stops it
  (methods and filters taking a width, e.g. `center`, are not bounded: declare a `maximum` on integer parameters);
- the request itself is bounded (provisioner/contracts.py): at most 64 parameters, 4096 characters a value,
  64 Ki characters of names and values together, integers within +-(2**53 - 1), finite numbers, valid Unicode;
- rendered paths must stay inside the output tree; symlinks, special files and file names that are not UTF-8 in
  the template are refused (also when a file is swapped after the scan), and the rendered output is bounded in file
  count and size.
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import CodeType
from typing import Any, ClassVar

import yaml
from jinja2 import StrictUndefined, Template
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from provisioner.contracts import (
    ENVIRONMENT_PATTERN,
    MAX_PARAMETER_VALUE_LENGTH,
    MAX_PARAMETERS,
    PARAMETER_NAME_PATTERN,
    ErrorType,
    FieldError,
    ParameterValue,
    ProjectSpec,
    is_template_name,
    validate_spec,
)

MANIFEST_FILE_NAME = "template.yaml"
FILES_DIR_NAME = "files"
KUSTOMIZATION_FILE_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
YAML_SUFFIXES = (".yaml", ".yml")
MAX_MANIFEST_BYTES = 256 * 1024
MAX_PATH_SEGMENT_LENGTH = 255
MAX_PATH_LENGTH = 1024
MAX_POWER_BITS = 64 * 1024  # `a ** b` in a template: far more than any file needs, computed in microseconds
EXECUTABLE_MODE = 0o100755
# libyaml's safe loader when PyYAML has it (it does in wheels): the same documents as yaml.safe_load, parsed in C;
# the pure-Python parser was most of a render's CPU.
SAFE_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
REGULAR_MODE = 0o100644


# ---- Errors ------------------------------------------------------------------------------------------------


class TemplateError(Exception):
    """A permanent failure to validate or render a template; `error_type` is the `ApplicationError.type`."""

    error_type: ClassVar[ErrorType] = ErrorType.TEMPLATE_RENDER_FAILED

    def __init__(self, message: str, field_errors: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field_errors: list[FieldError] = list(field_errors or [])


class InvalidInput(TemplateError):
    error_type = ErrorType.INVALID_INPUT

    def __init__(self, field_errors: list[FieldError]) -> None:
        super().__init__("invalid project request: " + "; ".join(map(str, field_errors)), field_errors)


class UnknownTemplate(TemplateError):
    error_type = ErrorType.UNKNOWN_TEMPLATE


class TemplateRenderFailed(TemplateError):
    error_type = ErrorType.TEMPLATE_RENDER_FAILED


class KustomizePathMissing(TemplateError):
    error_type = ErrorType.KUSTOMIZE_PATH_MISSING


# ---- The manifest ------------------------------------------------------------------------------------------

PARAMETER_TYPES = ("string", "integer", "number", "boolean")
PARAMETER_KEYS = frozenset(
    {"type", "default", "required", "pattern", "minimum", "maximum", "max_length", "enum", "description"}
)
MANIFEST_KEYS = frozenset({"name", "description", "parameters", "environments"})
ENVIRONMENT_KEYS = frozenset({"kustomize_path", "description"})


@dataclass(frozen=True)
class ParameterSpec:
    """One declared parameter. A parameter is either required or has a default, so templates always see a value."""

    name: str
    type: str  # one of PARAMETER_TYPES
    default: ParameterValue | None = None
    required: bool = False
    pattern: re.Pattern[str] | None = None  # the whole value must match
    minimum: int | float | None = None
    maximum: int | float | None = None
    max_length: int | None = None
    enum: tuple[ParameterValue, ...] | None = None
    description: str = ""


@dataclass(frozen=True)
class EnvironmentSpec:
    name: str
    kustomize_path: str  # relative POSIX path inside the rendered tree; "." is the root
    description: str = ""


@dataclass(frozen=True)
class TemplateManifest:
    name: str
    description: str
    parameters: Mapping[str, ParameterSpec]
    environments: Mapping[str, EnvironmentSpec]
    directory: Path

    @property
    def files_dir(self) -> Path:
        return self.directory / FILES_DIR_NAME


@dataclass(frozen=True)
class RenderLimits:
    """Bounds on what one render may produce; a template or parameters exceeding them are refused."""

    max_files: int = 1000
    max_total_bytes: int = 8 * 1024 * 1024


DEFAULT_LIMITS = RenderLimits()


@dataclass(frozen=True)
class RenderedTree:
    """A rendered template in memory: POSIX relative path -> content, sorted by path."""

    template: str
    environment: str
    files: dict[str, bytes]
    kustomize_path: str
    digest: str
    executable: frozenset[str] = field(default_factory=frozenset)
    parameters: dict[str, ParameterValue] = field(default_factory=dict)  # every value the template saw

    def mode(self, path: str) -> int:
        """The git file mode of `path` (0o100755 or 0o100644)."""
        return EXECUTABLE_MODE if path in self.executable else REGULAR_MODE

    @property
    def total_bytes(self) -> int:
        return sum(len(content) for content in self.files.values())


# ---- Public API --------------------------------------------------------------------------------------------


def list_templates(templates_dir: Path) -> list[TemplateManifest]:
    """Every template under `templates_dir`, sorted by name. A broken manifest raises rather than hiding."""
    return [load_template(templates_dir, name) for name in _template_names(templates_dir)]


def load_template(templates_dir: Path, name: str) -> TemplateManifest:
    """Load and check the manifest of template `name`; `UnknownTemplate` if there is no such template."""
    # Only plain directory names: a name is never allowed to address anything outside templates_dir.
    if not is_template_name(name):
        shown = name[:80] + "..." if isinstance(name, str) and len(name) > 80 else name
        raise UnknownTemplate(f"unknown template {shown!r}", [FieldError("template", "is not a template name")])
    directory = templates_dir / name
    manifest_path = directory / MANIFEST_FILE_NAME
    if not _is_real_directory(directory) or not manifest_path.exists():
        available = ", ".join(_template_names(templates_dir)) or "none"
        raise UnknownTemplate(
            f"unknown template {name!r} (available: {available})",
            [FieldError("template", f"unknown template {name!r} (available: {available})")],
        )
    for entry in directory.iterdir():  # the template's own top level; files/ is walked when rendering
        if entry.is_symlink():
            raise TemplateRenderFailed(f"template {name!r} contains a symlink at {entry.name!r}: refused")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise TemplateRenderFailed(f"template {name!r}: {MANIFEST_FILE_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document = yaml.load(manifest_path.read_text(encoding="utf-8"), Loader=SAFE_YAML_LOADER)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise TemplateRenderFailed(f"template {name!r}: {MANIFEST_FILE_NAME} is not valid YAML: {error}") from None
    manifest, problems = _parse_manifest(document, name, directory)
    if problems:
        raise TemplateRenderFailed(f"template {name!r} has an invalid {MANIFEST_FILE_NAME}: " + "; ".join(problems))
    assert manifest is not None
    if not _is_real_directory(manifest.files_dir):
        raise TemplateRenderFailed(f"template {name!r} has no {FILES_DIR_NAME}/ directory")
    return manifest


def resolve_parameters(
    manifest: TemplateManifest, given: Mapping[str, ParameterValue]
) -> tuple[dict[str, ParameterValue], list[FieldError]]:
    """Check `given` against the manifest; return every parameter's value (defaults applied) and the errors."""
    errors: list[FieldError] = []
    for name in given:
        if name not in manifest.parameters:
            known = ", ".join(manifest.parameters) or "none"
            errors.append(
                FieldError(f"parameters.{name}", f"is not a parameter of template {manifest.name!r} (known: {known})")
            )
    values: dict[str, ParameterValue] = {}
    for name, parameter in manifest.parameters.items():
        if name in given:
            value = given[name]
            problem = _check_value(parameter, value)
            if problem:
                errors.append(FieldError(f"parameters.{name}", problem))
            else:
                values[name] = value
        elif parameter.required:
            errors.append(FieldError(f"parameters.{name}", "is required"))
        else:
            assert parameter.default is not None  # guaranteed by the manifest check
            values[name] = parameter.default
    return values, errors


def render_project(spec: ProjectSpec, templates_dir: Path, limits: RenderLimits = DEFAULT_LIMITS) -> RenderedTree:
    """Validate `spec` against its template, render the template into memory and check the result deploys.

    Raises `InvalidInput`, `UnknownTemplate`, `TemplateRenderFailed` or `KustomizePathMissing`.
    """
    spec_errors = validate_spec(spec)
    manifest = _load_for_spec(spec, templates_dir, spec_errors)
    values = _validated_values(spec, manifest, spec_errors)
    environment = manifest.environments[spec.environment]
    context = {
        "project": {
            "slug": spec.slug,
            "display_name": spec.display_name,
            "namespace": spec.namespace,
            "environment": spec.environment,
            "template": manifest.name,
        },
        "params": values,
    }
    files, executable = _render_files(manifest, context, limits)
    _check_yaml_files(manifest.name, files)
    _check_kustomization(manifest.name, environment, files)
    return RenderedTree(
        template=manifest.name,
        environment=spec.environment,
        files=files,
        kustomize_path=environment.kustomize_path,
        digest=tree_digest(files, executable),
        executable=executable,
        parameters=values,
    )


def tree_digest(files: Mapping[str, bytes], executable: frozenset[str] = frozenset()) -> str:
    """sha256 over the sorted (path, mode, content) entries; length-prefixed so no two trees collide by framing."""
    digest = hashlib.sha256()
    for path in sorted(files):
        encoded_path = path.encode("utf-8")
        content = files[path]
        mode = b"755" if path in executable else b"644"
        digest.update(b"%d:%s\0%s\0%d:" % (len(encoded_path), encoded_path, mode, len(content)))
        digest.update(content)
    return digest.hexdigest()


def yaml_quote(value: object) -> str:
    """A YAML double-quoted scalar holding `str(value)`: safe for any string, so data cannot change the structure."""
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    out = ['"']
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif 0x20 <= code <= 0x7E or (0xA0 <= code <= 0xD7FF) or (0xE000 <= code <= 0xFFFD) or code >= 0x10000:
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    out.append('"')
    return "".join(out)


# ---- Spec and parameter validation -------------------------------------------------------------------------


def _load_for_spec(spec: ProjectSpec, templates_dir: Path, spec_errors: list[FieldError]) -> TemplateManifest:
    if any(error.field == "template" for error in spec_errors):
        raise InvalidInput(spec_errors)
    try:
        manifest = load_template(templates_dir, spec.template)
    except UnknownTemplate as unknown:
        if spec_errors:  # report everything wrong with the request at once
            raise InvalidInput(spec_errors + unknown.field_errors) from None
        raise
    return manifest


def check_against_template(
    spec: ProjectSpec, manifest: TemplateManifest, spec_errors: list[FieldError]
) -> tuple[dict[str, ParameterValue], list[FieldError]]:
    """The request's parameters (defaults applied) and every error: `spec_errors`, then the template's own rules
    (parameters, environment) for fields not already reported. Cheap: renders nothing."""
    errors = list(spec_errors)
    already_reported = {error.field for error in errors}
    parameters = spec.parameters if isinstance(spec.parameters, dict) else {}
    values, parameter_errors = resolve_parameters(manifest, parameters)
    errors.extend(error for error in parameter_errors if error.field not in already_reported)
    if "environment" not in already_reported and spec.environment not in manifest.environments:
        declared = ", ".join(manifest.environments)
        errors.append(
            FieldError(
                "environment",
                f"template {manifest.name!r} has no environment {spec.environment!r} (declared: {declared})",
            )
        )
    return values, errors


def _validated_values(
    spec: ProjectSpec, manifest: TemplateManifest, spec_errors: list[FieldError]
) -> dict[str, ParameterValue]:
    values, errors = check_against_template(spec, manifest, spec_errors)
    if errors:
        raise InvalidInput(errors)
    return values


def _check_value(parameter: ParameterSpec, value: object) -> str | None:
    """Why `value` is not acceptable for `parameter`, or None. bool is never accepted as a number."""
    if parameter.type == "string":
        if not isinstance(value, str):
            return "must be a string"
        if parameter.max_length is not None and len(value) > parameter.max_length:
            return f"must be at most {parameter.max_length} characters"
        if parameter.pattern is not None and not parameter.pattern.fullmatch(value):
            return f"must match the pattern {parameter.pattern.pattern!r}"
    elif parameter.type == "boolean":
        if not isinstance(value, bool):
            return "must be true or false"
    else:
        if parameter.type == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
            return "must be an integer"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if parameter.minimum is not None and value < parameter.minimum:
            return f"must be at least {parameter.minimum}"
        if parameter.maximum is not None and value > parameter.maximum:
            return f"must be at most {parameter.maximum}"
    if parameter.enum is not None and value not in parameter.enum:
        return "must be one of " + ", ".join(map(repr, parameter.enum))
    return None


# ---- Manifest parsing --------------------------------------------------------------------------------------


def _parse_manifest(document: object, name: str, directory: Path) -> tuple[TemplateManifest | None, list[str]]:
    if not isinstance(document, dict):
        return None, ["must be a mapping"]
    problems = [f"{key}: unknown key" for key in document if key not in MANIFEST_KEYS]
    if document.get("name") != name:
        problems.append(f"name: must be {name!r}, the name of the template's directory")
    description = document.get("description", "")
    if not isinstance(description, str):
        problems.append("description: must be a string")
        description = ""
    parameters = _parse_parameters(document.get("parameters") or {}, problems)
    environments = _parse_environments(document.get("environments"), problems)
    manifest = TemplateManifest(name, description.strip(), parameters, environments, directory)
    return manifest, problems


def _parse_parameters(raw: object, problems: list[str]) -> dict[str, ParameterSpec]:
    if not isinstance(raw, dict):
        problems.append("parameters: must be a mapping of names to parameter declarations")
        return {}
    if len(raw) > MAX_PARAMETERS:
        problems.append(f"parameters: at most {MAX_PARAMETERS} may be declared")
    parameters = {}
    for name, declaration in raw.items():
        where = f"parameters.{name}"
        if not isinstance(name, str) or not PARAMETER_NAME_PATTERN.fullmatch(name):
            problems.append(f"{where}: is not a valid parameter name")
        elif not isinstance(declaration, dict):
            problems.append(f"{where}: must be a mapping")
        else:
            parameter = _parse_parameter(name, declaration, where, problems)
            if parameter is not None:
                parameters[name] = parameter
    return parameters


def _parse_parameter(name: str, raw: dict[str, Any], where: str, problems: list[str]) -> ParameterSpec | None:
    count_before = len(problems)
    problems.extend(f"{where}.{key}: unknown key" for key in raw if key not in PARAMETER_KEYS)
    kind = raw.get("type")
    if kind not in PARAMETER_TYPES:
        problems.append(f"{where}.type: must be one of {', '.join(PARAMETER_TYPES)}")
        return None
    numeric = kind in ("integer", "number")
    pattern = None
    if "pattern" in raw:
        if kind != "string" or not isinstance(raw["pattern"], str):
            problems.append(f"{where}.pattern: must be a regular expression, on a string parameter")
        else:
            try:
                pattern = re.compile(raw["pattern"])
            except re.error as error:
                problems.append(f"{where}.pattern: is not a valid regular expression ({error})")
    bounds: dict[str, int | float | None] = {}
    for key in ("minimum", "maximum"):
        bound = raw.get(key)
        if bound is not None and (not numeric or isinstance(bound, bool) or not isinstance(bound, int | float)):
            problems.append(f"{where}.{key}: must be a number, on an integer or number parameter")
            bound = None
        bounds[key] = bound
    minimum, maximum = bounds["minimum"], bounds["maximum"]
    if minimum is not None and maximum is not None and minimum > maximum:
        problems.append(f"{where}: minimum is greater than maximum")
    max_length = raw.get("max_length")
    if max_length is not None and (
        kind != "string"
        or isinstance(max_length, bool)
        or not isinstance(max_length, int)
        or not 1 <= max_length <= MAX_PARAMETER_VALUE_LENGTH
    ):
        problems.append(f"{where}.max_length: must be 1 to {MAX_PARAMETER_VALUE_LENGTH}, on a string parameter")
        max_length = None
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.append(f"{where}.description: must be a string")
        description = ""
    required = raw.get("required", False)
    if not isinstance(required, bool):
        problems.append(f"{where}.required: must be true or false")
    enum = raw.get("enum")
    if enum is not None and (not isinstance(enum, list) or not enum):
        problems.append(f"{where}.enum: must be a non-empty list")
        enum = None
    parameter = ParameterSpec(
        name=name,
        type=kind,
        required=required is True,
        pattern=pattern,
        minimum=minimum,
        maximum=maximum,
        max_length=max_length,
        enum=None,
        description=description.strip(),
    )
    # The enum values and the default must themselves be acceptable values of the parameter.
    for index, option in enumerate(enum or []):
        problem = _check_value(parameter, option)
        if problem:
            problems.append(f"{where}.enum[{index}]: {problem}")
    parameter = replace(parameter, enum=tuple(enum) if enum else None)
    default = raw.get("default")
    if required is True and default is not None:
        problems.append(f"{where}: a required parameter cannot have a default")
    elif required is not True and default is None:
        problems.append(f"{where}: must either be required or have a default")
    elif default is not None:
        problem = _check_value(parameter, default)
        if problem:
            problems.append(f"{where}.default: {problem}")
        parameter = replace(parameter, default=default)
    return parameter if len(problems) == count_before else None


def _parse_environments(raw: object, problems: list[str]) -> dict[str, EnvironmentSpec]:
    if not isinstance(raw, dict) or not raw:
        problems.append("environments: must map at least one environment name to its kustomize_path")
        return {}
    environments = {}
    for name, declaration in raw.items():
        where = f"environments.{name}"
        if not isinstance(name, str) or not ENVIRONMENT_PATTERN.fullmatch(name):
            problems.append(f"{where}: is not a valid environment name")
            continue
        if not isinstance(declaration, dict):
            problems.append(f"{where}: must be a mapping with a kustomize_path")
            continue
        problems.extend(f"{where}.{key}: unknown key" for key in declaration if key not in ENVIRONMENT_KEYS)
        path = declaration.get("kustomize_path")
        normalized = _normalize_kustomize_path(path) if isinstance(path, str) else None
        if normalized is None:
            problems.append(f"{where}.kustomize_path: must be a relative path inside the rendered tree")
            continue
        description = declaration.get("description", "")
        environments[name] = EnvironmentSpec(name, normalized, description if isinstance(description, str) else "")
    return environments


def _normalize_kustomize_path(path: str) -> str | None:
    stripped = path.strip().rstrip("/")
    while stripped.startswith("./"):
        stripped = stripped[2:]
    if stripped in ("", "."):
        return "."
    return stripped if _path_problem(stripped) is None else None


# ---- Rendering ---------------------------------------------------------------------------------------------


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with `*` and `**` checked before they compute: `'-' * params.width` may not build
    more than the render's byte budget, and `10 ** params.n` may not spin the CPU."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, max_repeat: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_repeat = max_repeat

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                repeated = isinstance(sequence, str | bytes | list | tuple) and isinstance(count, int)
                if repeated and len(sequence) * count > self.max_repeat:
                    raise SecurityError(
                        f"repeating {len(sequence)} items {count} times exceeds {self.max_repeat}: refused"
                    )
        elif operator == "**" and _power_bits(left, right) > MAX_POWER_BITS:
            raise SecurityError(f"a power of more than {MAX_POWER_BITS} bits: refused")
        return super().call_binop(context, operator, left, right)


def _power_bits(base: object, exponent: object) -> int:
    """About how many bits `base ** exponent` takes: 0 unless both are integers and the base is not 0, 1 or -1;
    not positive for an exponent that is not (the result is then 1 or a small float)."""
    if not (isinstance(base, int) and isinstance(exponent, int)) or abs(base) <= 1:
        return 0
    return abs(base).bit_length() * exponent


class _CompiledSources:
    """Jinja source text -> its compiled code object, least recently used first out, bounded in source characters.

    Compiling is most of a render's CPU, and every project of a template compiles the same file texts (twice per
    run: validate_template and push_template). A code object is immutable and holds only what the source says, so
    sharing it between renders, threads and tenants shares nothing else: each render still builds its own sandbox
    and context. Every `_environment` compiles alike (same class and options; the byte budget is checked when the
    code runs, in `call_binop`), so the source text is the whole key.
    """

    def __init__(self, max_characters: int) -> None:
        self._max_characters = max_characters
        self._codes: OrderedDict[str, CodeType] = OrderedDict()
        self._characters = 0
        self._lock = threading.Lock()

    def template(self, environment: ImmutableSandboxedEnvironment, source: str) -> Template:
        with self._lock:
            code = self._codes.get(source)
            if code is not None:
                self._codes.move_to_end(source)
        if code is None:
            code = environment.compile(source)  # outside the lock: threads compile different sources at once
            self._remember(source, code)
        return environment.template_class.from_code(environment, code, environment.make_globals(None))

    def cached_sources(self) -> list[str]:
        """The sources held, least recently used first."""
        with self._lock:
            return list(self._codes)

    def _remember(self, source: str, code: CodeType) -> None:
        if len(source) > self._max_characters:
            return
        with self._lock:
            if source in self._codes:
                return
            self._codes[source] = code
            self._characters += len(source)
            while self._characters > self._max_characters:
                evicted, _ = self._codes.popitem(last=False)
                self._characters -= len(evicted)


# Sized for a catalogue: the largest render allowed (8 MiB) fits twice.
_COMPILED = _CompiledSources(max_characters=2 * DEFAULT_LIMITS.max_total_bytes)


def _environment(limits: RenderLimits) -> ImmutableSandboxedEnvironment:
    """A fresh sandbox per render: only immutable compiled code is shared between renders (`_CompiledSources`)."""
    environment = _BoundedSandbox(
        limits.max_total_bytes, undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    # Rendering must be deterministic: the same request renders the same tree (and digest) on every worker.
    environment.globals.pop("lipsum", None)
    environment.filters.pop("random", None)
    environment.filters["yaml_quote"] = yaml_quote
    return environment


@dataclass(frozen=True)
class _SourceFile:
    parts: tuple[str, ...]  # the path inside files/, as named in the template (each name is itself a template)
    path: Path
    executable: bool

    @property
    def name(self) -> str:
        return "/".join(self.parts)


@dataclass(frozen=True)
class _Renderer:
    """Renders one template's file names and contents with one context."""

    template: str
    environment: ImmutableSandboxedEnvironment
    context: dict[str, Any]

    def path(self, source: _SourceFile) -> str:
        try:
            rendered = "/".join(
                _COMPILED.template(self.environment, part).render(self.context) for part in source.parts
            )
        except Exception as error:  # any failure of the template's own code is the template's failure
            raise TemplateRenderFailed(
                f"template {self.template!r}: cannot render the file name {source.name!r}: {_describe(error)}"
            ) from None
        problem = _path_problem(rendered)
        if problem:
            raise TemplateRenderFailed(
                f"template {self.template!r}: file name {source.name!r} renders to {rendered[:200]!r}, "
                f"which {problem}: refused"
            )
        return rendered

    def content(self, source: _SourceFile, raw: bytes, budget: int) -> bytes | None:
        """The rendered content, or None when it would exceed `budget` bytes."""
        if b"\0" in raw:
            return raw  # binary: copied verbatim
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw  # not UTF-8: treated as binary and copied verbatim
        chunks: list[str] = []
        produced = 0
        try:
            # Streamed, so that output blowing past the limit is stopped early rather than filling memory.
            for chunk in _COMPILED.template(self.environment, text).generate(self.context):
                produced += len(chunk)  # characters: never more than the bytes they encode to
                if produced > budget:
                    return None
                chunks.append(chunk)
            # Inside the try: template code can produce text UTF-8 cannot encode (e.g. a lone surrogate).
            return "".join(chunks).encode("utf-8")
        except Exception as error:
            raise TemplateRenderFailed(
                f"template {self.template!r}: cannot render {source.name!r}: {_describe(error)}"
            ) from None


def _render_files(
    manifest: TemplateManifest, context: dict[str, Any], limits: RenderLimits
) -> tuple[dict[str, bytes], frozenset[str]]:
    renderer = _Renderer(manifest.name, _environment(limits), context)
    sources = _collect_sources(manifest, limits)  # every source is checked before anything renders
    rendered: dict[str, bytes] = {}
    executable: set[str] = set()
    budget = limits.max_total_bytes
    for source in sources:
        target = renderer.path(source)
        if target in rendered:
            raise TemplateRenderFailed(
                f"template {manifest.name!r}: two files render to the same path {target!r} (one is {source.name!r})"
            )
        # Read whole (the scan bounded the sources' total): a source is judged by what it renders, not by its size.
        raw = _read_regular_file(source, manifest.name, limits.max_total_bytes)
        if len(raw) > limits.max_total_bytes:  # grown past the bound since the scan
            raise _too_large(manifest.name, limits)
        content = renderer.content(source, raw, budget)
        if content is None or len(content) > budget:
            raise _too_large(manifest.name, limits)
        budget -= len(content)
        rendered[target] = content
        if source.executable:
            executable.add(target)
    _refuse_file_directory_clashes(manifest.name, rendered)
    return {path: rendered[path] for path in sorted(rendered)}, frozenset(executable)


def _collect_sources(manifest: TemplateManifest, limits: RenderLimits) -> list[_SourceFile]:
    """The template's files, sorted; symlinks and special files are refused, never followed."""
    sources: list[_SourceFile] = []
    total_size = 0
    pending: list[tuple[Path, tuple[str, ...]]] = [(manifest.files_dir, ())]
    while pending:
        directory, parts = pending.pop()
        with os.scandir(directory) as scan:
            entries = list(scan)
        for entry in entries:
            entry_parts = (*parts, entry.name)
            if not _is_utf8(entry.name):  # undecodable bytes, which os.scandir hands over as lone surrogates
                raise TemplateRenderFailed(
                    f"template {manifest.name!r} has a file name that is not valid UTF-8 at "
                    f"{'/'.join(entry_parts)!r}: refused"
                )
            status = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(status.st_mode):
                raise TemplateRenderFailed(
                    f"template {manifest.name!r} contains a symlink at {'/'.join(entry_parts)!r}: refused"
                )
            if stat.S_ISDIR(status.st_mode):
                pending.append((Path(entry.path), entry_parts))
                continue
            if not stat.S_ISREG(status.st_mode):
                raise TemplateRenderFailed(
                    f"template {manifest.name!r} contains a special file at {'/'.join(entry_parts)!r}: refused"
                )
            sources.append(_SourceFile(entry_parts, Path(entry.path), bool(status.st_mode & stat.S_IXUSR)))
            total_size += status.st_size
            if len(sources) > limits.max_files:
                raise TemplateRenderFailed(
                    f"template {manifest.name!r} has more than {limits.max_files} files: refused"
                )
            if total_size > limits.max_total_bytes:
                raise _too_large(manifest.name, limits)
    return sorted(sources, key=lambda source: source.parts)


def _path_problem(path: str) -> str | None:
    """Why `path` is not a safe relative POSIX path inside the output tree, or None."""
    if len(path) > MAX_PATH_LENGTH:
        return f"is longer than {MAX_PATH_LENGTH} characters"
    if "\\" in path or any(ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        return "contains a backslash or a control character"
    if any(0xD800 <= ord(char) <= 0xDFFF for char in path):
        return "is not valid Unicode (it holds a lone surrogate)"
    if path.startswith("/"):
        return "is absolute"
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return "has an empty, '.' or '..' segment"
        if segment.lower() == ".git":
            return "writes into '.git'"
        if len(segment) > MAX_PATH_SEGMENT_LENGTH:
            return f"has a segment longer than {MAX_PATH_SEGMENT_LENGTH} characters"
    return None


def _too_large(template: str, limits: RenderLimits) -> TemplateRenderFailed:
    return TemplateRenderFailed(
        f"template {template!r} renders more than {limits.max_total_bytes} bytes "
        "(a parameter value may be too large): refused"
    )


def _refuse_file_directory_clashes(template: str, files: Mapping[str, bytes]) -> None:
    for path in files:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in files:
                raise TemplateRenderFailed(
                    f"template {template!r}: {parent!r} renders both as a file and as the directory of {path!r}"
                )


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:500]


# ---- Checks on the rendered tree ---------------------------------------------------------------------------


def _check_yaml_files(template: str, files: Mapping[str, bytes]) -> None:
    """Every rendered YAML file must parse: a broken manifest fails here, not later inside Flux."""
    for path, content in files.items():
        if not path.endswith(YAML_SUFFIXES):
            continue
        try:
            list(yaml.load_all(content.decode("utf-8"), Loader=SAFE_YAML_LOADER))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise TemplateRenderFailed(
                f"template {template!r}: {path!r} does not render to valid YAML: {_describe(error)}"
            ) from None


def _kustomization_file(files: Mapping[str, bytes], directory: str) -> str | None:
    for file_name in KUSTOMIZATION_FILE_NAMES:
        candidate = file_name if directory == "." else f"{directory}/{file_name}"
        if candidate in files:
            return candidate
    return None


def _check_kustomization(template: str, environment: EnvironmentSpec, files: Mapping[str, bytes]) -> None:
    """The environment's kustomize path must hold a kustomization whose local references all exist."""
    if _kustomization_file(files, environment.kustomize_path) is None:
        raise KustomizePathMissing(
            f"template {template!r} renders no kustomization at {environment.kustomize_path!r} "
            f"for environment {environment.name!r}"
        )
    _check_kustomization_references(template, environment.kustomize_path, files, seen=set())


def _check_kustomization_references(template: str, directory: str, files: Mapping[str, bytes], seen: set[str]) -> None:
    if directory in seen:
        return
    seen.add(directory)
    kustomization_path = _kustomization_file(files, directory)
    if kustomization_path is None:
        raise TemplateRenderFailed(
            f"template {template!r}: the directory {directory!r} is referenced as a kustomization but holds none"
        )
    try:
        document = yaml.load(files[kustomization_path].decode("utf-8"), Loader=SAFE_YAML_LOADER)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise TemplateRenderFailed(
            f"template {template!r}: {kustomization_path!r} is not valid YAML: {_describe(error)}"
        ) from None
    if not isinstance(document, dict):
        raise TemplateRenderFailed(f"template {template!r}: {kustomization_path!r} is not a mapping")
    for reference in _local_references(document):
        target = posixpath.normpath(posixpath.join(directory, reference))
        if target == ".." or target.startswith(("../", "/")):
            raise TemplateRenderFailed(
                f"template {template!r}: {kustomization_path!r} references {reference!r} outside the repository"
            )
        if target in files:
            continue
        prefix = "" if target == "." else target + "/"
        if any(path.startswith(prefix) for path in files):
            _check_kustomization_references(template, target, files, seen)
            continue
        raise TemplateRenderFailed(
            f"template {template!r}: {kustomization_path!r} references {reference!r}, "
            "which the template does not render"
        )


def _local_references(document: dict[str, Any]) -> Iterator[str]:
    """The local files and directories a kustomization refers to (remote resources are not checked)."""
    for key in ("resources", "bases", "components", "patchesStrategicMerge", "crds"):
        entries = document.get(key) or []
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, str) and _is_local_reference(entry):
                yield entry
    for key in ("patches", "patchesJson6902"):
        patches = document.get(key) or []
        for patch in patches if isinstance(patches, list) else []:
            if isinstance(patch, dict) and isinstance(patch.get("path"), str):
                yield patch["path"]


def _is_local_reference(entry: str) -> bool:
    # An inline strategic-merge patch is YAML text, and remote resources are URLs or host-prefixed git paths.
    return not ("\n" in entry or "://" in entry or entry.startswith(("git@", "github.com/", "gitlab.com/")))


# ---- Filesystem helpers ------------------------------------------------------------------------------------


def _read_regular_file(source: _SourceFile, template: str, limit: int) -> bytes:
    """Read at most `limit` + 1 bytes, refusing a file that was swapped for a symlink or special file meanwhile.

    Non-blocking, so that opening a FIFO swapped in since the scan returns at once (and is refused) instead of
    waiting for a writer forever; reading a regular file ignores the flag."""
    try:
        descriptor = os.open(source.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        if source.path.is_symlink():
            raise TemplateRenderFailed(
                f"template {template!r} contains a symlink at {source.name!r}: refused"
            ) from None
        raise
    with os.fdopen(descriptor, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise TemplateRenderFailed(f"template {template!r} contains a special file at {source.name!r}: refused")
        return stream.read(limit + 1)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_real_directory(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _template_names(templates_dir: Path) -> list[str]:
    if not templates_dir.is_dir():
        return []
    return sorted(
        entry.name
        for entry in templates_dir.iterdir()
        if is_template_name(entry.name) and _is_real_directory(entry) and (entry / MANIFEST_FILE_NAME).exists()
    )
