"""The `provisioner` command as a user runs it: a real process, configured by the environment, against the
end-to-end stack (a dev server, the real worker, git, the sandbox cluster, PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass

from provisioner.contracts import ProjectStatus
from provisioner.db.projects import get_project
from tests.stack import Stack, git, unique_slug


@dataclass
class Outcome:
    code: int
    output: str


async def provisioner(stack: Stack, *args: str) -> Outcome:
    """Run the CLI without blocking the event loop that runs this test's worker."""
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": stack.temporal.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": stack.temporal.namespace,
        "PROVISIONER_TASK_QUEUE": stack.settings.task_queue,
        # What the CLI checks a request against before starting anything: the stack's templates and records.
        "PROVISIONER_TEMPLATES_DIR": str(stack.settings.templates_dir),
        "PROVISIONER_DATABASE_URL": stack.settings.effective_database_url,
        "COLUMNS": "160",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from provisioner.cli import main; main()",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return Outcome(process.returncode, output.decode())


async def test_create_shows_every_step_and_ends_ready(stack: Stack) -> None:
    slug = unique_slug("cli")
    created = await provisioner(stack, "create", slug, "-p", "owner=payments", "--ready-timeout", "60")
    assert created.code == 0, created.output
    for title in ("Validate and render the template", "Push the rendered template", "Wait until Flux reports Ready"):
        assert title in created.output
    assert f"{slug}: ready" in created.output

    status = await provisioner(stack, "status", slug)
    assert status.code == 0 and "100%" in status.output and "ready" in status.output

    listed = await provisioner(stack, "list", "--status", "ready")
    assert listed.code == 0 and slug in listed.output

    deleted = await provisioner(stack, "delete", slug)
    assert deleted.code == 0, deleted.output
    assert f"{slug}: deleted (repository kept)" in deleted.output
    assert not stack.namespace_exists(slug)
    assert (await stack.provisioner.progress(slug)).status is ProjectStatus.DELETED


async def test_a_failed_create_exits_non_zero_naming_the_step_and_the_reason(stack: Stack) -> None:
    failed = await provisioner(
        stack, "create", unique_slug("cli-broken"), "-t", "no-overlay", "-p", "owner=x", "--decision-timeout", "0"
    )
    assert failed.code == 1
    assert "validate_template failed" in failed.output
    assert "renders no kustomization at 'k8s/overlays/development'" in failed.output
    assert "Traceback" not in failed.output


async def test_errors_are_one_line_without_a_traceback_unless_debug(stack: Stack) -> None:
    invalid = await provisioner(stack, "create", "Not_A_Slug")
    assert invalid.code != 0 and "slug: must consist of lower case letters" in invalid.output
    assert "Traceback" not in invalid.output

    no_run = await provisioner(stack, "retry", "never-provisioned")
    assert no_run.code != 0 and "has no run" in no_run.output

    unreachable = {**os.environ, "TEMPORAL_ADDRESS": "127.0.0.1:1"}
    for debug, traceback_shown in ((), False), (("--debug",), True):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from provisioner.cli import main; main()",
            *debug,
            "status",
            "x",
            env=unreachable,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output = (await asyncio.wait_for(process.communicate(), timeout=60))[0].decode()
        assert process.returncode != 0
        assert ("Traceback" in output) is traceback_shown, output


async def test_update_moves_the_project_to_a_new_commit_that_status_names(stack: Stack) -> None:
    slug = unique_slug("cli-upd")
    created = await provisioner(stack, "create", slug, "-p", "owner=payments", "--ready-timeout", "60")
    assert created.code == 0, created.output

    dry = await provisioner(stack, "update", slug, "-p", "replicas=3", "--dry-run")
    assert dry.code == 0, dry.output
    assert "diff --git a/k8s/overlays/production/kustomization.yaml" in dry.output
    record = get_project(stack.settings.effective_database_url, slug)
    assert record is not None
    head = git("ls-remote", record.repo_url or "", "refs/heads/main").split()[0]
    assert head == record.commit_sha  # the dry run pushed nothing

    updated = await provisioner(stack, "update", slug, "-p", "replicas=3", "--ready-timeout", "60")
    assert updated.code == 0, updated.output
    assert f"{slug}: ready" in updated.output

    # The outside world: the branch head, the Kustomization, and what `status` names, all the same commit.
    head = git("ls-remote", record.repo_url or "", "refs/heads/main").split()[0]
    assert head != record.commit_sha
    kustomization = stack.flux_object("Kustomization", slug)
    assert kustomization["status"]["lastAppliedRevision"] == f"main@sha1:{head}"
    status = await provisioner(stack, "status", slug)
    assert status.code == 0 and f"Flux applied main@sha1:{head}" in status.output and "update" in status.output

    again = await provisioner(stack, "create", slug, "-p", "owner=payments", "-p", "replicas=5")
    assert again.code != 0
    assert "already exists" in again.output and "parameters.replicas" in again.output
