"""Rich rendering of a provisioning run's `progress`: an overall bar and one line per step."""

from __future__ import annotations

from datetime import datetime

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from provisioner.contracts import Progress, ProjectStatus, StepName, StepProgress, StepState

STATE_MARKS: dict[StepState, tuple[str, str]] = {
    StepState.PENDING: ("·", "dim"),
    StepState.RUNNING: ("▶", "bold cyan"),
    StepState.SUCCEEDED: ("✔", "green"),
    StepState.FAILED: ("✘", "bold red"),
    StepState.SKIPPED: ("↷", "yellow"),
}

STATUS_STYLES: dict[ProjectStatus, str] = {
    ProjectStatus.PENDING: "dim",
    ProjectStatus.PROVISIONING: "cyan",
    ProjectStatus.UPDATING: "cyan",
    ProjectStatus.READY: "bold green",
    ProjectStatus.PROVISIONED: "green",
    ProjectStatus.NOT_READY: "bold yellow",
    ProjectStatus.FAILED: "bold red",
    ProjectStatus.AWAITING_DECISION: "bold yellow",
    ProjectStatus.ROLLING_BACK: "magenta",
    ProjectStatus.ROLLED_BACK: "bold magenta",
    ProjectStatus.DELETING: "magenta",
    ProjectStatus.DELETED: "bold magenta",
}


def _duration(step: StepProgress, now: datetime | None) -> str:
    if step.started_at is None:
        return ""
    end = step.finished_at or now
    if end is None:
        return ""
    return f"{(end - step.started_at).total_seconds():.1f}s"


def render_progress(progress: Progress, now: datetime | None = None) -> RenderableType:
    """`now` times the running step; finished steps show their own recorded duration."""
    header = Table.grid(padding=(0, 1))
    header.add_row(
        Text(progress.slug, style="bold"),
        Text(progress.operation.value, style="dim"),
        ProgressBar(total=100, completed=progress.percent, width=40),
        Text(f"{progress.percent:3d}%"),
        Text(progress.status.value, style=STATUS_STYLES[progress.status]),
    )
    steps = Table.grid(padding=(0, 2))
    for step in progress.steps:
        mark, style = STATE_MARKS[step.state]
        # The Ready wait counts checks, which are expected to repeat; other steps count attempts, which are not.
        noun = "check" if step.name is StepName.AWAIT_READY else "attempt"
        attempt = f"{noun} {step.attempt}" if step.attempt > 1 else ""
        steps.add_row(
            Text(mark, style=style),
            Text(step.title, style=style if step.state is not StepState.SUCCEEDED else ""),
            Text(_duration(step, now or progress.updated_at), style="dim"),
            Text(attempt, style="yellow"),
            Text(step.message, style="dim" if step.state is not StepState.FAILED else "red", overflow="fold"),
        )
    revision = Text()
    if progress.applied_revision:
        revision = Text(f"Flux applied {progress.applied_revision}", style="green")
    elif progress.commit_sha:
        revision = Text(f"commit {progress.commit_sha} (Flux has not reported Ready for it)", style="dim")
    return Group(header, steps, revision)
