"""API keys as bearer tokens. With no key configured every route is open; otherwise every
route but /health and /metrics needs a key, and mutating routes need an admin key."""

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.errors import PermissionDenied, Unauthenticated


class ApiKeys:
    def __init__(self, api_keys: list[str], admin_keys: list[str]):
        self.admin_keys = list(admin_keys)
        self.keys = [*api_keys, *admin_keys]

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, authorization: str | None, admin: bool) -> None:
        if not self.enabled:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        token = token.strip()
        if not _matches(token, self.keys):
            raise Unauthenticated("invalid API key")
        if admin and not _matches(token, self.admin_keys):
            raise PermissionDenied("this operation needs an admin API key")

    def is_admin(self, authorization: str | None) -> bool:
        """Whether a caller that passed `check` may also use the admin routes."""
        try:
            self.check(authorization, admin=True)
        except PermissionDenied:
            return False
        return True


def _matches(token: str, keys: list[str]) -> bool:
    # Compare against every key in constant time, so timing tells nothing about the keys.
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


# Only names the scheme in the OpenAPI description; `ApiKeys.check` reads the header.
_BEARER = HTTPBearer(
    scheme_name="apiKey",
    description="An API key as a bearer token, when the gateway has keys configured.",
    auto_error=False,
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


async def require_key(request: Request, _: Bearer) -> None:
    """FastAPI dependency: any configured key."""
    request.app.state.api_keys.check(request.headers.get("authorization"), admin=False)


async def require_admin(request: Request, _: Bearer) -> None:
    """FastAPI dependency: an admin key."""
    request.app.state.api_keys.check(request.headers.get("authorization"), admin=True)
