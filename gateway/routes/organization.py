"""Projects, their service accounts, API keys and rate limits, and the audit log, in the
shapes of OpenAI's administration API (/v1/organization/...): admin keys only. The trainer
keeps them (ProjectService); a key's value is in the answer that creates it, and nowhere
else, ever."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ConfigDict, Field, StringConstraints

from gateway.auth import require_admin
from gateway.openapi import ADMIN, TRAINER_ERRORS, Body
from tuneyard.projects import PROJECT_ID, owner_of
from tuneyard.v1 import projects_pb2 as pb

router = APIRouter(
    prefix="/v1/organization",
    dependencies=[Depends(require_admin)],
    responses=TRAINER_ERRORS | ADMIN,
)
routers = [router]

Limit = Annotated[int, Query(ge=1, le=100)]
ProjectId = Annotated[str, StringConstraints(pattern=PROJECT_ID.pattern)]
# "<object>.<what happened>", as gateway/audit.py names them.
EventType = Annotated[str, StringConstraints(pattern=r"^[a-z_]+(\.[a-z_]+)+$")]


class ProjectBody(Body):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)


class RateLimitBody(Body):
    """The limits to change; 0 removes a limit. A model's limit takes the first two, the
    `rl-fine-tuning` limit the last two (tuneyard's, for what a GPU owner rations)."""

    model_config = ConfigDict(extra="forbid")

    max_requests_per_1_minute: int | None = Field(None, ge=0)
    max_tokens_per_1_minute: int | None = Field(None, ge=0)
    max_concurrent_jobs: int | None = Field(None, ge=0)
    max_trained_tokens_per_1_day: int | None = Field(None, ge=0)


def project_json(project: pb.Project) -> dict:
    return {
        "object": "organization.project",
        "id": project.id,
        "name": project.name,
        "created_at": project.created_at,
        "archived_at": project.archived_at or None,
        "status": project.status,
    }


def account_json(account: pb.ServiceAccount) -> dict:
    return {
        "object": "organization.project.service_account",
        "id": account.id,
        "name": account.name,
        "role": account.role,
        "created_at": account.created_at,
    }


def api_key_json(key: pb.ApiKey) -> dict:
    return {
        "object": "organization.project.api_key",
        "id": key.id,
        "name": key.name,
        "redacted_value": key.redacted_value,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at or None,
        "owner": {
            "type": "service_account",
            "service_account": {
                "object": "organization.project.service_account",
                "id": key.service_account_id,
                "name": key.service_account_name,
                "role": "member",
            },
        },
    }


def rate_limit_json(limit: pb.RateLimit) -> dict:
    fields = (
        ("max_requests_per_1_minute", "max_tokens_per_1_minute")
        if limit.model
        else ("max_concurrent_jobs", "max_trained_tokens_per_1_day")
    )
    return {
        "object": "project.rate_limit",
        "id": limit.id,
        "model": limit.model or None,
        **{f: getattr(limit, f) if limit.HasField(f) else None for f in fields},
    }


def audit_json(event: pb.AuditEvent) -> dict:
    return {
        "object": "organization.audit_log",
        "id": event.id,
        "type": event.type,
        "effective_at": event.effective_at,
        "project": {"id": event.project_id} if event.project_id else None,
        "actor": {"type": "api", "api_key": {"id": event.key_id}},
        "request": {"method": event.method, "path": event.path},
        "result": {"status_code": event.status_code, "outcome": event.result},
    }


def page(data: list[dict], has_more: bool) -> dict:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _projects(request: Request):
    return request.app.state.backends.projects


# --- projects ----------------------------------------------------------------------------
@router.post("/projects")
async def create_project(request: Request, body: ProjectBody) -> dict:
    project = await _projects(request).call(
        "CreateProject", pb.CreateProjectRequest(name=body.name)
    )
    return project_json(project)


@router.get("/projects")
async def list_projects(
    request: Request, after: str = "", limit: Limit = 20, include_archived: bool = False
) -> dict:
    reply = await _projects(request).call(
        "ListProjects",
        pb.ListProjectsRequest(after=after, limit=limit, include_archived=include_archived),
    )
    return page([project_json(p) for p in reply.projects], reply.has_more)


@router.get("/projects/{project_id}")
async def get_project(request: Request, project_id: str) -> dict:
    project = await _projects(request).call(
        "GetProject", pb.GetProjectRequest(project_id=project_id)
    )
    return project_json(project)


@router.post("/projects/{project_id}")
async def rename_project(request: Request, project_id: str, body: ProjectBody) -> dict:
    project = await _projects(request).call(
        "RenameProject", pb.RenameProjectRequest(project_id=project_id, name=body.name)
    )
    return project_json(project)


@router.post("/projects/{project_id}/archive")
async def archive_project(request: Request, project_id: str) -> dict:
    """Its keys stop working and its adapters are no longer served, on every replica
    within about a second; its files, jobs and adapters stay."""
    project = await _projects(request).call(
        "ArchiveProject", pb.ArchiveProjectRequest(project_id=project_id)
    )
    request.app.state.api_keys.forget()
    request.app.state.project_states.forget(project_id)
    inference = request.app.state.backends.inference
    loaded = [a.id for a, where in await inference.list_adapters() if where]
    await inference.forget_adapters([a for a in loaded if owner_of(a) == project_id])
    return project_json(project)


# --- service accounts and API keys -------------------------------------------------------
@router.post("/projects/{project_id}/service_accounts")
async def create_service_account(request: Request, project_id: str, body: ProjectBody) -> dict:
    """The answer holds the key's value: the only time it is shown."""
    account = await _projects(request).call(
        "CreateServiceAccount",
        pb.CreateServiceAccountRequest(project_id=project_id, name=body.name),
    )
    key = account.api_key
    return {
        **account_json(account),
        "api_key": {
            "object": "organization.project.service_account.api_key",
            "id": key.id,
            "name": key.name,
            "value": key.value,
            "created_at": key.created_at,
        },
    }


@router.get("/projects/{project_id}/service_accounts")
async def list_service_accounts(
    request: Request, project_id: str, after: str = "", limit: Limit = 20
) -> dict:
    reply = await _projects(request).call(
        "ListServiceAccounts",
        pb.ListServiceAccountsRequest(project_id=project_id, after=after, limit=limit),
    )
    return page([account_json(a) for a in reply.service_accounts], reply.has_more)


@router.get("/projects/{project_id}/service_accounts/{service_account_id}")
async def get_service_account(request: Request, project_id: str, service_account_id: str) -> dict:
    account = await _projects(request).call(
        "GetServiceAccount",
        pb.GetServiceAccountRequest(project_id=project_id, service_account_id=service_account_id),
    )
    return account_json(account)


@router.delete("/projects/{project_id}/service_accounts/{service_account_id}")
async def delete_service_account(
    request: Request, project_id: str, service_account_id: str
) -> dict:
    """Its key with it: the key's next request is 401."""
    account = await _projects(request).call(
        "DeleteServiceAccount",
        pb.DeleteServiceAccountRequest(
            project_id=project_id, service_account_id=service_account_id
        ),
    )
    request.app.state.api_keys.forget()
    return {
        "object": "organization.project.service_account.deleted",
        "id": account.id,
        "deleted": True,
    }


@router.get("/projects/{project_id}/api_keys")
async def list_api_keys(
    request: Request, project_id: str, after: str = "", limit: Limit = 20
) -> dict:
    reply = await _projects(request).call(
        "ListApiKeys", pb.ListApiKeysRequest(project_id=project_id, after=after, limit=limit)
    )
    return page([api_key_json(k) for k in reply.api_keys], reply.has_more)


@router.delete("/projects/{project_id}/api_keys/{key_id}")
async def delete_api_key(request: Request, project_id: str, key_id: str) -> dict:
    """The key's next request is 401 (on every gateway replica within a second)."""
    key = await _projects(request).call(
        "DeleteApiKey", pb.DeleteApiKeyRequest(project_id=project_id, key_id=key_id)
    )
    request.app.state.api_keys.forget()
    return {"object": "organization.project.api_key.deleted", "id": key.id, "deleted": True}


# --- rate limits -------------------------------------------------------------------------
@router.get("/projects/{project_id}/rate_limits")
async def list_rate_limits(request: Request, project_id: str) -> dict:
    """One per served model (adapters count against their base), then `rl-fine-tuning`."""
    model = (await request.app.state.backends.info()).model_id
    reply = await _projects(request).call(
        "ListRateLimits", pb.ListRateLimitsRequest(project_id=project_id, models=[model])
    )
    return page([rate_limit_json(x) for x in reply.rate_limits], False)


@router.post("/projects/{project_id}/rate_limits/{rate_limit_id}")
async def update_rate_limit(
    request: Request, project_id: str, rate_limit_id: str, body: RateLimitBody
) -> dict:
    model = (await request.app.state.backends.info()).model_id
    limit = pb.RateLimit(id=rate_limit_id, model=model)
    for field, value in body.model_dump(exclude_none=True).items():
        setattr(limit, field, value)
    updated = await _projects(request).call(
        "UpdateRateLimit", pb.UpdateRateLimitRequest(project_id=project_id, rate_limit=limit)
    )
    request.app.state.rate_limits.forget(project_id)
    return rate_limit_json(updated)


# --- the audit log -----------------------------------------------------------------------
@router.get("/audit_logs")
async def list_audit_logs(
    request: Request,
    project_ids: Annotated[list[ProjectId] | None, Query(alias="project_ids[]")] = None,
    event_types: Annotated[list[EventType] | None, Query(alias="event_types[]")] = None,
    after: str = "",
    limit: Limit = 20,
) -> dict:
    """Newest first; each mutating call through the gateway, with the caller's project and
    key id (never the key), what it asked and how it ended."""
    reply = await _projects(request).call(
        "ListAuditEvents",
        pb.ListAuditEventsRequest(
            project_ids=project_ids or [], types=event_types or [], after=after, limit=limit
        ),
    )
    return page([audit_json(e) for e in reply.events], reply.has_more)
