"""The gateway's last line of defence, as ASGI middleware around every route:

- a JSON body carrying text that is not valid Unicode (a lone surrogate such as `\\ud800`,
  which JSON can spell but UTF-8, protobuf and the tokenizer cannot) is refused with the
  field named, before any handler runs;
- an exception no handler took becomes a 500 that says only a request id; the log keeps
  the traceback under the same id. The connection stays usable: nothing is re-raised to
  the server.
"""

import json
import logging

from gateway.errors import error_response
from tuneyard.errors import internal_error_message

log = logging.getLogger(__name__)

_JSON_METHODS = frozenset({"POST", "PUT", "PATCH"})


def lone_surrogate_at(value, path: tuple = ()) -> tuple | None:
    """The path of the first string in `value` that UTF-8 cannot encode, if any."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if lone_surrogate_at(key) is not None:
                return (*path, key)
            found = lone_surrogate_at(item, (*path, key))
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = lone_surrogate_at(item, (*path, i))
            if found is not None:
                return found
    return None


class RequestGuard:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if scope["method"] in _JSON_METHODS and _is_json(scope):
            body = await _read_body(receive)
            refusal = _unicode_refusal(path, body)
            if refusal is not None:
                return await refusal(scope, receive, send)
            receive = _replay(body, receive)

        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except UnicodeError:
            # Text from a path or query that cannot be encoded on its way to a backend.
            if not started:
                response = error_response(
                    path, "INVALID_ARGUMENT", "the request holds text that is not valid Unicode"
                )
                await response(scope, receive, send)
        except Exception:
            request_id, message = internal_error_message()
            log.exception("%s %s failed; request id %s", scope["method"], path, request_id)
            if not started:
                response = error_response(path, "INTERNAL", message)
                response.headers["X-Request-Id"] = request_id
                await response(scope, receive, send)


def _is_json(scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return b"json" in value.lower()
    return False


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(chunks)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _unicode_refusal(path: str, body: bytes):
    # A lone surrogate can only arrive as a \u escape: skip the parse when there is none.
    if b"\\ud" not in body and b"\\uD" not in body:
        return None
    try:
        found = lone_surrogate_at(json.loads(body))
    except ValueError:
        return None  # not JSON: the route's own parser answers that
    if found is None:
        return None
    field = ".".join(str(p) for p in found) or "body"
    return error_response(
        path,
        "INVALID_ARGUMENT",
        f"{field}: text is not valid Unicode (a lone UTF-16 surrogate such as \\ud800)",
        field,
    )
