"""What the caller's API key may do, so a client (the web console) can offer only the
actions it would be allowed, instead of learning it from a refused one. It changes nothing:
the admin routes still check the key themselves."""

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from gateway.auth import require_key
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


@router.get("")
async def get_permissions(request: Request) -> Permissions:
    keys = request.app.state.api_keys
    return Permissions(
        keys_required=keys.enabled, admin=keys.is_admin(request.headers.get("authorization"))
    )


routers = [router]
