"""Server-sent events: one `data:` line of JSON per event, as TGI and OpenAI send them."""

import json
import logging
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from gateway.errors import error_event
from tuneyard.errors import TuneyardError, internal_error_message

log = logging.getLogger(__name__)


def encode(data: dict | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data:{text}\n\n"


def event_response(path: str, events: AsyncIterator[dict | list[dict]], done_marker: bool = False):
    """Stream `events`; a list is a group of events that came together (the tokens of one
    backend message), written in one piece: the client reads the same events, the server
    and the network carry one write instead of one per token. An error after the first
    event becomes a last error event in the called API's error shape. `done_marker` ends
    the stream with OpenAI's `data: [DONE]`."""

    async def body():
        try:
            async for event in events:
                if isinstance(event, list):
                    if event:
                        yield "".join(map(encode, event))
                else:
                    yield encode(event)
        except TuneyardError as err:
            yield encode(error_event(path, err))
            return
        except Exception:
            request_id, message = internal_error_message()
            log.exception("stream of %s failed; request id %s", path, request_id)
            yield encode(error_event(path, TuneyardError(message)))
            return
        if done_marker:
            yield encode("[DONE]")

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
