"""Bearer-token authentication: tokens come from ``api.tokens``; roles ``read`` < ``review`` < ``admin``.

``ingest`` stands outside that ladder: it may only write to the receiver's endpoints (``/v1/traces``,
``/v1/logs``, ``/v1/ingest/*``), which admin may call too. A leaked ingest token (it sits in every
instrumented service's environment) thus reads nothing and changes nothing else.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from driftloop.settings import ApiSettings

# review: may also take and label items of the human review queue (driftloop.monitor.review)
ROLES = {"read": 1, "review": 2, "admin": 3}
#: the receiver's role, not a rung of ROLES: it grants nothing else
INGEST = "ingest"

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`; tokens are set in api.tokens")


@dataclass(frozen=True)
class Principal:
    """Who called: the token's name (``anonymous`` for open reads) and its role."""

    name: str
    role: str

    @property
    def actor(self) -> str:
        """The name written to audit logs (``api:<token name>``)."""
        return f"api:{self.name}"


ANONYMOUS = Principal("anonymous", "read")


def lookup(api: ApiSettings, presented: str) -> Principal | None:
    """The configured token matching ``presented`` (constant-time compare against every one), else None."""
    found: Principal | None = None
    given = presented.encode()
    for t in api.tokens:
        secret = t.secret()
        # compare with every token, not stopping at a match, so timing says nothing about which one
        if secret and hmac.compare_digest(secret.encode(), given) and found is None:
            found = Principal(t.name, t.role)
    return found


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def _allowed(role: str, need: str) -> bool:
    """Whether ``role`` may call an endpoint that needs ``need``: up the ladder, or ingest for ingest (and admin)."""
    if need == INGEST:
        return role in (INGEST, "admin")
    return role in ROLES and ROLES[role] >= ROLES[need]


def authenticate(api: ApiSettings, creds: HTTPAuthorizationCredentials | None, need: str) -> Principal:
    """Check a request's bearer token for role ``need``; raise 401/403 with what to do."""
    if not any(t.secret() for t in api.tokens):
        raise _unauthorized("no API tokens are configured (or their token_env variables are unset); add api.tokens "
                            f"with role {need} to the settings to use this endpoint")  # fmt: skip
    if creds is None or not creds.credentials:
        raise _unauthorized(f"this endpoint needs a {need} token: send `Authorization: Bearer <token>`")
    who = lookup(api, creds.credentials)
    if who is None:
        raise _unauthorized("invalid token; use one configured in api.tokens")
    if not _allowed(who.role, need):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"token {who.name!r} has role {who.role}; this endpoint needs role {need}")  # fmt: skip
    return who


def require_admin(api: ApiSettings) -> Callable[..., Principal]:
    """Dependency for mutating endpoints: an admin token."""

    def dep(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        return authenticate(api, creds, "admin")

    return dep


def require_review(api: ApiSettings) -> Callable[..., Principal]:
    """Dependency for the review queue's writes: a review (or admin) token."""

    def dep(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        return authenticate(api, creds, "review")

    return dep


def require_ingest(api: ApiSettings) -> Callable[..., Principal]:
    """Dependency for the receiver's writes: an ingest (or admin) token; read and review tokens get 403."""

    def dep(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        return authenticate(api, creds, INGEST)

    return dep


def require_read(api: ApiSettings) -> Callable[..., Principal]:
    """Dependency for read endpoints: open unless ``api.read_requires_token``.

    Open reads do not declare the bearer scheme, so the published spec says what the server does.
    """
    if api.read_requires_token:

        def dep(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
            return authenticate(api, creds, "read")

        return dep

    def open_dep(request: Request) -> Principal:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        who = lookup(api, token) if scheme.lower() == "bearer" and token else None
        # an ingest token reads as anyone would, never as itself (it holds no read role)
        return who if who is not None and who.role in ROLES else ANONYMOUS

    return open_dep
