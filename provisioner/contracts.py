"""The data exchanged between clients, workflows and activities.

Pure data and pure validation only: this module is imported inside the Temporal workflow sandbox, so it must
stay free of I/O, clocks and randomness. Payloads travel through the pydantic data converter
(`provisioner.temporal.DATA_CONVERTER`), which understands dataclasses, enums, `timedelta` and `datetime`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from temporalio.common import SearchAttributeKey

# Template parameter values are plain data: they are handed to templates as values, never rendered as templates.
ParameterValue = str | int | float | bool
Parameters = dict[str, ParameterValue]

DEFAULT_ENVIRONMENT = "development"
DEFAULT_READY_TIMEOUT = timedelta(minutes=5)
MAX_READY_TIMEOUT = timedelta(minutes=30)
MIN_READY_TIMEOUT = timedelta(seconds=1)

# A project slug names the repository, the namespace and the Flux objects, so it must be a DNS-1123 label
# (kube's rule for namespaces) that also makes a sane repository name.
SLUG_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
SLUG_MIN_LENGTH = 3
SLUG_MAX_LENGTH = 40
# Namespaces a project must never take over (or, on teardown, delete): the cluster's and Flux's own.
RESERVED_SLUGS = frozenset({"default", "flux-system"})
RESERVED_SLUG_PREFIXES = ("kube-", "flux-", "system-")
DISPLAY_NAME_MAX_LENGTH = 100
TEMPLATE_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENVIRONMENT_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
PARAMETER_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_PARAMETERS = 64
MAX_PARAMETER_VALUE_LENGTH = 4096
# The spec travels in the workflow input and in several activity inputs (so several times in the run's history).
MAX_PARAMETERS_TOTAL_LENGTH = 64 * 1024  # characters of all names and string values together
# Integers every JSON client reads exactly (JavaScript's Number.MAX_SAFE_INTEGER); beyond 4300 digits Python's
# own JSON decoding refuses them, which would leave a started run unable to read its input.
MAX_PARAMETER_INTEGER = 2**53 - 1
# A template name is a directory name and an environment name a kustomize overlay; the record's columns hold both.
TEMPLATE_NAME_MAX_LENGTH = 63
ENVIRONMENT_MAX_LENGTH = 63
# How long a run whose step failed for good waits for an operator's decision before applying its default.
DEFAULT_DECISION_TIMEOUT = timedelta(hours=24)
MAX_DECISION_TIMEOUT = timedelta(days=30)

MANAGED_BY = "provisioner"


class StepName(StrEnum):
    """The steps of the project workflows (see PROVISIONING_STEPS and TEARDOWN_STEPS for their order)."""

    READ_PROJECT = "read_project"  # an update's first step
    VALIDATE_TEMPLATE = "validate_template"
    CREATE_REPOSITORY = "create_repository"
    PUSH_TEMPLATE = "push_template"
    PERSIST_RECORD = "persist_record"
    APPLY_FLUX_RESOURCES = "apply_flux_resources"
    AWAIT_READY = "await_ready"
    FINALIZE_RECORD = "finalize_record"
    # Teardown
    MARK_DELETING = "mark_deleting"
    DELETE_FLUX_RESOURCES = "delete_flux_resources"
    AWAIT_DELETION = "await_deletion"
    DELETE_REPOSITORY = "delete_repository"
    MARK_DELETED = "mark_deleted"
    # Rollback of an aborted provisioning (with DELETE_FLUX_RESOURCES, AWAIT_DELETION and DELETE_REPOSITORY)
    MARK_FAILED = "mark_failed"
    # An update's dry run
    PREVIEW_CHANGES = "preview_changes"


# The record comes second: a create claims the slug there, before anything else is made.
PROVISIONING_STEPS: tuple[StepName, ...] = (
    StepName.VALIDATE_TEMPLATE,
    StepName.PERSIST_RECORD,
    StepName.CREATE_REPOSITORY,
    StepName.PUSH_TEMPLATE,
    StepName.APPLY_FLUX_RESOURCES,
    StepName.AWAIT_READY,
    StepName.FINALIZE_RECORD,
)
UPDATE_STEPS: tuple[StepName, ...] = (StepName.READ_PROJECT, *PROVISIONING_STEPS)
PREVIEW_STEPS: tuple[StepName, ...] = (StepName.READ_PROJECT, StepName.VALIDATE_TEMPLATE, StepName.PREVIEW_CHANGES)
TEARDOWN_STEPS: tuple[StepName, ...] = (
    StepName.MARK_DELETING,
    StepName.DELETE_FLUX_RESOURCES,
    StepName.AWAIT_DELETION,
    StepName.DELETE_REPOSITORY,
    StepName.MARK_DELETED,
)


STEP_TITLES: dict[StepName, str] = {
    StepName.READ_PROJECT: "Read the project's record",
    StepName.VALIDATE_TEMPLATE: "Validate and render the template",
    StepName.CREATE_REPOSITORY: "Create the Git repository (or find it)",
    StepName.PUSH_TEMPLATE: "Push the rendered template",
    StepName.PERSIST_RECORD: "Persist the project record",
    StepName.APPLY_FLUX_RESOURCES: "Apply the Flux resources",
    StepName.AWAIT_READY: "Wait until Flux reports Ready",
    StepName.FINALIZE_RECORD: "Finalize the project record",
    StepName.MARK_DELETING: "Mark the record deleting",
    StepName.DELETE_FLUX_RESOURCES: "Delete the Kustomization, GitRepository and Namespace",
    StepName.AWAIT_DELETION: "Wait until they are gone",
    StepName.DELETE_REPOSITORY: "Delete the Git repository",
    StepName.MARK_DELETED: "Mark the record deleted",
    StepName.MARK_FAILED: "Record the aborted run (rolled back, or failed)",
    StepName.PREVIEW_CHANGES: "Diff the rendered template against the branch head",
}


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class ProjectOperation(StrEnum):
    """What a project workflow run does; every operation of one project shares its workflow id."""

    CREATE = "create"
    UPDATE = "update"
    TEARDOWN = "teardown"


class ProjectStatus(StrEnum):
    """The overall status of a project, mirrored by its database record."""

    PENDING = "pending"
    PROVISIONING = "provisioning"
    UPDATING = "updating"
    READY = "ready"  # resources exist and Flux reported Ready=True
    PROVISIONED = "provisioned"  # resources exist; Ready was not waited for
    NOT_READY = "not_ready"  # resources exist but Flux did not report Ready within the bound
    FAILED = "failed"
    AWAITING_DECISION = "awaiting_decision"  # a step failed for good; waiting for an operator to retry or abort
    ROLLING_BACK = "rolling_back"  # aborted: undoing the completed steps
    ROLLED_BACK = "rolled_back"  # a creation was aborted and undone: the slug is free for a new project
    DELETING = "deleting"
    DELETED = "deleted"


TERMINAL_STATUSES = frozenset(
    {
        ProjectStatus.READY,
        ProjectStatus.PROVISIONED,
        ProjectStatus.NOT_READY,
        ProjectStatus.FAILED,
        ProjectStatus.ROLLED_BACK,
        ProjectStatus.DELETED,
    }
)
# A record in one of these holds no live project: a create may take the slug with any spec.
FREE_RECORD_STATUSES = frozenset({ProjectStatus.DELETED, ProjectStatus.ROLLED_BACK})


class ErrorType(StrEnum):
    """`ApplicationError.type` of the permanent (non-retryable) failures."""

    INVALID_INPUT = "InvalidInput"
    UNKNOWN_TEMPLATE = "UnknownTemplate"
    TEMPLATE_RENDER_FAILED = "TemplateRenderFailed"
    KUSTOMIZE_PATH_MISSING = "KustomizePathMissing"
    REPOSITORY_CONFLICT = "RepositoryConflict"
    FLUX_STALLED = "FluxStalled"
    CLUSTER_REJECTED = "ClusterRejected"  # the Kubernetes API refused a request no retry can fix (4xx)
    RESOURCE_NOT_MANAGED = "ResourceNotManaged"  # a cluster object of that name exists and is not this project's
    DELETION_TIMED_OUT = "DeletionTimedOut"
    INVALID_RECORD = "InvalidRecord"
    PROJECT_BUSY = "ProjectBusy"  # another operation (e.g. a provisioning run) is running for the project
    GIT_HOST_REJECTED = "GitHostRejected"  # the Git host refused a request no retry can fix (401, 403, 4xx)
    PROJECT_CONFLICT = "ProjectConflict"  # a create of a slug whose live project has another identity or content
    NO_SUCH_PROJECT = "NoSuchProject"  # an update of a slug with no live project
    FLUX_SUSPENDED = "FluxSuspended"  # the GitRepository or Kustomization is suspended: Flux applies nothing


class FailureAction(StrEnum):
    """What to do with a run whose step failed for good (an operator's decision, or the policy's default)."""

    RETRY = "retry"  # run the failed step again, then carry on
    ABORT = "abort"  # roll back the completed steps in reverse order and end the run failed
    LEAVE = "leave"  # end the run failed and keep what it made, for inspection


@dataclass
class FailurePolicy:
    """How a provisioning run behaves when a step fails for good.

    It waits up to `decision_timeout` for an operator's decision (FailureAction) and then applies `default_action`
    (ABORT or LEAVE; a zero timeout applies it at once). Rollback deletes the repository only if
    `delete_repository_on_abort`.
    """

    decision_timeout: timedelta = DEFAULT_DECISION_TIMEOUT
    default_action: FailureAction = FailureAction.ABORT
    delete_repository_on_abort: bool = False


@dataclass
class OperatorDecision:
    """An operator's answer to a run awaiting a decision (the workflow's `decide` update)."""

    action: FailureAction
    reason: str = ""


@dataclass
class PendingDecision:
    """What a run awaiting a decision shows in its progress."""

    step: StepName
    error_type: str
    message: str
    deadline: datetime
    default_action: FailureAction


@dataclass(frozen=True)
class FieldError:
    """One invalid field of a request, named by its dotted path (e.g. `parameters.replicas`)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass
class ProjectSpec:
    """Everything needed to provision one project; the workflow's only input. Holds no secrets."""

    slug: str
    display_name: str
    template: str
    parameters: Parameters = field(default_factory=dict)
    environment: str = DEFAULT_ENVIRONMENT
    wait_for_ready: bool = True
    ready_timeout: timedelta = DEFAULT_READY_TIMEOUT
    on_failure: FailurePolicy = field(default_factory=FailurePolicy)

    @property
    def namespace(self) -> str:
        return self.slug

    @property
    def workflow_id(self) -> str:
        return project_workflow_id(self.slug)

    def identity(self, parameters: Parameters | None = None) -> ProjectIdentity:
        """What the project is, with `parameters` (the template's defaults applied) in place of the given ones."""
        return ProjectIdentity(
            display_name=self.display_name,
            template=self.template,
            environment=self.environment,
            parameters=dict(self.parameters if parameters is None else parameters),
        )


@dataclass
class ProjectIdentity:
    """A project's identity and content: what a create must match and what an update changes. Run options
    (wait_for_ready, ready_timeout, on_failure) are not part of it. Parameters are stored with defaults applied."""

    display_name: str
    template: str
    environment: str
    parameters: Parameters = field(default_factory=dict)

    def differences(self, other: ProjectIdentity) -> list[str]:
        """The fields (parameters by name, e.g. `parameters.replicas`) in which `other` differs from this one."""
        fields_ = [
            name for name in ("display_name", "template", "environment") if getattr(self, name) != getattr(other, name)
        ]
        for name in sorted(set(self.parameters) | set(other.parameters)):
            mine, theirs = self.parameters.get(name), other.parameters.get(name)
            # 1 and True (or 1.0) compare equal in Python but render differently.
            if mine != theirs or type(mine) is not type(theirs):
                fields_.append(f"parameters.{name}")
        return fields_


def project_workflow_id(slug: str) -> str:
    """One workflow id per project for every operation (create, update, teardown): Temporal itself refuses a
    second run of a project while one is running, so the operations exclude each other atomically."""
    return f"project-{slug}"


def dry_run_workflow_id(slug: str) -> str:
    """A dry run changes nothing, so it runs beside the project's operations; ':' is never in a slug."""
    return f"project-{slug}:dry-run"


# Typed search attributes (Keyword), so runs can be found and filtered in the Temporal UI and by visibility queries.
# They must be registered on the namespace first (`provisioner up` and the tests do; see the README).
SEARCH_ATTRIBUTE_SLUG = SearchAttributeKey.for_keyword("ProjectSlug")
SEARCH_ATTRIBUTE_TEMPLATE = SearchAttributeKey.for_keyword("ProjectTemplate")
SEARCH_ATTRIBUTE_STATUS = SearchAttributeKey.for_keyword("ProjectStatus")
SEARCH_ATTRIBUTES = (SEARCH_ATTRIBUTE_SLUG, SEARCH_ATTRIBUTE_TEMPLATE, SEARCH_ATTRIBUTE_STATUS)


def validate_spec(spec: ProjectSpec) -> list[FieldError]:
    """Check the request's shape. Template-specific parameter rules are checked against the template itself."""
    errors = slug_errors(spec.slug)
    errors.extend(_display_name_errors(spec.display_name))
    if not is_template_name(spec.template):
        errors.append(
            FieldError(
                "template",
                f"must be a template name such as 'web-service' (at most {TEMPLATE_NAME_MAX_LENGTH} characters)",
            )
        )
    errors.extend(_environment_errors(spec.environment))
    errors.extend(_validate_parameters(spec.parameters))
    errors.extend(_run_option_errors(spec.ready_timeout, spec.on_failure))
    return errors


def validate_update(change: ProjectUpdate) -> list[FieldError]:
    """Check an update's shape (the merged spec is checked against the template once the project is read)."""
    errors = slug_errors(change.slug)
    if change.display_name is not None:
        errors.extend(_display_name_errors(change.display_name))
    if change.environment is not None:
        errors.extend(_environment_errors(change.environment))
    errors.extend(_validate_parameters(change.parameters))
    if not isinstance(change.unset, list) or not all(
        isinstance(name, str) and PARAMETER_NAME_PATTERN.fullmatch(name) for name in change.unset
    ):
        errors.append(FieldError("unset", "must be a list of parameter names"))
    elif set(change.unset) & set(change.parameters if isinstance(change.parameters, dict) else {}):
        errors.append(FieldError("unset", "must not name a parameter that the update also sets"))
    errors.extend(_run_option_errors(change.ready_timeout, change.on_failure))
    return errors


def _display_name_errors(display_name: object) -> list[FieldError]:
    if not isinstance(display_name, str):
        return [FieldError("display_name", "must be a string")]
    if not display_name.strip():
        return [FieldError("display_name", "must not be empty")]
    if len(display_name) > DISPLAY_NAME_MAX_LENGTH or not display_name.isprintable():
        return [FieldError("display_name", f"must be printable and at most {DISPLAY_NAME_MAX_LENGTH} characters")]
    return []


def _environment_errors(environment: object) -> list[FieldError]:
    if (
        not isinstance(environment, str)
        or len(environment) > ENVIRONMENT_MAX_LENGTH
        or not ENVIRONMENT_PATTERN.fullmatch(environment)
    ):
        return [
            FieldError(
                "environment",
                f"must be an environment name such as 'development' (at most {ENVIRONMENT_MAX_LENGTH} characters)",
            )
        ]
    return []


def _run_option_errors(ready_timeout: object, on_failure: FailurePolicy) -> list[FieldError]:
    errors = _validate_failure_policy(on_failure)
    if not isinstance(ready_timeout, timedelta) or not (MIN_READY_TIMEOUT <= ready_timeout <= MAX_READY_TIMEOUT):
        errors.append(
            FieldError(
                "ready_timeout",
                f"must be between {int(MIN_READY_TIMEOUT.total_seconds())} s "
                f"and {int(MAX_READY_TIMEOUT.total_seconds() // 60)} min",
            )
        )
    return errors


def _validate_failure_policy(policy: FailurePolicy) -> list[FieldError]:
    if not isinstance(policy, FailurePolicy):
        return [FieldError("on_failure", "must be a failure policy")]
    errors: list[FieldError] = []
    if not isinstance(policy.decision_timeout, timedelta) or not (
        timedelta(0) <= policy.decision_timeout <= MAX_DECISION_TIMEOUT
    ):
        errors.append(
            FieldError(
                "on_failure.decision_timeout", f"must be between 0 s and {MAX_DECISION_TIMEOUT.days} days"
            )
        )
    if policy.default_action not in (FailureAction.ABORT, FailureAction.LEAVE):
        # A default retry would loop for ever on a failure that needs a human.
        errors.append(FieldError("on_failure.default_action", "must be 'abort' or 'leave'"))
    return errors


def _validate_parameters(parameters: Parameters) -> list[FieldError]:
    if not isinstance(parameters, dict):
        return [FieldError("parameters", "must be a mapping of names to values")]
    errors: list[FieldError] = []
    if len(parameters) > MAX_PARAMETERS:
        errors.append(FieldError("parameters", f"must hold at most {MAX_PARAMETERS} entries"))
    total_length = 0
    for name, value in parameters.items():
        if not isinstance(name, str) or not PARAMETER_NAME_PATTERN.fullmatch(name):
            shown = name if not isinstance(name, str) or len(name) <= 80 else name[:80] + "..."
            errors.append(FieldError(f"parameters.{shown}", "is not a valid parameter name"))
            continue
        problem = _parameter_value_problem(value)
        if problem:
            errors.append(FieldError(f"parameters.{name}", problem))
        else:  # only acceptable entries count: one oversized value is reported once, by its own field
            total_length += len(name) + (len(value) if isinstance(value, str) else 0)
    if total_length > MAX_PARAMETERS_TOTAL_LENGTH:
        errors.append(
            FieldError("parameters", f"must total at most {MAX_PARAMETERS_TOTAL_LENGTH} characters of names and values")
        )
    return errors


def _parameter_value_problem(value: object) -> str | None:
    """Why `value` cannot be a parameter value whatever the template says, or None. Every accepted value survives
    the JSON round trip to the worker unchanged."""
    if isinstance(value, str):
        if len(value) > MAX_PARAMETER_VALUE_LENGTH:
            return f"must be at most {MAX_PARAMETER_VALUE_LENGTH} characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode text (it holds a lone surrogate)"
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if abs(value) > MAX_PARAMETER_INTEGER:
            return f"must be between -{MAX_PARAMETER_INTEGER} and {MAX_PARAMETER_INTEGER}"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "must be a finite number"
    return "must be a string, number or boolean"


def is_template_name(name: object) -> bool:
    """A plain directory name: it can never address anything outside the templates directory."""
    return (
        isinstance(name, str) and len(name) <= TEMPLATE_NAME_MAX_LENGTH and bool(TEMPLATE_NAME_PATTERN.fullmatch(name))
    )


# ---- Activity inputs and results -------------------------------------------------------------------------


@dataclass
class RenderSummary:
    """What validating the template found; the rendered files themselves stay on the worker that rendered them."""

    template: str
    file_count: int
    tree_digest: str  # sha256 over the sorted (path, content) pairs: identical on every worker
    kustomize_path: str
    parameters: Parameters = field(default_factory=dict)  # every parameter's value, the template's defaults applied


@dataclass
class RepositoryInfo:
    name: str
    clone_url: str  # what Flux clones; holds no credentials
    default_branch: str
    created: bool  # False when it already existed for this project
    # Private: Flux clones with the worker's deploy credential, which the Flux activity reads itself (never here).
    requires_credentials: bool = False


@dataclass
class PushRequest:
    spec: ProjectSpec
    repository: RepositoryInfo


@dataclass
class PushResult:
    commit_sha: str
    branch: str
    pushed: bool  # False when the branch already held exactly this tree


@dataclass
class ProjectRecordUpdate:
    """An upsert of the project's database record, keyed by slug."""

    slug: str
    status: ProjectStatus
    display_name: str = ""
    template: str = ""
    environment: str = ""
    namespace: str = ""
    workflow_id: str = ""
    repo_url: str | None = None
    commit_sha: str | None = None
    applied_revision: str | None = None  # what Flux applied, e.g. main@sha1:<commit>; only once Ready says so
    operation: str = ""  # the ProjectOperation of the run writing it
    last_message: str = ""
    # The project's parameters, defaults applied (None: unknown, keep the stored ones).
    parameters: Parameters | None = None
    # A create's first write: refused (ProjectConflict, nothing written) when the slug holds a live project of
    # another identity; a free record (deleted, rolled back) is taken over.
    claim: bool = False
    # When the workflow decided this write (workflow time). A write older than the stored one is stale (e.g. a
    # timed-out attempt landing after its retry and later steps) and changes nothing. None: always applies.
    written_at: datetime | None = None


@dataclass
class FluxApplyRequest:
    spec: ProjectSpec
    repository: RepositoryInfo
    commit_sha: str
    kustomize_path: str  # inside the repository, e.g. "k8s/overlays/development"
    # The `reconcile.fluxcd.io/requestedAt` token of this apply: decided by the workflow once per apply it decides
    # on (a provisioning, an update, an operator's retry), the same across the activity's retries.
    requested_at: str


@dataclass
class KubeObjectRef:
    api_version: str
    kind: str
    namespace: str | None
    name: str
    resource_version: str
    generation: int | None = None


@dataclass
class FluxApplyResult:
    namespace: str
    objects: list[KubeObjectRef]


@dataclass
class ReadinessRequest:
    namespace: str
    name: str  # the GitRepository and the Kustomization share the project's name
    revision: str  # the revision Flux must have applied: `<branch>@sha1:<the pushed commit>`
    requested_at: str  # the requestedAt token the apply wrote; the Kustomization must have handled it


class ReadinessState(StrEnum):
    READY = "ready"
    IN_PROGRESS = "in_progress"
    FAILED = "failed"  # Stalled=True or suspended: will not become Ready without a change


@dataclass
class ObjectReadiness:
    kind: str
    name: str
    state: ReadinessState
    reason: str
    message: str


@dataclass
class ReadinessReport:
    state: ReadinessState
    reason: str
    message: str
    objects: list[ObjectReadiness] = field(default_factory=list)
    revision: str = ""  # the Kustomization's status.lastAppliedRevision: what Flux has applied, whatever it is
    expected_revision: str = ""  # what the run waits for; READY only when `revision` is this one


# ---- Progress (the `progress` query) and the workflow result ---------------------------------------------


@dataclass
class StepProgress:
    name: StepName
    title: str
    state: StepState = StepState.PENDING
    attempt: int = 0
    message: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass
class Progress:
    slug: str
    workflow_id: str
    status: ProjectStatus
    percent: int
    steps: list[StepProgress]
    message: str = ""
    updated_at: datetime | None = None
    decision: PendingDecision | None = None  # set while the run awaits an operator's decision
    operation: ProjectOperation = ProjectOperation.CREATE
    commit_sha: str = ""  # the commit this run pushed (or found at the branch head), once pushed
    applied_revision: str = ""  # the revision Flux reported Ready for: always `<branch>@sha1:<commit_sha>`

    @property
    def current_step(self) -> StepProgress | None:
        for step in self.steps:
            if step.state in (StepState.RUNNING, StepState.FAILED):
                return step
        return None


@dataclass
class ProvisioningResult:
    slug: str
    status: ProjectStatus
    message: str
    repo_url: str
    commit_sha: str
    namespace: str
    readiness: ReadinessReport | None
    progress: Progress
    operation: ProjectOperation = ProjectOperation.CREATE
    applied_revision: str = ""  # set only when Flux reported Ready for exactly `commit_sha`


@dataclass
class ProjectUpdate:
    """Change a live project: merge `parameters` into the stored ones (`unset` removes some), and optionally move
    it to another environment or rename it. The template cannot change. The run options are as in ProjectSpec.
    `dry_run` renders and diffs against the branch head, and changes nothing."""

    slug: str
    parameters: Parameters = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)
    environment: str | None = None
    display_name: str | None = None
    wait_for_ready: bool = True
    ready_timeout: timedelta = DEFAULT_READY_TIMEOUT
    on_failure: FailurePolicy = field(default_factory=FailurePolicy)
    dry_run: bool = False

    def applied_to(self, current: ProjectIdentity) -> ProjectSpec:
        """The whole spec this update asks for, given the project's stored identity (pure: runs in the workflow)."""
        parameters = {name: value for name, value in current.parameters.items() if name not in self.unset}
        parameters.update(self.parameters)
        return ProjectSpec(
            slug=self.slug,
            display_name=current.display_name if self.display_name is None else self.display_name,
            template=current.template,
            parameters=parameters,
            environment=current.environment if self.environment is None else self.environment,
            wait_for_ready=self.wait_for_ready,
            ready_timeout=self.ready_timeout,
            on_failure=self.on_failure,
        )


@dataclass
class StoredProject:
    """What an update starts from: the live project's identity as its record holds it."""

    slug: str
    status: ProjectStatus
    identity: ProjectIdentity
    commit_sha: str | None = None


@dataclass
class PreviewRequest:
    spec: ProjectSpec
    repository: RepositoryInfo


@dataclass
class UpdatePreview:
    """A dry run's answer: the unified diff of the rendered tree against the branch head (empty: no change)."""

    slug: str
    base_commit: str  # the branch head the diff is against ("" when the branch does not exist)
    changed_files: list[str]
    diff: str
    spec: ProjectSpec


@dataclass
class RunSummary:
    """One workflow run of a project, as Temporal's visibility store lists it."""

    slug: str
    workflow_id: str
    run_id: str
    workflow_type: str
    status: str  # the ProjectStatus search attribute, "" when the run predates it
    execution_status: str  # Temporal's own: RUNNING, COMPLETED, FAILED, ...
    template: str
    started_at: datetime
    closed_at: datetime | None


DEFAULT_DELETION_TIMEOUT = timedelta(minutes=5)
MIN_DELETION_TIMEOUT = timedelta(seconds=1)
MAX_DELETION_TIMEOUT = timedelta(hours=1)


@dataclass
class TeardownSpec:
    """Remove a project's cluster resources and mark its record deleted; the repository is kept unless asked."""

    slug: str
    delete_repository: bool = False
    deletion_timeout: timedelta = DEFAULT_DELETION_TIMEOUT


# ---- Teardown: validation, activity inputs and results, the workflow result ------------------------------


def validate_teardown_spec(spec: TeardownSpec) -> list[FieldError]:
    """Check a teardown request's shape (the slug follows the same rule as when provisioning)."""
    errors = slug_errors(spec.slug)
    if not isinstance(spec.deletion_timeout, timedelta) or not (
        MIN_DELETION_TIMEOUT <= spec.deletion_timeout <= MAX_DELETION_TIMEOUT
    ):
        errors.append(
            FieldError(
                "deletion_timeout",
                f"must be between {int(MIN_DELETION_TIMEOUT.total_seconds())} s "
                f"and {int(MAX_DELETION_TIMEOUT.total_seconds() // 60)} min",
            )
        )
    return errors


def slug_errors(slug: str) -> list[FieldError]:
    """The slug names a namespace: it must be a DNS-1123 label, and never one the cluster or Flux owns."""
    if not isinstance(slug, str) or not SLUG_MIN_LENGTH <= len(slug) <= SLUG_MAX_LENGTH:
        return [FieldError("slug", f"must be {SLUG_MIN_LENGTH} to {SLUG_MAX_LENGTH} characters long")]
    if not SLUG_PATTERN.fullmatch(slug):
        return [
            FieldError(
                "slug",
                "must consist of lower case letters, digits or '-', start with a letter "
                "and end with a letter or digit (e.g. 'billing-api')",
            )
        ]
    if slug in RESERVED_SLUGS or slug.startswith(RESERVED_SLUG_PREFIXES):
        return [FieldError("slug", f"{slug!r} is reserved for the cluster's own namespaces")]
    return []


@dataclass
class FluxDeletionRequest:
    """The project's Flux objects: the Namespace `namespace` and, inside it, the GitRepository and the
    Kustomization named `name`."""

    namespace: str
    name: str
    project: str  # the slug the objects' `provisioner.dev/project` label must name before they are deleted


@dataclass
class FluxDeletionResult:
    requested: list[str]  # "Kind/name" of the objects whose deletion was requested (or already in progress)
    absent: list[str]  # "Kind/name" of the objects that did not exist


@dataclass
class RemainingObject:
    """An object that still exists while a teardown waits for it to be gone, and what holds it."""

    kind: str
    name: str
    deletion_timestamp: str | None  # None: not being deleted (e.g. created again meanwhile)
    finalizers: list[str] = field(default_factory=list)
    detail: str = ""  # e.g. the Namespace's NamespaceFinalizersRemaining condition message

    def describe(self) -> str:
        if self.deletion_timestamp is None:
            state = "not being deleted"
        else:
            state = f"deleting since {self.deletion_timestamp}"
            if self.finalizers:
                state += ", waiting on finalizers " + ", ".join(self.finalizers)
        detail = f"; {self.detail}" if self.detail else ""
        return f"{self.kind}/{self.name} ({state}{detail})"


@dataclass
class DeletionReport:
    remaining: list[RemainingObject] = field(default_factory=list)

    @property
    def gone(self) -> bool:
        return not self.remaining

    def describe(self) -> str:
        return "; ".join(item.describe() for item in self.remaining) if self.remaining else "all gone"


@dataclass
class RepositoryDeletionRequest:
    slug: str


@dataclass
class RepositoryDeletionResult:
    name: str
    deleted: bool  # False when there was no repository to delete


@dataclass
class TeardownResult:
    slug: str
    status: ProjectStatus
    message: str
    repository_deleted: bool
    progress: Progress
