"""source-controller's side of the flux simulator: go-git-worded clone errors over the real `git` binary,
reproducible tarball artifacts, and the GitRepository status conditions as source-controller writes them."""

from __future__ import annotations

import copy
import gzip
import io
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kubesim.flux_status import (
    ARTIFACT_IN_STORAGE,
    ARTIFACT_OUTDATED,
    FETCH_FAILED,
    NEW_REVISION,
    PROGRESSING,
    PROGRESSING_WITH_RETRY,
    READY,
    RECONCILING,
    STALLED,
    Outcome,
    delete_condition,
    get_condition,
    go_duration,
    set_condition,
)
from kubesim.store import JsonObj


class GitFetchError(Exception):
    """A clone failure, worded like go-git's errors inside Flux messages."""


@dataclass(frozen=True)
class GitTarget:
    branch: str
    tag: str
    commit: str

    @classmethod
    def from_spec(cls, spec: JsonObj) -> GitTarget:
        ref = spec.get("ref") or {}
        tag, commit = str(ref.get("tag") or ""), str(ref.get("commit") or "")
        branch = str(ref.get("branch") or ("" if tag or commit else "master"))  # Flux's default is master
        return cls(branch, tag, commit)

    @property
    def remote_ref(self) -> str:
        return f"refs/tags/{self.tag}" if self.tag else f"refs/heads/{self.branch}"

    def revision(self, sha: str) -> str:
        name = self.tag or self.branch
        return f"{name}@sha1:{sha}" if name else f"sha1:{sha}"


def _git_env(auth_header: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "GIT_ASKPASS": "true"})
    if auth_header:  # through the environment, never argv, so it does not show in process listings
        env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader", "GIT_CONFIG_VALUE_0": auth_header})
    return env


def _git_error(stderr: str, target: GitTarget) -> str:
    text = stderr.strip()
    lowered = text.lower()
    if "remote branch" in lowered and "not found" in lowered:
        return f'couldn\'t find remote ref "{target.remote_ref}"'
    if "authentication failed" in lowered or "could not read username" in lowered or " 401" in lowered:
        return "authentication required"
    if " 403" in lowered:
        return "authorization failed"
    if "not found" in lowered or " 404" in lowered:
        return "repository not found"
    refused = re.search(r"failed to connect to (\S+) port (\d+)", text, re.IGNORECASE)
    if refused:
        return f"dial tcp {refused.group(1)}:{refused.group(2)}: connect: connection refused"
    unresolved = re.search(r"could not resolve host: (\S+)", text, re.IGNORECASE)
    if unresolved:
        return f"dial tcp: lookup {unresolved.group(1)}: no such host"
    lines = [line.removeprefix("fatal: ").strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def _run_git(args: list[str], env: dict[str, str], timeout: float, target: GitTarget) -> str:
    try:
        done = subprocess.run(["git", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise GitFetchError(f"context deadline exceeded after {go_duration(timeout)}") from error
    if done.returncode != 0:
        raise GitFetchError(_git_error(done.stderr, target))
    return done.stdout


def remote_head(url: str, target: GitTarget, auth_header: str | None, timeout: float) -> str | None:
    """The commit the remote ref points at, or None when the target is a pinned commit."""
    if target.commit:
        return target.commit
    output = _run_git(["ls-remote", url, target.remote_ref], _git_env(auth_header), timeout, target)
    for line in output.splitlines():
        sha, _, ref = line.partition("\t")
        if ref in (target.remote_ref, target.remote_ref + "^{}"):
            return sha
    raise GitFetchError(f'couldn\'t find remote ref "{target.remote_ref}"')


def clone(url: str, target: GitTarget, auth_header: str | None, timeout: float, into: Path) -> str:
    """Check `target` out into `into` (shallow where possible); returns the commit sha."""
    env = _git_env(auth_header)
    if target.commit:
        _run_git(["clone", "--quiet", "--no-checkout", url, str(into)], env, timeout, target)
        _run_git(["-C", str(into), "checkout", "--quiet", target.commit], env, timeout, target)
    else:
        _run_git(["clone", "--quiet", "--depth", "1", "--single-branch", "--no-tags",
                  "--branch", target.tag or target.branch, url, str(into)], env, timeout, target)
    return _run_git(["-C", str(into), "rev-parse", "HEAD"], env, timeout, target).strip()


def _tree_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if ".git" in path.relative_to(root).parts:
            continue
        if path.is_file():
            yield path


def write_tarball(source_dir: Path, destination: Path) -> None:
    """A reproducible tar.gz of the checkout (no .git, zeroed times and owners), as Flux stores artifacts."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path in _tree_files(source_dir):
            info = tarfile.TarInfo(path.relative_to(source_dir).as_posix())
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o755 if os.access(path, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    temporary = destination.with_suffix(".tmp")
    temporary.write_bytes(buffer.getvalue())
    temporary.replace(destination)


# ---- GitRepository status (gitrepository_controller.go, fluxcd/pkg runtime/reconcile) -----------------------


def _progressive_status(status: JsonObj, generation: int, drift: bool, message: str) -> None:
    """fluxcd/pkg runtime/reconcile ProgressiveStatus: Reconciling=True always (conditions.MarkReconciling also drops
    Stalled); Ready=Unknown only on drift or when Ready is absent or already Unknown, so a Ready=True (or False)
    from the previous reconcile stays until something new is found."""
    set_condition(status, RECONCILING, "True", PROGRESSING, message, generation)
    ready = get_condition(status, READY)
    if drift or ready is None or ready.get("status") == "Unknown":
        set_condition(status, READY, "Unknown", PROGRESSING, message, generation)


def start_is_persisted(previous: JsonObj, generation: int, requested: str | None) -> bool:
    """Whether upstream patches the start-of-reconcile status before the checkout: gitrepository_controller.go
    reconcile() does when the generation differs or a reconcile was requested; reconcileStorage() when there is no
    artifact. A plain interval reconcile shows nothing until it finds a new revision or ends."""
    return (not previous.get("artifact") or int(previous.get("observedGeneration") or 0) != generation
            or requested != previous.get("lastHandledReconcileAt"))


def mark_reconcile_started(status: JsonObj, generation: int, previous: JsonObj) -> None:
    """What a GitRepository shows while its checkout runs (source-controller gitrepository_controller.go)."""
    if not previous.get("artifact"):
        # reconcileStorage(): no artifact yet -> ProgressiveStatus(true, ..., "building artifact").
        _progressive_status(status, generation, True, "building artifact")
        delete_condition(status, ARTIFACT_IN_STORAGE)
        return
    observed = int(previous.get("observedGeneration") or 0)
    if observed != generation:
        # reconcile(): ProgressiveStatus(false, ..., "processing object: new generation %d -> %d").
        message = f"processing object: new generation {observed} -> {generation}"
    else:
        # reconcile(): ProgressiveStatus(false, obj, meta.ProgressingReason, "reconciliation in progress").
        message = "reconciliation in progress"
    _progressive_status(status, generation, False, message)


def mark_source_progressing(status: JsonObj, generation: int, previous: JsonObj, found: str | None) -> None:
    """The status after the checkout, before the artifact is stored (or the failure is reported)."""
    mark_reconcile_started(status, generation, previous)
    if found is not None and (previous.get("artifact") or {}).get("revision") != found:
        # reconcileSource(): "Mark observations about the revision on the object" -- ArtifactOutdated only when an
        # artifact exists, then ProgressiveStatus(true, ..., "building artifact: %s"), which turns Ready Unknown.
        message = f"new upstream revision '{found}'"
        if previous.get("artifact"):
            set_condition(status, ARTIFACT_OUTDATED, "True", NEW_REVISION, message, generation)
        _progressive_status(status, generation, True, f"building artifact: {message}")


def mark_source_failed(status: JsonObj, generation: int, failure: Outcome, requested: str | None) -> None:
    delete_condition(status, ARTIFACT_OUTDATED)  # reconcileSource() drops it before the checkout
    set_condition(status, FETCH_FAILED, "True", failure.reason, failure.message, generation)
    set_condition(status, READY, "False", failure.reason, failure.message, generation)
    reconciling = get_condition(status, RECONCILING)
    if reconciling is not None:
        reconciling["reason"] = PROGRESSING_WITH_RETRY
    if requested is not None:
        status["lastHandledReconcileAt"] = requested


def mark_source_ready(status: JsonObj, generation: int, artifact: JsonObj, requested: str | None) -> None:
    """reconcileArtifact() stores it (ArtifactInStorage "stored artifact for revision '...'"); the summary makes Ready
    True from it and runtime/reconcile ResultFinalizer.Finalize drops Reconciling on success."""
    message = f"stored artifact for revision '{artifact['revision']}'"
    status["artifact"] = copy.deepcopy(artifact)
    delete_condition(status, FETCH_FAILED)
    delete_condition(status, ARTIFACT_OUTDATED)  # reconcileArtifact()'s deferred clean-up once the revision is stored
    delete_condition(status, RECONCILING)
    delete_condition(status, STALLED)
    set_condition(status, ARTIFACT_IN_STORAGE, "True", "Succeeded", message, generation)
    set_condition(status, READY, "True", "Succeeded", message, generation)
    status["observedGeneration"] = generation
    if requested is not None:
        status["lastHandledReconcileAt"] = requested


