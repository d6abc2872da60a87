"""Errors every service raises from plain code; servicers and the gateway map them to
gRPC status codes and HTTP statuses in one place each."""

import re
import secrets

# An absolute path (two segments or more) that does not continue a URL or a word, and is
# not one of the API's own routes ("/v1/files").
_PATH = re.compile(r"(?<![\w:/.~-])/(?!v1/)(?:[\w.@+~-]+/)+([\w.@+~-]+)/?")


class TuneyardError(Exception):
    """Base error; `code` names the gRPC status it maps to."""

    code = "INTERNAL"
    # An HTTP status other than the code's, where the difference matters to a client.
    http_status: int | None = None

    def __init__(self, message: str, *, param: str = "", line: int = 0):
        super().__init__(message)
        self.message = message
        self.param = param
        self.line = line


class InvalidArgument(TuneyardError):
    code = "INVALID_ARGUMENT"


class NotFound(TuneyardError):
    code = "NOT_FOUND"


class FailedPrecondition(TuneyardError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(TuneyardError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(TuneyardError):
    code = "UNAVAILABLE"


class Unauthenticated(TuneyardError):
    code = "UNAUTHENTICATED"


_CLASS_OF_CODE = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        Unauthenticated,
    )
}


def error_with_code(code: str, message: str, *, param: str = "", line: int = 0) -> TuneyardError:
    """A TuneyardError with a status code's name (another service's answer): of the
    code's own class where there is one, so that `except Unavailable` still catches it."""
    err = _CLASS_OF_CODE.get(code, TuneyardError)(message, param=param, line=line)
    err.code = code
    return err


def redact_paths(text: str) -> str:
    """`text` with each absolute server path cut to its last part ("adapters", "x.jsonl"):
    a client learns which file, not where the server keeps it. Logs keep the full text."""
    return _PATH.sub(r"\1", text)


INTERNAL_ERROR = "internal error; request id "


def internal_error_message() -> tuple[str, str]:
    """(request id, what a client is told) for an error it could not cause: the id alone,
    the log keeps the rest under it."""
    request_id = "req-" + secrets.token_hex(8)
    return request_id, INTERNAL_ERROR + request_id
