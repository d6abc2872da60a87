"""What the caller's API key may do, so a client (the web console) can offer only the
actions it would be allowed, instead of learning it from a refused one. It changes nothing:
the admin routes still check the key themselves."""

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from gateway.auth import CallerDep, require_key
from gateway.openapi import OpenAIError, errors

router = APIRouter(
    prefix="/v1/permissions",
    dependencies=[Depends(require_key)],
    responses=errors(OpenAIError, 401),
)


class Permissions(BaseModel):
    object: str = "permissions"
    keys_required: bool = Field(description="Whether this gateway has API keys configured.")
    admin: bool = Field(
        description="Whether this key may use the admin routes (every caller may, with no "
        "keys configured)."
    )
    write: bool = Field(
        description="Whether this key may upload, train and manage its project's models."
    )
    project: str | None = Field(
        description="The project this key acts in; null for an admin key over every project."
    )


@router.get("")
async def get_permissions(request: Request, caller: CallerDep) -> Permissions:
    return Permissions(
        keys_required=request.app.state.api_keys.enabled,
        admin=caller.admin,
        write=caller.may_write,
        project=caller.project,
    )


routers = [router]
