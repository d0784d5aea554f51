"""The API's request and response bodies, shaped for clients generated from the OpenAPI document.

Progress, its steps and project records are the contract dataclasses themselves (`Progress`, `StepProgress`,
`ProjectView`): one definition, serialised by pydantic (ISO 8601 datetimes, enums as their string values).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from provisioner.contracts import (
    DEFAULT_DECISION_TIMEOUT,
    DEFAULT_ENVIRONMENT,
    DEFAULT_READY_TIMEOUT,
    DISPLAY_NAME_MAX_LENGTH,
    ENVIRONMENT_PATTERN,
    MAX_DECISION_TIMEOUT,
    MAX_PARAMETERS,
    MAX_READY_TIMEOUT,
    MIN_READY_TIMEOUT,
    SLUG_MAX_LENGTH,
    SLUG_MIN_LENGTH,
    SLUG_PATTERN,
    TEMPLATE_NAME_PATTERN,
    FailureAction,
    FailurePolicy,
    FieldError,
    ParameterValue,
    Progress,
    ProjectSpec,
    ProjectStatus,
    ProjectUpdate,
)
from provisioner.db.projects import ProjectView

PROGRESS_JSON = TypeAdapter(Progress)

# Contract field names that the API spells differently.
_API_FIELD_NAMES = {"ready_timeout": "ready_timeout_seconds"}


class FailurePolicyRequest(BaseModel):
    """What the run does when a step fails for good (contracts.FailurePolicy)."""

    model_config = ConfigDict(extra="forbid")

    decision_timeout_seconds: int = Field(
        default=int(DEFAULT_DECISION_TIMEOUT.total_seconds()),
        ge=0,
        le=int(MAX_DECISION_TIMEOUT.total_seconds()),
        description="How long the run waits for an operator's retry or abort; 0 applies the default at once.",
    )
    default_action: Literal["abort", "leave"] = Field(
        default="abort",
        description="Applied when no decision arrives in time: abort rolls the completed steps back, leave keeps them.",
    )
    delete_repository_on_abort: bool = Field(default=False, description="Whether a rollback deletes the repository.")

    def to_policy(self) -> FailurePolicy:
        return FailurePolicy(
            decision_timeout=timedelta(seconds=self.decision_timeout_seconds),
            default_action=FailureAction(self.default_action),
            delete_repository_on_abort=self.delete_repository_on_abort,
        )


class DecisionRequest(BaseModel):
    """An operator's note with a retry or abort, kept in the run's progress and the project record."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=500, examples=["quota raised"])


class RunOptions(BaseModel):
    """How a create or an update runs (not part of the project's identity)."""

    model_config = ConfigDict(extra="forbid")

    wait_for_ready: bool = Field(default=True, description="Wait until Flux reports Ready for the pushed commit.")
    ready_timeout_seconds: int = Field(
        default=int(DEFAULT_READY_TIMEOUT.total_seconds()),
        ge=int(MIN_READY_TIMEOUT.total_seconds()),
        le=int(MAX_READY_TIMEOUT.total_seconds()),
        description="How long to wait for Ready before ending as not_ready.",
    )
    on_failure: FailurePolicyRequest = Field(default_factory=FailurePolicyRequest)


class ProjectRequest(RunOptions):
    """A request to provision a project. The documented patterns and bounds are enforced, with field-level errors;
    template parameters are checked against the chosen template's own declarations."""

    slug: str = Field(
        description="Names the repository, the namespace and the Flux objects: a DNS-1123 label.",
        examples=["billing-api"],
        json_schema_extra={"pattern": SLUG_PATTERN.pattern, "minLength": SLUG_MIN_LENGTH, "maxLength": SLUG_MAX_LENGTH},
    )
    display_name: str = Field(examples=["Billing API"], json_schema_extra={"maxLength": DISPLAY_NAME_MAX_LENGTH})
    template: str = Field(examples=["web-service"], json_schema_extra={"pattern": TEMPLATE_NAME_PATTERN.pattern})
    parameters: dict[str, ParameterValue] = Field(
        default_factory=dict,
        description="Template parameters; names, types and bounds are declared by the template.",
        examples=[{"owner": "payments", "replicas": 2}],
        json_schema_extra={"maxProperties": MAX_PARAMETERS},
    )
    environment: str = Field(default=DEFAULT_ENVIRONMENT, json_schema_extra={"pattern": ENVIRONMENT_PATTERN.pattern})

    def to_spec(self) -> ProjectSpec:
        return ProjectSpec(
            slug=self.slug,
            display_name=self.display_name,
            template=self.template,
            parameters=dict(self.parameters),
            environment=self.environment,
            wait_for_ready=self.wait_for_ready,
            ready_timeout=timedelta(seconds=self.ready_timeout_seconds),
            on_failure=self.on_failure.to_policy(),
        )


class ProjectUpdateRequest(RunOptions):
    """A change to a live project. `parameters` are merged into the stored ones and `unset` removes some; the
    environment and the display name change only when given. The template cannot change."""

    parameters: dict[str, ParameterValue] = Field(
        default_factory=dict,
        description="Parameters to set (merged into the project's stored parameters).",
        examples=[{"replicas": 3}],
        json_schema_extra={"maxProperties": MAX_PARAMETERS},
    )
    unset: list[str] = Field(
        default_factory=list, description="Parameters to remove (their template default applies again)."
    )
    environment: str | None = Field(default=None, json_schema_extra={"pattern": ENVIRONMENT_PATTERN.pattern})
    display_name: str | None = Field(default=None, json_schema_extra={"maxLength": DISPLAY_NAME_MAX_LENGTH})

    def to_update(self, slug: str, dry_run: bool = False) -> ProjectUpdate:
        return ProjectUpdate(
            slug=slug,
            parameters=dict(self.parameters),
            unset=list(self.unset),
            environment=self.environment,
            display_name=self.display_name,
            wait_for_ready=self.wait_for_ready,
            ready_timeout=timedelta(seconds=self.ready_timeout_seconds),
            on_failure=self.on_failure.to_policy(),
            dry_run=dry_run,
        )


class ProjectLinks(BaseModel):
    project: str = Field(description="GET: the record and the live progress.")
    events: str = Field(description="GET: Server-Sent Events of the provisioning progress.")


class OperationAccepted(BaseModel):
    """A workflow run that was started (or, for an identical repeated request, is already running)."""

    slug: str
    workflow_id: str
    run_id: str | None
    links: ProjectLinks


class ProjectDetail(BaseModel):
    slug: str
    record: ProjectView | None = Field(description="The database record; null until the workflow has written it.")
    progress: Progress | None = Field(
        description="The live progress of the project's latest operation (create, update or teardown: its "
        "`operation` says which); null if none."
    )
    links: ProjectLinks


class ProjectPage(BaseModel):
    items: list[ProjectView]
    limit: int
    offset: int
    next_offset: int | None = Field(
        description="The offset of the next page, or null on the last one (a full page may precede an empty one)."
    )


class StreamEnd(BaseModel):
    """The data of the final `end` event of a progress stream."""

    slug: str
    status: ProjectStatus | None
    message: str


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    temporal: bool
    database: bool


class ErrorResponse(BaseModel):
    detail: str


class FieldErrorDetail(BaseModel):
    """FastAPI's validation error item, plus `field`: the dotted path within the request (e.g. `parameters.port`)."""

    loc: list[str | int]
    msg: str
    type: str
    field: str


class ValidationErrorResponse(BaseModel):
    detail: list[FieldErrorDetail]


def body_field_errors(errors: Iterable[FieldError]) -> list[dict[str, Any]]:
    """Contract/template field errors as validation error items (`RequestValidationError`) in the request body."""
    items = []
    for error in errors:
        head, *rest = error.field.split(".", 1)
        items.append(
            {"loc": ("body", _API_FIELD_NAMES.get(head, head), *rest), "msg": error.message, "type": "value_error"}
        )
    return items


def request_field_error(loc: Iterable[str | int], message: str, error_type: str) -> FieldErrorDetail:
    """A FastAPI/pydantic validation error item, with its location made into a dotted field path."""
    location = list(loc)
    path = location[1:] if location and location[0] in ("body", "query", "path", "header") else location
    return FieldErrorDetail(loc=location, msg=message, type=error_type, field=".".join(map(str, path)))
