"""What one provisioning looked like, for either path, and the specs the benchmark provisions."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from provisioner.contracts import PROVISIONING_STEPS, ProjectSpec

BENCH_OWNER = "bench"
# Long enough for any hold in the waiting scenario: a held run must not end NOT_READY before the release.
BENCH_READY_TIMEOUT = timedelta(minutes=20)
WORKFLOW, DIRECT = "workflow", "direct"


@dataclass
class ProvisionRun:
    """One project provisioned by one path: its outcome, wall time and per-step split (seconds)."""

    slug: str
    path: str  # WORKFLOW or DIRECT
    status: str  # a ProjectStatus value, or "failed"
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)
    readiness_checks: int = 0
    error: str = ""
    queued_seconds: float = 0.0  # direct, pooled: from the submit until a thread took the job

    @property
    def from_request(self) -> float:
        """From the request (start call, or submit to the pool) to the result."""
        return self.queued_seconds + self.seconds

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProvisionRun:
        return cls(**data)


def new_run_id() -> str:
    return uuid.uuid4().hex[:6]


def bench_slug(scenario: str, run_id: str, index: int) -> str:
    """A slug unique to this benchmark run (DNS-1123, well under the 40-character limit)."""
    return f"{scenario}-{run_id}-{index:04d}"


def bench_spec(slug: str, template: str = "web-service", *, wait_for_ready: bool = True) -> ProjectSpec:
    return ProjectSpec(
        slug=slug,
        display_name=f"Bench {slug}",
        template=template,
        parameters={"owner": BENCH_OWNER},
        wait_for_ready=wait_for_ready,
        ready_timeout=BENCH_READY_TIMEOUT,
    )


def spec_to_json(spec: ProjectSpec) -> dict[str, Any]:
    return {
        "slug": spec.slug,
        "display_name": spec.display_name,
        "template": spec.template,
        "parameters": dict(spec.parameters),
        "environment": spec.environment,
        "wait_for_ready": spec.wait_for_ready,
        "ready_timeout_seconds": spec.ready_timeout.total_seconds(),
    }


def spec_from_json(data: dict[str, Any]) -> ProjectSpec:
    values = dict(data)
    values["ready_timeout"] = timedelta(seconds=values.pop("ready_timeout_seconds"))
    return ProjectSpec(**values)


STEP_ORDER: tuple[str, ...] = tuple(step.value for step in PROVISIONING_STEPS)
