"""The OpenAI API: /v1/completions, /v1/chat/completions (streaming and not) and /v1/models
(list, retrieve, delete). `model` is an adapter ("name" or "name@version") or the base
model's id (or its last path component); the answer carries usage counts. The routes only:
the request bodies are in openai_requests.py, the answers' fields in openai_responses.py,
the serving in openai_serving.py."""

from fastapi import APIRouter, Depends, Request

from gateway.auth import require_key, require_writer
from gateway.backends import Backends, trainer_of
from gateway.errors import params_named
from gateway.openapi import ADMIN, OPENAI_ERRORS, event_stream
from gateway.project_scope import visible_adapters
from gateway.routes.openai_requests import ChatRequest, CompletionRequest
from gateway.routes.openai_serving import ChatServing, CompletionServing, adapter_for
from tuneyard.adapter_store import AdapterId
from tuneyard.errors import InvalidArgument, NotFound
from tuneyard.v1 import inference_pb2, trainer_pb2

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
    """The base model, then each adapter by name (its newest live version: the one its
    name means), `parent` the base."""
    base, adapters = await _models(request)
    newest: dict[str, inference_pb2.Adapter] = {}
    for adapter in (a for a in adapters if a.live):
        current = newest.get(adapter.name)
        if current is None or int(adapter.version or 0) > int(current.version or 0):
            newest[adapter.name] = adapter
    data = [base_json(base)] + [adapter_json(name, a, base) for name, a in sorted(newest.items())]
    return {"object": "list", "data": data}


@router.get("/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> dict:
    """The base model, an adapter by name (its newest live version) as /v1/models lists
    it, or one version by "name@version"."""
    backends: Backends = request.app.state.backends
    if not (adapter := await adapter_for(request, model)):
        return base_json((await backends.info()).model_id)
    base, adapters = await _models(request)
    try:
        wanted = AdapterId.parse(adapter)
    except InvalidArgument:  # "name@latest": no such model, as for any other unknown one
        raise NotFound(f"model {model!r} not found", param="model") from None
    versions = [
        a
        for a in adapters
        if a.name == wanted.name
        and (a.live if wanted.version is None else int(a.version or 0) == wanted.version)
    ]
    if not versions:
        raise NotFound(f"model {model!r} not found", param="model")
    return adapter_json(adapter, max(versions, key=lambda a: int(a.version or 0)), base)


@router.delete("/models/{model:path}", dependencies=[Depends(require_writer)], responses=ADMIN)
async def delete_model(request: Request, model: str) -> dict:
    """A fine-tuned adapter: every version ("name") or one ("name@version"). The trainer
    removes it from the adapters volume (where it publishes), then every replica unloads
    it; from then on a request naming it is 404."""
    backends: Backends = request.app.state.backends
    if not (adapter := await adapter_for(request, model)):
        raise InvalidArgument(
            f"{model!r} is the base model, which cannot be deleted; only fine-tuned adapters can",
            param="model",
        )
    with params_named({"adapter_id": "model", "adapter_name": "model"}):
        reply = await trainer_of(request).call(
            "DeleteAdapter", trainer_pb2.DeleteAdapterRequest(adapter_id=adapter)
        )
    await backends.inference.forget_adapters(list(reply.deleted))
    return {"id": model, "object": "model", "deleted": True}


async def _models(request: Request) -> tuple[str, list[inference_pb2.Adapter]]:
    """The base model, and the adapters the caller's project has."""
    backends: Backends = request.app.state.backends
    base = (await backends.info()).model_id
    listed = visible_adapters(request, await backends.inference.list_adapters())
    return base, [adapter for adapter, _ in listed]


def base_json(base: str) -> dict:
    return {
        "id": base,
        "object": "model",
        "created": 0,
        "owned_by": "tuneyard",
        "root": base,
        "parent": None,
    }


def adapter_json(model: str, adapter: inference_pb2.Adapter, base: str) -> dict:
    return {
        "id": model,
        "object": "model",
        "created": adapter.created_at,
        "owned_by": "tuneyard",
        "root": adapter.id,
        "parent": base,
    }


routers = [router]
