"""Hosted Git providers: repositories on Gitea or GitHub (and GitHub Enterprise Server), through their REST APIs.

Both follow the `RepositoryProvider` protocol of `activities/git.py`, which picks one from `Settings.git_provider`.

Ownership: the repository description ends with the marker `managed by provisioner: project <slug>`. It is written
by the very request that creates the repository (a topic would need a second call, and a crash in between would
leave a repository no run could ever claim). A repository whose description lacks the marker, or names another
project, is someone else's: never taken over, never deleted (`RepositoryConflict`).

Failures: the host's answer decides. 401, 403 (other than rate limiting) and other 4xx are permanent
(`GitHostRejected`); rate limiting, 408 and 5xx are retryable and say when to retry (Temporal's next retry honours
the host's hint); an unreachable host is retryable. The token travels only in the Authorization header: it is never
logged and is scrubbed out of every message built from the host's answers.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from temporalio.exceptions import ApplicationError

from provisioner.contracts import MANAGED_BY, SLUG_PATTERN, ErrorType, RepositoryInfo
from provisioner.settings import Secret, Settings

log = logging.getLogger(__name__)

OWNERSHIP_MARKER_PREFIX = f"managed by {MANAGED_BY}: project "
# The marker is the description's last words (optionally closed by a parenthesis), so a display name that happens
# to contain the marker text cannot claim another project's repository.
_OWNERSHIP_MARKER = re.compile(re.escape(OWNERSHIP_MARKER_PREFIX) + r"(?P<slug>[a-z][-a-z0-9]*)\)?\s*$")
# `ApplicationError.type` of the retryable failures (not in `ErrorType`: those are the permanent ones).
GIT_HOST_UNAVAILABLE = "GitHostUnavailable"
GIT_HOST_RATE_LIMITED = "GitHostRateLimited"
DEFAULT_RATE_LIMIT_DELAY = timedelta(seconds=60)  # GitHub's advice when a limit names no time
MAX_RETRY_DELAY = timedelta(hours=1)  # GitHub's primary limit resets within the hour
RETRYABLE_STATUS_CODES = frozenset({408, 425, 429})
MAX_DETAIL_LENGTH = 300


def ownership_marker(slug: str) -> str:
    return f"{OWNERSHIP_MARKER_PREFIX}{slug}"


def marked_description(description: str, slug: str) -> str:
    """`description` ending with the ownership marker of `slug` (appended unless it already ends with it)."""
    if owner_named_by(description) == slug:
        return description
    return f"{description} ({ownership_marker(slug)})" if description else ownership_marker(slug)


def owner_named_by(description: str | None) -> str | None:
    """The project the description's ownership marker names, or None when it carries none."""
    found = _OWNERSHIP_MARKER.search(description or "")
    return found.group("slug") if found else None


@dataclass(frozen=True)
class HostedRepository:
    """The fields of the host's repository object the provider relies on."""

    name: str
    description: str
    clone_url: str
    default_branch: str
    private: bool


class _HostedProvider:
    """The flow shared by the REST providers; subclasses name the endpoints and read the host's dialect."""

    host_name = ""
    provider_name = ""

    def __init__(self, settings: Settings) -> None:
        if not settings.git_token:
            raise ValueError(
                f"the {self.provider_name} Git provider needs a token: "
                "set PROVISIONER_GIT_TOKEN or PROVISIONER_GIT_TOKEN_FILE"
            )
        if not settings.git_owner:
            raise ValueError(
                f"the {self.provider_name} Git provider needs PROVISIONER_GIT_OWNER (a user or organisation)"
            )
        self._api_url = self.api_url(settings)
        self._owner = settings.git_owner
        self._owner_is_org = settings.git_owner_is_org
        self._private = settings.git_private
        self._default_branch = settings.git_default_branch
        self._username = settings.git_username
        self._token: Secret = settings.git_token
        self._timeout = settings.git_api_timeout_seconds

    # -- what subclasses provide --

    @staticmethod
    def api_url(settings: Settings) -> str:
        raise NotImplementedError

    def authorization(self, token: str) -> str:
        raise NotImplementedError

    def extra_headers(self) -> dict[str, str]:
        return {}

    def create_body(self, slug: str, description: str) -> dict[str, Any]:
        raise NotImplementedError

    def already_exists(self, response: httpx.Response) -> bool:
        raise NotImplementedError

    def rate_limit_delay(self, response: httpx.Response) -> timedelta | None:
        """How long the host asks to wait when `response` says a rate limit was hit; None when it does not."""
        if response.status_code != 429:
            return None
        return _retry_after(response) or DEFAULT_RATE_LIMIT_DELAY

    # -- RepositoryProvider --

    def ensure_repository(self, slug: str, description: str) -> RepositoryInfo:
        check_repository_name(slug)
        create_path = f"/orgs/{quote(self._owner, safe='')}/repos" if self._owner_is_org else "/user/repos"
        action = f"create repository {self._full_name(slug)!r}"
        body = self.create_body(slug, marked_description(description, slug))
        response = self._send("POST", create_path, action, json=body)
        if response.status_code == 201:
            created = self._parse_repository(response, action)
            log.info("created repository %s on %s", self._full_name(slug), self.host_name)
            return self._info(created, created=True)
        if not self.already_exists(response):
            raise self._failure(response, action)
        existing = self._get(slug)
        if existing is None:
            # The name is taken by something this token cannot read (another owner's private repository, a
            # rename's redirect): not ours to use.
            raise repository_conflict(
                f"{self.host_name} says repository {self._full_name(slug)!r} already exists, but it cannot be read "
                "with the configured token; refusing to use it"
            )
        self._check_owned_by(existing, slug)
        return self._info(existing, created=False)

    def find_repository(self, slug: str) -> RepositoryInfo | None:
        check_repository_name(slug)
        existing = self._get(slug)
        if existing is None:
            return None
        self._check_owned_by(existing, slug)
        return self._info(existing, created=False)

    def delete_repository(self, slug: str) -> bool:
        check_repository_name(slug)
        existing = self._get(slug)
        if existing is None:
            return False
        self._check_owned_by(existing, slug)
        action = f"delete repository {self._full_name(slug)!r}"
        response = self._send("DELETE", self._repository_path(slug), action)
        if response.status_code == 404:
            return False  # deleted meanwhile
        if response.status_code != 204:
            raise self._failure(response, action)
        log.info("deleted repository %s on %s", self._full_name(slug), self.host_name)
        return True

    def push_url(self, repository: RepositoryInfo) -> str:
        parts = urlsplit(repository.clone_url)
        host = parts.netloc.rpartition("@")[2]
        userinfo = f"{quote(self._username, safe='')}:{quote(self._token.reveal(), safe='')}"
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))

    # -- steps --

    def _get(self, slug: str) -> HostedRepository | None:
        action = f"read repository {self._full_name(slug)!r}"
        response = self._send("GET", self._repository_path(slug), action)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._failure(response, action)
        return self._parse_repository(response, action)

    def _check_owned_by(self, repository: HostedRepository, slug: str) -> None:
        owner = owner_named_by(repository.description)
        full_name = self._full_name(repository.name)
        if owner is None:
            raise repository_conflict(
                f"repository {full_name!r} already exists on {self.host_name} and is not managed by {MANAGED_BY} "
                f"(its description lacks {ownership_marker(slug)!r}); refusing to take it over "
                "(choose another slug or remove the repository)"
            )
        if owner != slug:
            raise repository_conflict(
                f"repository {full_name!r} already exists on {self.host_name} and belongs to project {owner!r}, "
                f"not {slug!r}"
            )

    def _info(self, repository: HostedRepository, *, created: bool) -> RepositoryInfo:
        return RepositoryInfo(
            name=repository.name,
            clone_url=repository.clone_url,
            default_branch=repository.default_branch or self._default_branch,
            created=created,
            requires_credentials=repository.private,
        )

    def _send(self, method: str, path: str, action: str, json: dict[str, Any] | None = None) -> httpx.Response:
        headers = {
            "Accept": "application/json",
            "User-Agent": MANAGED_BY,
            **self.extra_headers(),
            "Authorization": self.authorization(self._token.reveal()),
        }
        try:
            # A client per call: calls are rare, and nothing is shared between the activity threads.
            with httpx.Client(base_url=self._api_url, timeout=self._timeout, follow_redirects=False) as client:
                return client.request(method, path, json=json, headers=headers)
        except httpx.HTTPError as exc:
            message = f"could not reach {self.host_name} at {self._api_url} to {action}: {type(exc).__name__}: {exc}"
            raise _unavailable(self._scrub(message), GIT_HOST_UNAVAILABLE, None) from None

    def _failure(self, response: httpx.Response, action: str) -> ApplicationError:
        status = response.status_code
        answer = f"{self.host_name} answered {status}{self._detail(response)} when asked to {action}"
        delay = self.rate_limit_delay(response)
        if delay is not None:
            delay = min(delay, MAX_RETRY_DELAY)
            return _unavailable(f"{answer}: rate limited; {_when(delay)}", GIT_HOST_RATE_LIMITED, delay)
        if status in RETRYABLE_STATUS_CODES or status >= 500:
            hint = _retry_after(response)
            when = _when(hint) if hint is not None else "retrying with the activity's backoff"
            return _unavailable(f"{answer}: the host is unavailable; {when}", GIT_HOST_UNAVAILABLE, hint)
        if status == 401:
            return _rejected(
                f"{answer}: the token was refused; check PROVISIONER_GIT_TOKEN (or PROVISIONER_GIT_TOKEN_FILE)"
            )
        if status == 403:
            return _rejected(f"{answer}: the token lacks the permission{self._permission_hint(action)}")
        if status == 404:
            return _rejected(
                f"{answer}: not found; check PROVISIONER_GIT_OWNER ({self._owner!r}, "
                f"{'organisation' if self._owner_is_org else 'user'}) and PROVISIONER_GIT_API_URL ({self._api_url})"
            )
        return _rejected(answer)

    def _permission_hint(self, action: str) -> str:
        return ""

    def _parse_repository(self, response: httpx.Response, action: str) -> HostedRepository:
        try:
            body = response.json()
            repository = HostedRepository(
                name=str(body["name"]),
                description=str(body.get("description") or ""),
                clone_url=str(body["clone_url"]),
                default_branch=str(body.get("default_branch") or ""),
                private=bool(body.get("private", False)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _rejected(
                f"{self.host_name} answered {response.status_code} with no repository object when asked to {action}"
            ) from None
        url = urlsplit(repository.clone_url)
        if url.scheme not in ("http", "https") or not url.hostname or url.username or url.password:
            shown = self._scrub(repository.clone_url)
            raise _rejected(f"{self.host_name} gave the clone URL {shown!r}, not a plain http(s) URL")
        return repository

    def _detail(self, response: httpx.Response) -> str:
        """The host's own explanation (`message` and `errors[].message`), scrubbed and bounded."""
        try:
            body = response.json()
        except ValueError:
            text = response.text.strip()
            return f" ({self._scrub(text[:MAX_DETAIL_LENGTH])})" if text else ""
        if not isinstance(body, dict):
            return ""
        parts = [str(body.get("message") or "")]
        for error in body.get("errors") or []:
            explained = error.get("message") or error.get("code") if isinstance(error, dict) else error
            parts.append(str(explained or ""))
        detail = "; ".join(part for part in parts if part)[:MAX_DETAIL_LENGTH]
        return f" ({self._scrub(detail)})" if detail else ""

    def _scrub(self, text: str) -> str:
        token = self._token.reveal()
        return text.replace(token, "***") if token else text

    def _repository_path(self, slug: str) -> str:
        return f"/repos/{quote(self._owner, safe='')}/{quote(slug, safe='')}"

    def _full_name(self, slug: str) -> str:
        return f"{self._owner}/{slug}"


class GiteaRepositoryProvider(_HostedProvider):
    """Repositories on a Gitea (or Forgejo) instance: API v1, `Authorization: token <token>`."""

    host_name = "Gitea"
    provider_name = "gitea"

    @staticmethod
    def api_url(settings: Settings) -> str:
        return (settings.git_api_url or f"{settings.git_base_url.rstrip('/')}/api/v1").rstrip("/")

    def authorization(self, token: str) -> str:
        return f"token {token}"

    def create_body(self, slug: str, description: str) -> dict[str, Any]:
        return {
            "name": slug,
            "description": description,
            "private": self._private,
            "auto_init": False,  # empty: the first push makes the history
            "default_branch": self._default_branch,
        }

    def already_exists(self, response: httpx.Response) -> bool:
        return response.status_code == 409  # "The repository with the same name already exists."


class GitHubRepositoryProvider(_HostedProvider):
    """Repositories on GitHub or GitHub Enterprise Server: REST API 2022-11-28, `Authorization: Bearer <token>`."""

    host_name = "GitHub"
    provider_name = "github"
    NAME_TAKEN = "name already exists on this account"

    @staticmethod
    def api_url(settings: Settings) -> str:
        return (settings.git_api_url or "https://api.github.com").rstrip("/")

    def authorization(self, token: str) -> str:
        return f"Bearer {token}"

    def extra_headers(self) -> dict[str, str]:
        return {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}

    def create_body(self, slug: str, description: str) -> dict[str, Any]:
        # GitHub takes no default branch for an empty repository: the first push names it.
        return {"name": slug, "description": description, "private": self._private, "auto_init": False}

    def already_exists(self, response: httpx.Response) -> bool:
        if response.status_code != 422:
            return False
        try:
            errors = response.json().get("errors") or []
        except (ValueError, AttributeError):
            return False
        return any(isinstance(error, dict) and error.get("message") == self.NAME_TAKEN for error in errors)

    def rate_limit_delay(self, response: httpx.Response) -> timedelta | None:
        """GitHub's primary limit (`x-ratelimit-remaining: 0`, reset at `x-ratelimit-reset`) and secondary limits
        (`retry-after`), answered as 403 or 429."""
        if response.status_code not in (403, 429):
            return None
        retry_after = _retry_after(response)
        if retry_after is not None:
            return retry_after
        if response.headers.get("x-ratelimit-remaining") == "0":
            try:
                reset = float(response.headers["x-ratelimit-reset"])
            except (KeyError, ValueError):
                return DEFAULT_RATE_LIMIT_DELAY
            return timedelta(seconds=max(1.0, reset - time.time()))
        if response.status_code == 429 or "rate limit" in self._detail(response).lower():
            return DEFAULT_RATE_LIMIT_DELAY
        return None

    def _permission_hint(self, action: str) -> str:
        if action.startswith("delete"):
            return " (deleting a repository needs admin rights on it and the delete_repo scope)"
        return " (creating repositories needs the repo scope, or Administration: write for fine-grained tokens)"


def _retry_after(response: httpx.Response) -> timedelta | None:
    """The `Retry-After` header: seconds, or an HTTP date."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return timedelta(seconds=max(1, int(value)))
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return timedelta(seconds=max(1.0, (moment - datetime.now(UTC)).total_seconds()))


def _when(delay: timedelta) -> str:
    at = (datetime.now(UTC) + delay).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"retry in {round(delay.total_seconds())} s (after {at})"


def _unavailable(message: str, error_type: str, delay: timedelta | None) -> ApplicationError:
    return ApplicationError(message, type=error_type, non_retryable=False, next_retry_delay=delay)


def _rejected(message: str) -> ApplicationError:
    return ApplicationError(message, type=ErrorType.GIT_HOST_REJECTED, non_retryable=True)


def repository_conflict(message: str) -> ApplicationError:
    return ApplicationError(message, type=ErrorType.REPOSITORY_CONFLICT, non_retryable=True)


def check_repository_name(slug: str) -> None:
    if not SLUG_PATTERN.fullmatch(slug):
        raise ApplicationError(f"invalid repository name {slug!r}", type=ErrorType.INVALID_INPUT, non_retryable=True)
