"""What the gateway's OpenAPI description (`/openapi.json`) says beyond what FastAPI infers
from the routes: the two error bodies as models, the error statuses of each API family (one
`responses=` dict per family, given to its routers), the content of answers that are not
JSON (event streams, reports, /health's empty 200), and no FastAPI default 422: no route
sends its `HTTPValidationError` body (validation errors are 400 with OpenAI's body, or 422
with TGI's on the TGI routes; see gateway/errors.py)."""

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field


class Body(BaseModel):
    """Base of the request bodies: each field takes the JSON type its schema names (strict:
    no "1" or true where a number is due, no 1 where a boolean is; an integer is a number).
    Pydantic's lax coercions would accept what the published schema refuses."""

    model_config = ConfigDict(strict=True)


class TgiError(BaseModel):
    """The error body of the TGI routes."""

    error: str
    error_type: str = Field(
        description="validation, authentication, permission, not_found, overloaded, "
        "unavailable or generation"
    )


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="e.g. invalid_request_error, not_found_error")
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str = Field(description="The gRPC status name in lower case, e.g. invalid_argument.")


class OpenAIError(BaseModel):
    """The error body of every route but the TGI ones."""

    error: OpenAIErrorDetail


_WHEN = {
    400: "The request is invalid (a field is named in `param`).",
    401: "No API key, or an unknown one (API keys are configured).",
    403: "The operation needs an admin API key.",
    404: "What the request names does not exist.",
    422: "The request is invalid.",
    429: "The server is at capacity (queue full, adapter slots taken); retry later.",
    503: "A backend service is unavailable.",
}


def errors(model: type[BaseModel], *statuses: int, **when: str) -> dict[int | str, dict]:
    """`responses=` entries: each status answered with `model`; `when` overrides the
    description of a status given as `s422="..."`."""
    return {
        status: {"model": model, "description": when.get(f"s{status}", _WHEN[status])}
        for status in statuses
    }


# One dict per API family; routes that need an admin key add ADMIN.
TGI_ERRORS = errors(TgiError, 401, 404, 422, 429, 503)
OPENAI_ERRORS = errors(OpenAIError, 400, 401, 404, 429, 503)
TRAINER_ERRORS = errors(OpenAIError, 400, 401, 404, 503)
ADAPTER_ERRORS = errors(OpenAIError, 400, 401, 404, 429, 503)
ADMIN = errors(OpenAIError, 403)
TEMPLATE_REFUSED = errors(
    OpenAIError,
    422,
    s422="The prompt template asks for more than a template may do (refused, never run).",
)


def event_stream(description: str) -> dict:
    """The content of an answer sent as server-sent events: each a `data:` line (JSON, or
    OpenAI's closing `[DONE]`), described per event as FastAPI describes its own streams."""
    event = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
    return {"description": description, "content": {"text/event-stream": {"itemSchema": event}}}


def install(app: FastAPI) -> None:
    """Generate the schema as FastAPI does, less the 422 with FastAPI's validation body it
    adds to every route with parameters that does not document a 422 of its own."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if "HTTPValidationError" in str(responses.get("422", "")):
                        del responses["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
