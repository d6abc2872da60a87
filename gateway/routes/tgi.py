"""The text-generation-inference API (TGI's request and response fields, so the
`text-generation` client works unchanged); the adapter is `parameters.adapter_id` (LoRAX).
The details also carry LoRAX's `prompt_tokens`, which `lorax-client` requires."""

import asyncio
import json
import math
import time
from typing import Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict, Field, model_validator

from gateway.auth import require_key
from gateway.finish_reasons import finish_words
from gateway.openapi import TGI_ERRORS, Body, TgiError, event_stream
from gateway.project_scope import served_adapter
from gateway.sse import event_response
from tuneyard.errors import InvalidArgument, Unavailable
from tuneyard.protos import OPTIONAL_GENERATION_PARAMETERS, UINT32_MAX
from tuneyard.sampling import is_sampling
from tuneyard.v1 import inference_pb2

router = APIRouter()
authed = APIRouter(dependencies=[Depends(require_key)], responses=TGI_ERRORS)

MAX_BEST_OF = 4


class Grammar(Body):
    """TGI's grammar: a JSON schema (an object, or its JSON text) or a regular expression."""

    type: Literal["json", "regex"]
    value: dict | str

    def to_proto(self) -> inference_pb2.Grammar:
        value = json.dumps(self.value) if isinstance(self.value, dict) else self.value
        return inference_pb2.Grammar(type=self.type, value=value)


class Parameters(Body):
    """TGI's `parameters`; every field may arrive as null. Unknown fields are ignored, as
    TGI does; known ones this server cannot honour are refused when not at their default."""

    model_config = ConfigDict(extra="ignore")

    adapter_id: str | None = None
    max_new_tokens: int | None = Field(None, gt=0, le=UINT32_MAX)
    temperature: float | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, gt=0, le=UINT32_MAX)
    repetition_penalty: float | None = Field(None, gt=0)
    do_sample: bool | None = False
    seed: int | None = Field(None, ge=0, lt=2**64)
    stop: list[str] | None = None
    return_full_text: bool | None = False
    truncate: int | None = Field(None, gt=0, le=UINT32_MAX)
    details: bool | None = False
    decoder_input_details: bool | None = False
    top_n_tokens: int | None = Field(None, ge=0, le=UINT32_MAX)
    frequency_penalty: float | None = None
    typical_p: float | None = Field(None, gt=0, le=1)
    best_of: int | None = Field(None, ge=1, le=MAX_BEST_OF)
    grammar: Grammar | None = None
    # LoRAX's: the k most likely tokens at each generated position, as each token's
    # `alternative_tokens` (what top_n_tokens gives TGI's clients as `top_tokens`).
    return_k_alternatives: int | None = Field(None, gt=0, le=UINT32_MAX)
    # Accepted at its default only.
    watermark: bool | None = False

    @model_validator(mode="after")
    def _best_of_samples(self):
        if (self.best_of or 1) > 1:
            if self.seed is not None:
                raise ValueError("`seed` must not be set when `best_of` is > 1")
            sampling = is_sampling(
                self.do_sample, self.temperature, self.top_k, self.top_p, self.typical_p
            )
            if not sampling:
                raise ValueError("you must use sampling when `best_of` is > 1")
        return self

    @model_validator(mode="after")
    def _refuse_unsupported(self):
        unsupported = {"watermark": bool(self.watermark)}
        names = [name for name, refused in unsupported.items() if refused]
        if names:
            raise ValueError(f"not supported by this server: {', '.join(names)}")
        return self


class GenerateRequest(Body):
    inputs: str = ""
    parameters: Parameters | None = None
    # Only `POST /` reads it.
    stream: bool | None = False
    # tuneyard's extension: the adapter's template fields instead of `inputs`; the inference
    # service renders them with the template the adapter was trained with.
    fields: dict[str, str] | None = None

    @model_validator(mode="after")
    def _one_input(self):
        if not self.inputs and not self.fields:
            raise ValueError("`inputs` cannot be empty")
        if self.inputs and self.fields:
            raise ValueError("give either `inputs` or `fields`, not both")
        return self

    @property
    def params(self) -> Parameters:
        return self.parameters or Parameters()


def to_proto(req: GenerateRequest) -> inference_pb2.GenerateRequest:
    p = req.params
    params = inference_pb2.GenerationParameters(
        do_sample=bool(p.do_sample),
        stop=p.stop or [],
        return_full_text=bool(p.return_full_text),
        # Always asked for: token counts feed the metrics; the client sees them if it asked.
        details=True,
        decoder_input_details=bool(p.decoder_input_details),
    )
    # Sampling parameters passed to the engine when set (the proto's optional fields).
    for name in OPTIONAL_GENERATION_PARAMETERS:
        value = getattr(p, name, None)  # TGI has no presence_penalty
        if value is not None:
            setattr(params, name, value)
    if p.return_k_alternatives:
        # One list of the most likely tokens serves both: each answer takes its prefix.
        params.top_n_tokens = max(p.top_n_tokens or 0, p.return_k_alternatives)
    if p.grammar is not None:
        params.grammar.CopyFrom(p.grammar.to_proto())
    return inference_pb2.GenerateRequest(
        inputs=req.inputs,
        fields=req.fields or {},
        adapter_id=p.adapter_id or "",
        parameters=params,
    )


def _logprob(value: float) -> float | None:
    return None if math.isnan(value) else value


def token_json(token: inference_pb2.Token, alternatives: int = 0) -> dict:
    body = {
        "id": token.id,
        "text": token.text,
        "logprob": _logprob(token.logprob),
        "special": token.special,
    }
    if alternatives:  # as LoRAX: only when asked for
        body["alternative_tokens"] = [
            {"id": t.id, "text": t.text, "logprob": _logprob(t.logprob)}
            for t in token.top_tokens[:alternatives]
        ]
    return body


def top_tokens_json(token: inference_pb2.Token, top_n: int) -> list[dict]:
    return [token_json(t) for t in token.top_tokens[:top_n]]


def details_json(
    details: inference_pb2.GenerateDetails,
    decoder_input_details: bool,
    top_n: int = 0,
    alternatives: int = 0,
) -> dict:
    prefill = []
    if decoder_input_details:
        # The first input token has nothing before it, hence no logprob.
        prefill = [
            {"id": t.id, "text": t.text, "logprob": None if i == 0 else _logprob(t.logprob)}
            for i, t in enumerate(details.prefill)
        ]
    body = {
        "finish_reason": finish_words(details.finish_reason).tgi,
        # LoRAX's field (lorax-client requires it); TGI's clients ignore it.
        "prompt_tokens": details.prompt_tokens,
        "generated_tokens": details.generated_tokens,
        "seed": details.seed if details.HasField("seed") else None,
        "prefill": prefill,
        "tokens": [token_json(t, alternatives) for t in details.tokens],
    }
    if top_n:  # as TGI: only when asked for
        body["top_tokens"] = [top_tokens_json(t, top_n) for t in details.tokens]
    return body


def stream_details_json(details: inference_pb2.GenerateDetails) -> dict:
    """The last event's details; the prompt's length under both names: TGI's
    `input_length` (huggingface_hub) and LoRAX's `prompt_tokens` (lorax-client)."""
    return {
        "finish_reason": finish_words(details.finish_reason).tgi,
        "generated_tokens": details.generated_tokens,
        "seed": details.seed if details.HasField("seed") else None,
        "input_length": details.prompt_tokens,
        "prompt_tokens": details.prompt_tokens,
    }


async def _serve_callers_adapter(request: Request, req: GenerateRequest) -> None:
    """`adapter_id` as the caller's project means it (tuneyard.projects); then the request
    is counted against the project's rate limits."""
    if req.parameters is not None and req.parameters.adapter_id:
        req.parameters.adapter_id = await served_adapter(request, req.parameters.adapter_id)
    await request.app.state.rate_limits.admit(request)


async def generate(request: Request, req: GenerateRequest) -> dict:
    """One answer; with best_of, that many sampled ones and the most likely of them (the
    highest sum of token logprobs), the others in details.best_of_sequences."""
    await _serve_callers_adapter(request, req)
    proto = to_proto(req)
    adapter = req.params.adapter_id or ""
    replies = await asyncio.gather(
        *(
            request.app.state.backends.inference.call("Generate", proto, adapter=adapter)
            for _ in range(req.params.best_of or 1)
        )
    )
    for reply in replies:
        request.app.state.metrics.observe_generation(
            adapter, reply.details.generated_tokens, reply.details.prompt_tokens
        )
        request.app.state.rate_limits.used(
            request, reply.details.generated_tokens + reply.details.prompt_tokens
        )
    best = max(replies, key=lambda r: sum(t.logprob for t in r.details.tokens))
    body = {"generated_text": best.generated_text}
    if req.params.details:
        body["details"] = _details(req, best)
        if len(replies) > 1:
            body["details"]["best_of_sequences"] = [
                {"generated_text": r.generated_text, **_details(req, r)}
                for r in replies
                if r is not best
            ]
    return body


def _details(req: GenerateRequest, reply: inference_pb2.GenerateResponse) -> dict:
    p = req.params
    return details_json(
        reply.details,
        bool(p.decoder_input_details),
        p.top_n_tokens or 0,
        p.return_k_alternatives or 0,
    )


async def generate_stream(request: Request, req: GenerateRequest):
    if (req.params.best_of or 1) > 1:
        raise InvalidArgument("`best_of` != 1 is not allowed for this endpoint", param="best_of")
    await _serve_callers_adapter(request, req)
    metrics = request.app.state.metrics
    start = time.perf_counter()
    messages = await request.app.state.backends.inference.stream(
        "GenerateStream", to_proto(req), adapter=req.params.adapter_id or ""
    )

    async def events():
        first_token_s = None
        index = 0
        alternatives, top_n = req.params.return_k_alternatives or 0, req.params.top_n_tokens
        async for message in messages:
            if first_token_s is None:
                first_token_s = time.perf_counter() - start
            group = []
            for token in message.tokens:
                index += 1
                event = {
                    "index": index,
                    "token": token_json(token, alternatives),
                    "generated_text": None,
                    "details": None,
                }
                if top_n:
                    event["top_tokens"] = top_tokens_json(token, top_n)
                group.append(event)
            if message.HasField("generated_text"):
                group[-1]["generated_text"] = message.generated_text
                group[-1]["details"] = stream_details_json(message.details)
                metrics.observe_generation(
                    req.params.adapter_id or "",
                    message.details.generated_tokens,
                    message.details.prompt_tokens,
                    first_token_s,
                    time.perf_counter() - start,
                )
                request.app.state.rate_limits.used(
                    request, message.details.generated_tokens + message.details.prompt_tokens
                )
            yield group

    return event_response(request.url.path, events())


@authed.post("/generate")
async def generate_route(request: Request, req: GenerateRequest) -> dict:
    return await generate(request, req)


@authed.post(
    "/generate_stream",
    response_class=StreamingResponse,
    responses={200: event_stream("One event per generated token; the last one has details.")},
)
async def generate_stream_route(request: Request, req: GenerateRequest):
    return await generate_stream(request, req)


@authed.post(
    "/",
    responses={200: event_stream("With `stream: true`: the events of /generate_stream.")},
)
async def compat_route(request: Request, req: GenerateRequest):
    """TGI's compatibility route: a stream when `stream` is true, else a one-element list."""
    if req.stream:
        return await generate_stream(request, req)
    return [await generate(request, req)]


@authed.post("/tokenize")
async def tokenize_route(request: Request, req: GenerateRequest) -> list[dict]:
    """TGI's /tokenize: the tokens of `inputs` with their character offsets."""
    if req.fields:
        raise InvalidArgument("/tokenize takes inputs, not fields", param="fields")
    reply = await request.app.state.backends.inference.call(
        "Tokenize", inference_pb2.TokenizeRequest(inputs=req.inputs)
    )
    return [{"id": t.id, "text": t.text, "start": t.start, "stop": t.stop} for t in reply.tokens]


@authed.get("/info")
async def info_route(request: Request) -> dict:
    info = await request.app.state.backends.inference.call("Info", inference_pb2.InfoRequest())
    return {
        "model_id": info.model_id,
        "model_sha": None,
        "model_dtype": info.model_dtype,
        "model_device_type": info.model_device_type,
        "model_pipeline_tag": "text-generation",
        "max_best_of": MAX_BEST_OF,
        "max_input_tokens": info.max_input_tokens,
        "max_total_tokens": info.max_total_tokens,
        "max_batch_size": info.max_batch_size or None,
        "max_loaded_adapters": info.max_loaded_adapters,
        "eos_token": info.eos_token,
        "router": "tuneyard-gateway",
        "version": info.version,
        "sha": None,
        "docker_label": None,
    }


@router.get(
    "/health",
    response_class=Response,
    responses={
        # As TGI's: an empty body, no content type.
        200: {"description": "The inference service is serving.", "content": {}},
        503: {"model": TgiError, "description": "The inference service is not serving."},
    },
)
async def health_route(request: Request) -> Response:
    if not await request.app.state.backends.inference.serving():
        raise Unavailable("inference service is not serving")
    return Response(status_code=200)


routers = [authed, router]
