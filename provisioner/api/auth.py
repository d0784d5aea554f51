"""Bearer-token authentication for the HTTP API.

Tokens come from `PROVISIONER_API_TOKENS` (comma-separated) and/or the file named by `PROVISIONER_API_TOKENS_FILE`
(one token per line; blank lines and `#` comments ignored). With no token configured the API refuses to start
unless `PROVISIONER_API_INSECURE=1` says that running without authentication is intended (local demos only).
Tokens are never logged: only how many are configured.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

TOKENS_ENV = "PROVISIONER_API_TOKENS"
TOKENS_FILE_ENV = "PROVISIONER_API_TOKENS_FILE"
INSECURE_ENV = "PROVISIONER_API_INSECURE"


class InsecureConfiguration(RuntimeError):
    """No API token is configured and running without authentication was not explicitly allowed."""


def tokens_from_env(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """The tokens of `PROVISIONER_API_TOKENS` and of the file named by `PROVISIONER_API_TOKENS_FILE`, together."""
    env = os.environ if env is None else env
    tokens = set(_clean(env.get(TOKENS_ENV, "").split(",")))
    file_name = env.get(TOKENS_FILE_ENV)
    if file_name:
        lines = Path(file_name).read_text(encoding="utf-8").splitlines()
        tokens.update(_clean(line for line in lines if not line.lstrip().startswith("#")))
    return frozenset(tokens)


def insecure_allowed(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(INSECURE_ENV, "").strip() == "1"


def _clean(candidates: Iterable[str]) -> Iterable[str]:
    return (token.strip() for token in candidates if token.strip())


class TokenSet:
    """Checks a presented token against the configured ones in constant time.

    Only SHA-256 digests are kept and compared: equal lengths make `compare_digest` independent of the tokens'
    lengths, and every configured token is compared, so the timing reveals neither which nor how long.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(_digest(token) for token in tokens)

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, presented: str) -> bool:
        candidate = _digest(presented)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


_bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="BearerToken",
    description="One of the tokens configured with PROVISIONER_API_TOKENS or PROVISIONER_API_TOKENS_FILE.",
)


def bearer_auth(tokens: TokenSet | None) -> Callable[..., Awaitable[None]]:
    """The dependency guarding the API: `tokens=None` means authentication is off (the insecure mode)."""

    async def require_token(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer_scheme),  # noqa: B008
    ) -> None:
        if tokens is None:
            return
        if credentials is None:
            raise _unauthorized("missing bearer token", 'Bearer realm="provisioner"')
        if not tokens.accepts(credentials.credentials):
            raise _unauthorized("invalid bearer token", 'Bearer realm="provisioner", error="invalid_token"')

    return require_token


def _unauthorized(detail: str, challenge: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": challenge})
