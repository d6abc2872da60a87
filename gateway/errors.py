"""Errors as HTTP answers: the one place that maps a status code (gRPC's names, also used by
`TuneyardError.code`) to an HTTP status and to the error body of the API that was called.

TGI routes answer `{"error", "error_type"}` (validation errors are 422 there); every other
route answers OpenAI's `{"error": {"message", "type", "param", "code"}}` (validation 400).
"""

import contextlib

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tuneyard.errors import TuneyardError, Unauthenticated  # noqa: F401 (gateway.errors' own)
from tuneyard.grpc_server import call_error

TGI_PATHS = frozenset({"/", "/generate", "/generate_stream", "/tokenize", "/info", "/health"})

_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 503,
}
_TGI_VALIDATION = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE"})
_TGI_ERROR_TYPE = {
    401: "authentication",
    403: "permission",
    404: "not_found",
    405: "validation",
    409: "validation",
    422: "validation",
    429: "overloaded",
    503: "unavailable",
}
_OPENAI_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}
# HTTP statuses that Starlette and FastAPI raise themselves (a body that does not parse,
# unknown route, wrong method), as codes; any other 4xx keeps its status.
_CODE_OF_HTTP = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    422: "INVALID_ARGUMENT",
}


class PermissionDenied(TuneyardError):
    code = "PERMISSION_DENIED"


class RateLimited(TuneyardError):
    """Over a project's limit: 429 with OpenAI's x-ratelimit-* headers and Retry-After."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, headers: dict[str, str]):
        super().__init__(message)
        self.headers = headers


class BackendError(TuneyardError):
    """A failed gRPC call, keeping the backend's status code."""

    def __init__(self, code: str, message: str, *, param: str = "", line: int = 0):
        super().__init__(message, param=param, line=line)
        self.code = code


def from_rpc_error(backend: str, err: grpc.aio.AioRpcError) -> BackendError:
    """What the backend said (see call_error), marked as a backend's: a replica that is
    down is told apart from the gateway's own errors."""
    said = call_error(backend, err)
    return BackendError(said.code, said.message, param=said.param, line=said.line)


@contextlib.contextmanager
def params_named(names: dict[str, str]):
    """Inside, an error that names a field of the inference service's request ("inputs",
    "top_n_tokens") names the client's field instead, by `names` ("messages",
    "top_logprobs"); a field named alike in both stays as it is."""
    try:
        yield
    except TuneyardError as err:
        err.param = names.get(err.param, err.param)
        raise


def is_tgi_path(path: str) -> bool:
    return path in TGI_PATHS


def http_status(code: str, tgi: bool, override: int | None = None) -> int:
    if override:
        return override
    if tgi and code in _TGI_VALIDATION:
        return 422
    if code == "UNIMPLEMENTED":
        return 405
    return _HTTP_STATUS.get(code, 500)


def tgi_body(status: int, message: str) -> dict:
    return {"error": message, "error_type": _TGI_ERROR_TYPE.get(status, "generation")}


def openai_body(status: int, code: str, message: str, param: str = "") -> dict:
    return {
        "error": {
            "message": message,
            "type": _OPENAI_ERROR_TYPE.get(status, "server_error"),
            "param": param or None,
            "code": code.lower(),
        }
    }


def error_response(
    path: str,
    code: str,
    message: str,
    param: str = "",
    status: int | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    tgi = is_tgi_path(path)
    status = http_status(code, tgi, status)
    body = tgi_body(status, message) if tgi else openai_body(status, code, message, param)
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, headers=headers or None)


def error_event(path: str, err: TuneyardError) -> dict:
    """The body of an error that happens after a stream has started (sent as an event)."""
    tgi = is_tgi_path(path)
    status = http_status(err.code, tgi, err.http_status)
    return (
        tgi_body(status, err.message)
        if tgi
        else openai_body(status, err.code, err.message, err.param)
    )


def field_name(loc: tuple) -> str:
    """A validation error's location as the client wrote it: "parameters.stop.1", "limit"
    (without FastAPI's leading "body", "query" or "path")."""
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    return ".".join(str(p) for p in loc)


def validation_message(err: RequestValidationError) -> str:
    """FastAPI's validation errors as one line naming each field, e.g.
    "parameters.max_new_tokens: Input should be greater than 0"."""
    problems = []
    for e in err.errors():
        loc = field_name(e["loc"]) or "body"
        problems.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TuneyardError)
    async def _tuneyard_error(request: Request, err: TuneyardError):
        return error_response(
            request.url.path,
            err.code,
            err.message,
            err.param,
            err.http_status,
            headers=getattr(err, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        first = err.errors()[0]["loc"] if err.errors() else ()
        param = field_name(first)
        return error_response(request.url.path, "INVALID_ARGUMENT", validation_message(err), param)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException):
        status = err.status_code
        code = _CODE_OF_HTTP.get(status, "INVALID_ARGUMENT" if status < 500 else "INTERNAL")
        message = f"{err.detail}: {request.method} {request.url.path}"
        # A 405 keeps Starlette's Allow header: the methods the path does take.
        return error_response(
            request.url.path,
            code,
            message,
            status=None if status in _CODE_OF_HTTP else status,
            headers=err.headers,
        )
