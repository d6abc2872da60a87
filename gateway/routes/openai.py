"""The OpenAI API: /v1/completions, /v1/chat/completions (streaming and not) and /v1/models.
`model` is an adapter ("name" or "name@version") or the base model's id (or its last path
component); the answer carries usage counts. The routes only: the request bodies are in
openai_requests.py, the answers' fields in openai_responses.py, the serving in
openai_serving.py."""

from fastapi import APIRouter, Depends, Request

from gateway.auth import require_key
from gateway.backends import Backends
from gateway.errors import params_named
from gateway.openapi import OPENAI_ERRORS, event_stream
from gateway.routes.openai_requests import ChatRequest, CompletionRequest
from gateway.routes.openai_serving import ChatServing, CompletionServing
from tuneyard.v1 import inference_pb2

router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=OPENAI_ERRORS)
STREAMED = {200: event_stream("With `stream: true`: chunks as events, then `data: [DONE]`.")}


@router.post("/completions", responses=STREAMED)
async def completions(request: Request, body: CompletionRequest):
    with params_named(body.engine_params()):
        return await CompletionServing(request, body).answer()


@router.post("/chat/completions", responses=STREAMED)
async def chat_completions(request: Request, body: ChatRequest):
    with params_named(body.engine_params()):
        return await ChatServing(request, body).answer()


@router.get("/models")
async def list_models(request: Request) -> dict:
    """The base model, then each adapter by name (its newest version), `parent` the base."""
    backends: Backends = request.app.state.backends
    base = (await backends.info()).model_id
    newest: dict[str, inference_pb2.Adapter] = {}
    for adapter, _ in await backends.inference.list_adapters():
        current = newest.get(adapter.name)
        if current is None or int(adapter.version or 0) > int(current.version or 0):
            newest[adapter.name] = adapter
    data = [
        {
            "id": base,
            "object": "model",
            "created": 0,
            "owned_by": "tuneyard",
            "root": base,
            "parent": None,
        }
    ]
    data += [
        {
            "id": name,
            "object": "model",
            "created": a.created_at,
            "owned_by": "tuneyard",
            "root": a.id,
            "parent": base,
        }
        for name, a in sorted(newest.items())
    ]
    return {"object": "list", "data": data}


routers = [router]
