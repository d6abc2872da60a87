"""Who is calling, from the bearer key, as a Caller every route can act on.

Three kinds of key:
- admin keys (TUNEYARD_ADMIN_KEYS): every project and every route;
- plain keys (TUNEYARD_API_KEYS): the default project, to read and generate only, as
  before projects existed;
- project keys (a service account's, made through /v1/organization/projects): their own
  project, where they may do what an OpenAI project key may: upload, train, publish,
  promote and delete their own models.

An admin key may narrow itself to one project with OpenAI's `OpenAI-Project` header (the
`openai` client's `project=`). With no key configured every route is open and a caller
acts as an admin, unless it presents a project key, which scopes it to its project.

A project key is checked by the trainer (it owns the keys, hashed) and the answer kept for
KEY_TTL_S, so a deleted key stops working on every gateway replica within that time."""

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.errors import BackendError, PermissionDenied, Unauthenticated
from tuneyard.errors import InvalidArgument
from tuneyard.projects import DEFAULT_PROJECT, PROJECT_ID
from tuneyard.v1 import projects_pb2

KEY_TTL_S = 0.5
PROJECT_KEY_PREFIX = "sk-proj-"
PROJECT_HEADER = "openai-project"
ADMIN, MEMBER, READER = "admin", "member", "reader"


@dataclass(frozen=True)
class Caller:
    """`project` None: every project (an admin key that did not narrow itself)."""

    key_id: str
    project: str | None
    role: str

    @property
    def admin(self) -> bool:
        return self.role == ADMIN

    @property
    def may_write(self) -> bool:
        return self.role in (ADMIN, MEMBER)

    @property
    def audit_project(self) -> str:
        return self.project or ""


@dataclass(frozen=True)
class _Checked:
    identity: projects_pb2.Identity | None  # None: the trainer refused the key
    until: float


class ApiKeys:
    def __init__(self, api_keys: list[str], admin_keys: list[str]):
        # Ids for the audit log, never the keys: their place in the setting.
        self._admin = {key: f"key_env_admin_{i}" for i, key in enumerate(admin_keys)}
        self._plain = {key: f"key_env_{i}" for i, key in enumerate(api_keys)}
        self._checked: dict[bytes, _Checked] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._admin or self._plain)

    async def caller(self, request: Request) -> Caller:
        token = _bearer(request.headers.get("authorization"))
        if token.startswith(PROJECT_KEY_PREFIX):
            caller = await self._project_key(request, token)
        elif (key_id := _matching(token, self._admin)) is not None:
            caller = Caller(key_id, None, ADMIN)
        elif (key_id := _matching(token, self._plain)) is not None:
            caller = Caller(key_id, DEFAULT_PROJECT, READER)
        elif not self.enabled:
            caller = Caller("anonymous", None, ADMIN)
        elif not token:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        else:
            raise Unauthenticated("invalid API key")
        return _narrowed(caller, request.headers.get(PROJECT_HEADER, "").strip())

    async def _project_key(self, request: Request, token: str) -> Caller:
        digest = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        checked = self._checked.get(digest)
        if checked is None or checked.until < now:
            try:
                identity = await request.app.state.backends.projects.call(
                    "Authenticate", projects_pb2.AuthenticateRequest(key=token)
                )
            except BackendError as err:
                if err.code != "UNAUTHENTICATED":
                    raise
                identity = None
            if len(self._checked) > 10_000:  # keys that come and go: keep the map bounded
                self._checked.clear()
            checked = self._checked[digest] = _Checked(identity, now + KEY_TTL_S)
        if checked.identity is None:
            raise Unauthenticated("invalid API key")
        return Caller(checked.identity.key_id, checked.identity.project_id, MEMBER)

    def forget(self) -> None:
        """A key or project changed through this replica: check every key afresh."""
        self._checked.clear()


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _matching(token: str, keys: dict[str, str]) -> str | None:
    # Compare against every key in constant time, so timing tells nothing about the keys.
    found = None
    for key, key_id in keys.items():
        if hmac.compare_digest(token.encode(), key.encode()):
            found = key_id
    return found if token else None


def _narrowed(caller: Caller, project: str) -> Caller:
    """The caller, within the project its OpenAI-Project header names."""
    if not project or project == caller.project:
        return caller
    if not PROJECT_ID.match(project):
        raise InvalidArgument(
            f"OpenAI-Project {project!r} is not a project id (proj_...)", param="OpenAI-Project"
        )
    if not caller.admin:
        raise PermissionDenied(
            "this key belongs to another project than the OpenAI-Project header names"
        )
    return Caller(caller.key_id, project, ADMIN)


# Only names the scheme in the OpenAPI description; `ApiKeys.caller` reads the header.
_BEARER = HTTPBearer(
    scheme_name="apiKey",
    description="An API key as a bearer token, when the gateway has keys configured.",
    auto_error=False,
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


async def require_key(request: Request, _: Bearer) -> Caller:
    """FastAPI dependency: any valid key; the caller is also kept on `request.state`."""
    caller = getattr(request.state, "caller", None)
    if caller is None:
        caller = request.state.caller = await request.app.state.api_keys.caller(request)
    return caller


CallerDep = Annotated[Caller, Depends(require_key)]


async def require_writer(caller: CallerDep) -> Caller:
    """FastAPI dependency: a key that may change what its project has."""
    if not caller.may_write:
        raise PermissionDenied(
            "this operation needs a project key or an admin key; the keys in "
            "TUNEYARD_API_KEYS may read and generate only"
        )
    return caller


async def require_admin(caller: CallerDep) -> Caller:
    """FastAPI dependency: an admin key."""
    if not caller.admin:
        raise PermissionDenied("this operation needs an admin API key")
    return caller


def caller_of(request: Request) -> Caller:
    """The caller `require_key` found; a route reached without it is a bug, not a guest."""
    return request.state.caller
