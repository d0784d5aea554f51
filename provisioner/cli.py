"""The `provisioner` command line: run the embedded stack, a worker, and create or inspect projects."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from provisioner.client import ProvisionerClient
from provisioner.contracts import (
    DEFAULT_DECISION_TIMEOUT,
    DEFAULT_ENVIRONMENT,
    DEFAULT_READY_TIMEOUT,
    TERMINAL_STATUSES,
    FailureAction,
    FailurePolicy,
    OperatorDecision,
    ParameterValue,
    Progress,
    ProjectSpec,
    ProjectStatus,
    ProjectUpdate,
    project_workflow_id,
)
from provisioner.progress_view import render_progress
from provisioner.settings import Settings

if TYPE_CHECKING:
    from provisioner.stack import EmbeddedStack

console = Console()
T = TypeVar("T")

DEMO_SLUG = "demo-web"
# `create` stops watching where a person must act, and says so with its own exit code.
STOP_WATCHING_AT = TERMINAL_STATUSES | {ProjectStatus.AWAITING_DECISION}


class CliError(click.ClickException):
    """One clear line for the user; the traceback only with --debug."""


class AwaitingDecision(CliError):
    """The run waits for an operator: not a failure yet, so an exit code of its own."""

    exit_code = 4


def async_command(function: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return asyncio.run(function(*args, **kwargs))

    return wrapper


def parse_parameters(pairs: tuple[str, ...]) -> dict[str, ParameterValue]:
    """`-p replicas=2 -p public=true`: values are typed as YAML scalars would be (int, float, bool, else string)."""
    parameters: dict[str, ParameterValue] = {}
    for pair in pairs:
        name, separator, raw = pair.partition("=")
        if not separator:
            raise CliError(f"parameter {pair!r} must look like name=value")
        parameters[name] = _scalar(raw)
    return parameters


def _scalar(raw: str) -> ParameterValue:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return raw


async def _show_live(updates: AsyncIterator[Progress]) -> Progress:
    """Redraw the progress on every change until the run reaches a terminal state."""
    last: Progress | None = None
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        async for progress in updates:
            last = progress
            live.update(render_progress(progress, datetime.now(UTC)))
    console.print()
    if last is None:
        raise CliError("the run reported no progress")
    return last


async def create_and_watch(pclient: ProvisionerClient, spec: ProjectSpec) -> Progress:
    from provisioner.client import InvalidRequest, ProjectConflict

    try:
        await pclient.start(spec)
    except (InvalidRequest, ProjectConflict) as error:
        raise CliError(str(error)) from None
    return await watch_operation(pclient, spec.slug)


async def watch_operation(pclient: ProvisionerClient, slug: str) -> Progress:
    """Show the project's running operation live until it ends or awaits an operator; a failure is an error."""
    progress = await _show_live(pclient.watch(slug, stop_at=STOP_WATCHING_AT))
    if progress.status is ProjectStatus.AWAITING_DECISION:
        raise AwaitingDecision(
            f"{progress.message}\ndecide with `provisioner retry {slug}` or `provisioner abort {slug}`"
        )
    if progress.status is ProjectStatus.FAILED:
        operation = progress.operation.value
        try:
            await pclient.wait(slug)
        except WorkflowFailureError as failure:
            cause = failure.cause
            reason = cause.message if isinstance(cause, ApplicationError) else str(cause)
            raise CliError(f"{operation} of {slug} failed: {reason}") from None
        raise CliError(f"{operation} of {slug} failed: {progress.message}")
    return progress


def _report(slug: str, progress: Progress) -> None:
    console.print(f"[bold]{slug}[/]: {progress.status.value}: {progress.message}", highlight=False)
    if progress.status is ProjectStatus.NOT_READY:
        sys.exit(3)


def _spec_from_options(
    slug: str,
    name: str | None,
    template: str,
    params: tuple[str, ...],
    environment: str,
    wait: bool,
    ready_timeout: float,
    on_failure: FailurePolicy,
) -> ProjectSpec:
    return ProjectSpec(
        slug=slug,
        display_name=name or slug,
        template=template,
        parameters=parse_parameters(params),
        environment=environment,
        wait_for_ready=wait,
        ready_timeout=timedelta(seconds=ready_timeout),
        on_failure=on_failure,
    )


@click.group()
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Provision projects: Git repository, template, record and Flux resources, on a durable Temporal workflow."""
    ctx.obj = {"debug": debug}


def project_options(function: Callable[..., Any]) -> Callable[..., Any]:
    decorators = [
        click.option("--name", help="Display name (default: the slug)."),
        click.option("--template", "-t", default="web-service", show_default=True),
        click.option("--param", "-p", "params", multiple=True, help="Template parameter name=value (repeatable)."),
        click.option("--environment", "-e", default=DEFAULT_ENVIRONMENT, show_default=True),
        click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until Flux reports Ready."),
        click.option(
            "--ready-timeout",
            type=float,
            default=DEFAULT_READY_TIMEOUT.total_seconds(),
            show_default=True,
            help="Seconds to wait for Ready (max 1800).",
        ),
        click.option(
            "--decision-timeout",
            type=click.FloatRange(min=0),
            default=DEFAULT_DECISION_TIMEOUT.total_seconds(),
            show_default=True,
            help="Seconds a failed run waits for `retry` or `abort` before applying --on-failure (0: at once).",
        ),
        click.option(
            "--on-failure",
            type=click.Choice([FailureAction.ABORT.value, FailureAction.LEAVE.value]),
            default=FailureAction.ABORT.value,
            show_default=True,
            help="Without a decision: abort rolls the completed steps back, leave keeps them.",
        ),
        click.option(
            "--delete-repository-on-abort", is_flag=True, help="Rollback deletes the repository too (default: kept)."
        ),
    ]
    for decorate in reversed(decorators):
        function = decorate(function)
    return function


@cli.command()
@click.argument("slug")
@project_options
@async_command
async def create(
    slug: str,
    name: str | None,
    template: str,
    params: tuple[str, ...],
    environment: str,
    wait: bool,
    ready_timeout: float,
    decision_timeout: float,
    on_failure: str,
    delete_repository_on_abort: bool,
) -> None:
    """Provision SLUG and show its progress live (against the configured Temporal)."""
    pclient = await _configured_client()
    policy = FailurePolicy(
        decision_timeout=timedelta(seconds=decision_timeout),
        default_action=FailureAction(on_failure),
        delete_repository_on_abort=delete_repository_on_abort,
    )
    spec = _spec_from_options(slug, name, template, params, environment, wait, ready_timeout, policy)
    _report(slug, await create_and_watch(pclient, spec))


@cli.command()
@click.argument("slug")
@click.option("--param", "-p", "params", multiple=True, help="Set a parameter name=value (repeatable; merged).")
@click.option("--unset", "unset", multiple=True, help="Remove a parameter: its template default applies (repeatable).")
@click.option("--environment", "-e", default=None, help="Move the project to another environment.")
@click.option("--display-name", default=None, help="A new display name.")
@click.option("--dry-run", is_flag=True, help="Print the rendered files' diff against the branch head; change nothing.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until Flux is Ready for the new commit.")
@click.option(
    "--ready-timeout",
    type=float,
    default=DEFAULT_READY_TIMEOUT.total_seconds(),
    show_default=True,
    help="Seconds to wait for Ready (max 1800).",
)
@async_command
async def update(
    slug: str,
    params: tuple[str, ...],
    unset: tuple[str, ...],
    environment: str | None,
    display_name: str | None,
    dry_run: bool,
    wait: bool,
    ready_timeout: float,
) -> None:
    """Change SLUG: merge parameters, move it to another environment, rename it; push, apply and await Ready."""
    from provisioner.client import InvalidRequest, NoSuchProject, ProjectConflict

    pclient = await _configured_client()
    change = ProjectUpdate(
        slug=slug,
        parameters=parse_parameters(params),
        unset=list(unset),
        environment=environment,
        display_name=display_name,
        wait_for_ready=wait,
        ready_timeout=timedelta(seconds=ready_timeout),
        dry_run=dry_run,
    )
    try:
        if dry_run:
            preview = await pclient.preview(change)
            if not preview.changed_files:
                console.print(f"[bold]{slug}[/]: nothing would change (branch head {preview.base_commit})")
                return
            click.echo(preview.diff, nl=False)
            return
        await pclient.update(change)
    except (InvalidRequest, NoSuchProject, ProjectConflict) as error:
        raise CliError(str(error)) from None
    _report(slug, await watch_operation(pclient, slug))


@cli.command()
@click.argument("slug")
@async_command
async def status(slug: str) -> None:
    """Show the progress of SLUG's latest operation (create, update or teardown) and the commit Flux applied."""
    pclient = await _configured_client()
    try:
        progress = await pclient.progress(slug)
    except Exception as error:
        raise CliError(f"no run for {slug}: {error}") from None
    console.print(render_progress(progress, datetime.now(UTC)))


async def _configured_client() -> ProvisionerClient:
    from provisioner.temporal import connect

    settings = Settings.from_env()
    return ProvisionerClient.from_settings(await connect(settings), settings)


@cli.command(name="list")
@click.option("--status", "status_filter", type=click.Choice([s.value for s in ProjectStatus]), default=None)
@click.option("--template", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@async_command
async def list_runs(status_filter: str | None, template: str | None, limit: int) -> None:
    """List project workflow runs (a visibility query on the ProjectSlug/ProjectStatus/ProjectTemplate attributes)."""
    pclient = await _configured_client()
    runs = await pclient.list(
        status=ProjectStatus(status_filter) if status_filter else None, template=template, limit=limit
    )
    table = Table("slug", "workflow", "status", "run", "template", "started")
    for run in runs:
        table.add_row(
            run.slug,
            run.workflow_type,
            run.status,
            run.execution_status.lower(),
            run.template,
            run.started_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)


async def _send_decision(slug: str, action: FailureAction, reason: str) -> None:
    from provisioner.client import NoSuchRun, ProjectConflict

    try:
        answer = await (await _configured_client()).decide(slug, OperatorDecision(action, reason))
    except (NoSuchRun, ProjectConflict) as error:
        raise CliError(str(error)) from None
    console.print(f"[bold]{slug}[/]: {answer}")


@cli.command()
@click.argument("slug")
@click.option("--reason", default="", help="A note kept in the run's progress and the project record.")
@async_command
async def retry(slug: str, reason: str) -> None:
    """Run the failed step of SLUG again (its run must be awaiting a decision), then carry on."""
    await _send_decision(slug, FailureAction.RETRY, reason)


@cli.command()
@click.argument("slug")
@click.option("--reason", default="", help="A note kept in the run's progress and the project record.")
@async_command
async def abort(slug: str, reason: str) -> None:
    """Roll back SLUG's completed steps (its run must be awaiting a decision) and end the run failed."""
    await _send_decision(slug, FailureAction.ABORT, reason)


@cli.command()
def worker() -> None:
    """Run a worker against the configured Temporal, database, Git host and cluster."""
    import worker as worker_module

    worker_module.main()


@cli.command()
@click.option("--slug", default=DEMO_SLUG, show_default=True)
@click.option("--template", "-t", default="web-service", show_default=True)
@click.option("--param", "-p", "params", multiple=True, default=("owner=platform-team",), show_default=True)
@async_command
async def demo(slug: str, template: str, params: tuple[str, ...]) -> None:
    """Start the embedded stack, provision one project with live progress, show what was made, and stop."""
    embedded_stack = _embedded_stack()
    from kubesim.cluster import FluxSimulatorConfig

    settings = Settings.from_env()
    log_file = _log_to_file(settings.data_dir)
    console.print(f"Logs of the worker and the embedded services: {log_file}")
    # The simulator answers after a short pause so that the wait for Ready is visible, as it is on a real cluster.
    async with embedded_stack(settings, flux=FluxSimulatorConfig(reconcile_delay=1.0)) as stack:
        _print_urls(stack)
        assert stack.client is not None
        pclient = ProvisionerClient.from_settings(stack.client, stack.settings)
        spec = _spec_from_options(
            slug, f"Demo {slug}", template, params, DEFAULT_ENVIRONMENT, True, 120.0, FailurePolicy()
        )
        started = datetime.now(UTC)
        progress = await create_and_watch(pclient, spec)
        elapsed = (datetime.now(UTC) - started).total_seconds()
        await asyncio.to_thread(_print_outcome, stack, slug, elapsed)
    if progress.status is not ProjectStatus.READY:
        raise CliError(f"{slug} ended {progress.status.value}: {progress.message}")


@cli.command()
@click.option("--api-port", type=int, default=8000, show_default=True, help="Port of the HTTP API.")
@async_command
async def up(api_port: int) -> None:
    """Run the embedded stack (Temporal + UI, Git server, sandbox cluster with Flux simulator, worker, HTTP API)
    until Ctrl-C.

    It uses the same data directory as `demo`, so earlier runs, repositories, records and cluster objects are back.
    """
    from provisioner.api.app import api_server, create_app
    from provisioner.api.auth import tokens_from_env

    embedded_stack = _embedded_stack()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    settings = Settings.from_env()
    console.print(f"Logs: {_log_to_file(settings.data_dir)}")
    tokens = tokens_from_env() or frozenset({_local_api_token(settings.data_dir)})
    async with embedded_stack(settings) as stack:
        app = create_app(stack.settings, client=stack.client, tokens=tokens)
        server = api_server(app, "127.0.0.1", api_port, handle_signals=False)  # Ctrl-C is this process's
        api = asyncio.create_task(server.serve(), name="api")
        _print_urls(stack)
        console.print(f"HTTP API: http://127.0.0.1:{api_port} (docs at /docs)")
        if not tokens_from_env():
            console.print(f"API token (from {settings.data_dir / 'api-token'}): use `Authorization: Bearer <token>`")
        console.print("[bold]Running.[/] Press Ctrl-C to stop.")
        await stop.wait()
        console.print("stopping…")
        server.should_exit = True
        await api


def _embedded_stack() -> type[EmbeddedStack]:
    """The embedded stack, which runs the sandbox cluster: refused clearly where the `sandbox` extra is missing (as in
    the runtime image, which holds neither kubesim/ nor the binaries)."""
    try:
        from provisioner.stack import EmbeddedStack
    except ModuleNotFoundError as missing:
        raise CliError(
            f"the embedded stack needs the sandbox (missing module {missing.name!r}): "
            "install the project with its `sandbox` extra, e.g. `make up` from a checkout"
        ) from None
    return EmbeddedStack


def _local_api_token(data_dir: Path) -> str:
    """The embedded stack's API token: made once, kept (mode 600) in the data directory, never printed."""
    token_file = data_dir / "api-token"
    if not token_file.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        token_file.touch(mode=0o600)
        token_file.write_text(secrets.token_urlsafe(32))
    return token_file.read_text().strip()


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@async_command
async def api(host: str, port: int) -> None:
    """Run the HTTP API against the configured Temporal and database (tokens from PROVISIONER_API_TOKENS)."""
    from provisioner.api.app import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    await serve(Settings.from_env(), host, port)


@cli.command("codec-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8081, show_default=True)
@async_command
async def codec_server(host: str, port: int) -> None:
    """Serve only the payload codec endpoint (/codec) for the Temporal UI and CLI (keys from PROVISIONER_CODEC_KEYS,
    tokens from PROVISIONER_API_TOKENS)."""
    from provisioner.api.app import api_server, create_codec_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    await api_server(create_codec_app(Settings.from_env()), host, port).serve()


@cli.command()
@click.argument("slug")
@click.option("--delete-repository", is_flag=True, help="Also delete the Git repository (kept by default).")
@click.option(
    "--timeout",
    "timeout_seconds",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds to wait for the objects to be gone.",
)
@async_command
async def delete(slug: str, delete_repository: bool, timeout_seconds: float) -> None:
    """Tear SLUG down: delete its Kustomization, GitRepository and Namespace, then mark its record deleted."""
    from provisioner.client import InvalidRequest, ProjectConflict

    pclient = await _configured_client()
    try:
        await pclient.teardown(
            slug, delete_repository=delete_repository, deletion_timeout=timedelta(seconds=timeout_seconds)
        )
    except (InvalidRequest, ProjectConflict) as error:
        raise CliError(str(error)) from None
    progress = await _show_live(pclient.watch(slug))
    if progress.status is not ProjectStatus.DELETED:
        raise CliError(f"tearing {slug} down ended {progress.status.value}: {progress.message}")
    console.print(f"[bold]{slug}[/]: deleted{'' if delete_repository else ' (repository kept)'}")


def _log_to_file(data_dir: Path) -> Path:
    """Keep the live progress readable: the services' and the worker's logs go to a file in the data directory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir / "provisioner.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    return log_file


def _print_urls(stack: Any) -> None:
    settings = stack.settings
    table = Table(title="Embedded stack (sandbox cluster with a Flux simulator)", show_header=False)
    table.add_row("Temporal UI", stack.ui_url)
    table.add_row("Temporal server", settings.temporal_address)
    table.add_row("Git server", settings.git_base_url)
    table.add_row("Sandbox Kubernetes API", stack.cluster.url if stack.cluster else "-")
    table.add_row("KUBECONFIG", settings.kubeconfig or "-")
    table.add_row("Database", _redacted(settings.effective_database_url))
    table.add_row("Data directory", str(settings.data_dir))
    console.print(table)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _print_outcome(stack: Any, slug: str, elapsed: float) -> None:
    """What was really made, read back from each system rather than from the workflow's own account."""
    from provisioner.db.projects import get_project

    settings = stack.settings
    record = get_project(settings.effective_database_url, slug)
    if record is None or not record.repo_url:
        raise CliError(f"no database record for {slug}")
    from kubernetes import client as kube

    found = kube.CustomObjectsApi(stack.cluster.api_client()).get_namespaced_custom_object(
        "kustomize.toolkit.fluxcd.io", "v1", slug, "kustomizations", slug
    )
    kustomization = cast(dict[str, Any], found)
    ready = next(c for c in kustomization["status"]["conditions"] if c["type"] == "Ready")
    head = subprocess.run(
        ["git", "ls-remote", record.repo_url, "refs/heads/main"], capture_output=True, text=True, check=True
    ).stdout.split()[0]

    table = Table(title=f"Project {slug}", show_header=False)
    table.add_row("Repository", record.repo_url)
    table.add_row("Commit (branch main)", head)
    table.add_row("Record status", record.status)
    table.add_row("Namespace", record.namespace)
    table.add_row("Kustomization Ready", f"{ready['status']} ({ready['reason']}): {ready['message']}")
    table.add_row("Revision Flux applied", kustomization["status"].get("lastAppliedRevision", "-"))
    table.add_row("Provisioning took", f"{elapsed:.1f} s")
    console.print(table, highlight=False)
    applied = Table("kind", "name", "namespace", "health", title="What Flux applied (read back from the cluster)")
    for row in _applied_objects(stack.cluster.api_client(), kustomization):
        applied.add_row(*row)
    console.print(applied, highlight=False)
    console.print(f"The run in the Temporal UI: {stack.workflow_url(project_workflow_id(slug))}", soft_wrap=True)
    console.print(
        "Bring the stack and the UI back up on this data with [bold]make up[/] (or `.venv/bin/provisioner up`)."
    )


def _applied_objects(api_client: Any, kustomization: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Each object of the Kustomization's inventory as the cluster holds it: kind, name, namespace, health."""
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(api_client)  # type: ignore[no-untyped-call]
    rows = []
    for entry in (kustomization["status"].get("inventory") or {}).get("entries", []):
        # `<namespace>_<name>_<group>_<kind>`: DNS-1123 names and kinds hold no "_".
        namespace, name, group, kind = entry["id"].split("_", 3)
        api_version = f"{group}/{entry['v']}" if group else entry["v"]
        found = dynamic.resources.get(api_version=api_version, kind=kind).get(name=name, namespace=namespace or None)
        rows.append((kind, name, namespace, _health(kind, found.to_dict())))
    return rows


def _health(kind: str, obj: dict[str, Any]) -> str:
    if kind != "Deployment":
        return "exists"
    status = obj.get("status") or {}
    available = {c["type"]: c for c in status.get("conditions") or []}.get("Available", {})
    replicas = f"{status.get('availableReplicas', 0)}/{(obj.get('spec') or {}).get('replicas', 1)} available"
    return f"{replicas}, Available={available.get('status', 'Unknown')}"


def main() -> None:
    debug = "--debug" in sys.argv
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except Exception as error:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {type(error).__name__}: {error}")
        sys.exit(1)
