"""What a create or an update is checked against before any run starts: the template catalogue and the project
records. The API, the CLI and the client share it, so a bad request or a conflict is refused the same way
everywhere, with field-level errors, and starts nothing. The workflows check again (the record's claim, the
template's validation): a starter without a catalogue (another language's SDK) still cannot break a project.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provisioner.contracts import FieldError, ProjectIdentity, ProjectSpec, ProjectUpdate, validate_spec
from provisioner.db.projects import ProjectView, get_project
from provisioner.templating import TemplateError, UnknownTemplate, check_against_template, load_template


@dataclass(frozen=True)
class CheckedSpec:
    """A request that passed every check, with its identity as the record would store it (defaults applied)."""

    spec: ProjectSpec
    identity: ProjectIdentity


class RequestRefused(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("invalid project request: " + "; ".join(map(str, errors)))
        self.errors = errors


@dataclass(frozen=True)
class ProjectCatalog:
    templates_dir: Path
    database_url: str

    def check(self, spec: ProjectSpec) -> CheckedSpec:
        """`spec` with its identity; RequestRefused naming every field error: its shape (`validate_spec`), then the
        rules of its template (that it exists, its declared parameters and environments), each field once."""
        identity, errors = self._checked(spec)
        if errors or identity is None:
            raise RequestRefused(errors)
        return CheckedSpec(spec, identity)

    def live_project(self, slug: str) -> ProjectView | None:
        """The project holding `slug` (None when there is none, or it was deleted or rolled back)."""
        record = get_project(self.database_url, slug)
        return record if record is not None and record.is_live else None

    def updated_spec(self, change: ProjectUpdate, project: ProjectView) -> CheckedSpec:
        """The whole spec `change` asks of `project`, checked against its template."""
        return self.check(change.applied_to(project.identity))

    def _checked(self, spec: ProjectSpec) -> tuple[ProjectIdentity | None, list[FieldError]]:
        errors = validate_spec(spec)
        if any(error.field == "template" for error in errors):
            return None, errors
        try:
            manifest = load_template(self.templates_dir, spec.template)
        except UnknownTemplate as unknown:
            return None, errors + unknown.field_errors
        except TemplateError as broken:
            return None, [*errors, FieldError("template", f"cannot be used: {broken.message}")]
        values, errors = check_against_template(spec, manifest, errors)
        return spec.identity(values), errors

