"""The `validate_template` activity: check a project request against its template and render it once.

Only a summary leaves the worker (the rendered files stay here); `push_template` renders again from the same
spec on whichever worker runs it, and the digest proves both renders agree.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from provisioner.contracts import ProjectSpec, RenderSummary
from provisioner.templating import TemplateError, render_project


class TemplateActivities:
    """Template activities bound to the worker's templates directory. Stateless, hence thread-safe."""

    def __init__(self, templates_dir: Path) -> None:
        self._templates_dir = templates_dir

    @activity.defn(name="validate_template")
    def validate_template(self, spec: ProjectSpec) -> RenderSummary:
        try:
            tree = render_project(spec, self._templates_dir)
        except TemplateError as error:
            # A bad request or a broken template does not heal by retrying: fail the step permanently.
            raise as_application_error(error) from None
        activity.logger.info(
            "rendered template %s for %s: %d files, digest %s", spec.template, spec.slug, len(tree.files), tree.digest
        )
        return RenderSummary(
            template=tree.template,
            file_count=len(tree.files),
            tree_digest=tree.digest,
            kustomize_path=tree.kustomize_path,
            parameters=tree.parameters,
        )


def as_application_error(error: TemplateError) -> ApplicationError:
    """The non-retryable ApplicationError for `error`; its details carry the field errors as dicts."""
    return ApplicationError(
        error.message,
        {"field_errors": [asdict(field_error) for field_error in error.field_errors]},
        type=error.error_type.value,
        non_retryable=True,
    )
