"""Adapters on the inference service: list (state, version, rank, size, loaded, last use,
on which replicas), load and unload; load and unload act on every replica."""

import time

from fastapi import APIRouter, Depends, Request

from gateway.auth import require_admin, require_key, require_writer
from gateway.backends import trainer_of
from gateway.openapi import ADAPTER_ERRORS, ADMIN
from gateway.project_scope import visible_adapters
from tuneyard.v1 import inference_pb2, trainer_pb2

router = APIRouter(
    prefix="/v1/adapters", dependencies=[Depends(require_key)], responses=ADAPTER_ERRORS
)


def adapter_json(adapter: inference_pb2.Adapter, replicas: list[str] | None = None) -> dict:
    """`replicas`: the inference replicas it is loaded on, when listing them."""
    return {
        "object": "adapter",
        "id": adapter.id,
        "name": adapter.name,
        "version": adapter.version,
        "state": adapter.state,
        "loaded": adapter.loaded,
        "rank": adapter.rank,
        "target_modules": list(adapter.target_modules),
        "size": adapter.size_bytes,
        "base_model": adapter.base_model,
        "recipe": adapter.recipe,
        "template_fields": list(adapter.template_fields),
        "created_at": adapter.created_at or None,
        "last_used_at": adapter.last_used_at or None,
        "trained_on": adapter.trained_on,
        "served_on": adapter.served_on,
        "faithful": adapter.faithful if adapter.HasField("faithful") else None,
        "gate": adapter.gate or None,
        "live": adapter.live,
        **({} if replicas is None else {"replicas": replicas}),
    }


@router.get("")
async def list_adapters(request: Request) -> dict:
    listed = visible_adapters(request, await request.app.state.backends.inference.list_adapters())
    return {"object": "list", "data": [adapter_json(a, where) for a, where in listed]}


@router.post("/{adapter_id}/load", dependencies=[Depends(require_admin)], responses=ADMIN)
async def load_adapter(request: Request, adapter_id: str) -> dict:
    start = time.perf_counter()
    adapter = await request.app.state.backends.inference.load_adapter(adapter_id)
    metrics = request.app.state.metrics
    metrics.adapter_load_duration.labels(metrics.adapter_label(adapter_id)).observe(
        time.perf_counter() - start
    )
    return adapter_json(adapter)


@router.post("/{adapter_id}/promote", dependencies=[Depends(require_writer)], responses=ADMIN)
async def promote_adapter(request: Request, adapter_id: str) -> dict:
    """A version whose parity gate failed (`name@version`) becomes what its name means,
    unless a newer version is live; the trainer marks it on the adapters volume, then
    every replica loads it."""
    backends = request.app.state.backends
    reply = await trainer_of(request).call(
        "PromoteAdapter", trainer_pb2.PromoteAdapterRequest(adapter_id=adapter_id)
    )
    adapter = await backends.inference.load_adapter(reply.promoted)
    return {**adapter_json(adapter), "promoted": True}


@router.post("/{adapter_id}/unload", dependencies=[Depends(require_admin)], responses=ADMIN)
async def unload_adapter(request: Request, adapter_id: str) -> dict:
    adapter = await request.app.state.backends.inference.unload_adapter(adapter_id)
    return adapter_json(adapter)


routers = [router]
