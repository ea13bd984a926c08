"""Bearer tokens and per-token session namespaces.

A token named ``alice`` owns the sessions stored as ``alice/<session>``: the
same session name under two tokens is two sessions, and a token can neither
read nor control another's. Clients never see the prefix.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ._errors import ApiError

__all__ = ["SESSION_PATTERN", "Principal", "authenticate", "check_session"]

SESSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@=+-]{0,127}$"
_SESSION = re.compile(SESSION_PATTERN)

bearer = HTTPBearer(auto_error=False, description="a secret from LANEWAY_TOKENS")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token name, or ``None`` when the server has no tokens."""

    name: str | None

    @property
    def prefix(self) -> str:
        return f"{self.name}/" if self.name is not None else ""

    def internal(self, session: str) -> str:
        return self.prefix + check_session(session)

    def owns(self, internal: str) -> bool:
        return internal.startswith(self.prefix)

    def external(self, internal: str) -> str:
        return internal[len(self.prefix) :]


def check_session(session: str) -> str:
    if not _SESSION.match(session):
        raise ApiError(
            422,
            "invalid_session",
            "session keys are 1-128 characters of [A-Za-z0-9._:@=+-], starting alphanumeric",
        )
    return session


def principal_for(secrets: dict[str, str], presented: str | None) -> Principal:
    """The principal for a presented secret; raises 401 if tokens are set and it is wrong."""
    if not secrets:
        return Principal(None)
    if presented:
        for secret, name in secrets.items():
            if hmac.compare_digest(secret.encode(), presented.encode()):
                return Principal(name)
    raise ApiError(
        401,
        "unauthorized",
        "missing or unknown bearer token",
        {"WWW-Authenticate": "Bearer"},
    )


def bearer_secret(authorization: str | None) -> str | None:
    """The secret of an ``Authorization: Bearer <secret>`` header, if that is what it is."""
    scheme, _, secret = (authorization or "").partition(" ")
    return secret.strip() or None if scheme.lower() == "bearer" else None


async def authenticate(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    secrets: dict[str, str] = request.app.state.gateway.secrets
    return principal_for(secrets, creds.credentials if creds is not None else None)


Caller = Annotated[Principal, Depends(authenticate)]
