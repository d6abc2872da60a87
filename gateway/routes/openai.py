"""The OpenAI API: /v1/completions, /v1/chat/completions (streaming and not) and /v1/models.
`model` is an adapter ("name" or "name@version") or the base model's id (or its last path
component); the answer carries usage counts."""

import asyncio
import json
import math
import time
import uuid

from fastapi import APIRouter, Depends, Request

from gateway.auth import require_key
from gateway.backends import Backends
from gateway.errors import params_named
from gateway.openapi import OPENAI_ERRORS, event_stream
from gateway.routes.openai_requests import NO_TOOL, ChatRequest, CompletionRequest, SamplingRequest
from gateway.sse import event_response
from tuneyard.v1 import inference_pb2

router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=OPENAI_ERRORS)
STREAMED = {200: event_stream("With `stream: true`: chunks as events, then `data: [DONE]`.")}

FINISH_REASONS = {
    inference_pb2.LENGTH: "length",
    inference_pb2.EOS_TOKEN: "stop",
    inference_pb2.STOP_SEQUENCE: "stop",
}


async def adapter_for(backends: Backends, model: str) -> str:
    """The adapter id a `model` names; "" for the base model."""
    model_id = (await backends.info()).model_id
    if model in (model_id, model_id.rstrip("/").rsplit("/", 1)[-1]):
        return ""
    return model


def usage(details: inference_pb2.GenerateDetails) -> dict:
    return {
        "prompt_tokens": details.prompt_tokens,
        "completion_tokens": details.generated_tokens,
        "total_tokens": details.prompt_tokens + details.generated_tokens,
    }


def chat_logprobs(tokens) -> dict:
    """choices[].logprobs of a chat answer: one entry per content token."""

    def entry(token: inference_pb2.Token) -> dict:
        return {"token": token.text, "logprob": token.logprob, "bytes": list(token.text.encode())}

    content = [
        {**entry(t), "top_logprobs": [entry(a) for a in t.top_tokens]}
        for t in tokens
        if not t.special
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(tokens, offset: int) -> dict:
    """choices[].logprobs of a text completion (the legacy shape); `offset` is where the
    first token starts in the choice's text. Tokens without alternatives (none asked for,
    or prompt tokens with echo) have None there; the first prompt token has no logprob."""
    tokens = [t for t in tokens if not t.special]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.text)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [None if math.isnan(t.logprob) else t.logprob for t in tokens],
        "top_logprobs": [_by_text(t.top_tokens) if t.top_tokens else None for t in tokens],
        "text_offset": offsets,
    }


def _mean_logprob(reply: inference_pb2.GenerateResponse) -> float:
    tokens = reply.details.tokens
    return sum(t.logprob for t in tokens) / max(len(tokens), 1)


def _by_text(alternatives) -> dict[str, float]:
    """text -> logprob, best first; alternatives that read the same (pieces of a character)
    keep the best one's logprob."""
    top: dict[str, float] = {}
    for a in alternatives:
        top.setdefault(a.text, a.logprob)
    return top


class _Answer:
    """Runs one request against the inference service and shapes the OpenAI answers;
    `chat` picks chat.completion shapes over text_completion ones."""

    def __init__(self, request: Request, body: SamplingRequest, chat: bool):
        self.request = request
        self.body = body
        self.chat = chat
        self.backends: Backends = request.app.state.backends
        self.metrics = request.app.state.metrics
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        # The answer is a tool call (JSON constrained by tool_grammar), not free text.
        self._calls_tools = bool(getattr(body, "callable_tools", None))

    def _envelope(self, choices: list[dict], **extra) -> dict:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.body.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }

    def _choice(
        self,
        index: int,
        text: str | None,
        finish_reason: str | None,
        stream: bool,
        logprobs: dict | None = None,
    ) -> dict:
        if not self.chat:
            return {
                "index": index,
                "text": text or "",
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        if stream:
            delta = {} if text is None else {"content": text}
            return {
                "index": index,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        content, calls = self._tool_answer(text)
        message = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
            finish_reason = "tool_calls"
        return {
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }

    def _tool_answer(self, text: str | None) -> tuple[str | None, list[dict] | None]:
        """(content, tool_calls) of an answer: a tool call in OpenAI's shape, or no_tool's
        content as text; the text as it is without tools or when max_tokens cut the call
        short."""
        if not self._calls_tools or text is None:
            return text, None
        try:
            call = json.loads(text)
        except json.JSONDecodeError:
            return text, None
        if call["name"] == NO_TOOL.function.name:
            return call["arguments"]["content"], None
        function = {"name": call["name"], "arguments": json.dumps(call["arguments"])}
        return None, [
            {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": function}
        ]

    def _logprobs(self, tokens, offset: int = 0) -> dict | None:
        if self.body.top_n is None:
            return None
        if self.chat:
            return chat_logprobs(tokens)
        return completion_logprobs(tokens, offset)

    async def complete(self, requests: list[inference_pb2.GenerateRequest]) -> dict:
        """All the answers at once. Each prompt has `candidates` requests in a row; with
        best_of, its n choices are those of highest mean logprob per token, and usage
        counts every candidate, as at OpenAI."""
        replies = await asyncio.gather(
            *(self.backends.inference.call("Generate", r, adapter=r.adapter_id) for r in requests)
        )
        total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for request, reply in zip(requests, replies, strict=True):
            self.metrics.observe_generation(
                request.adapter_id, reply.details.generated_tokens, reply.details.prompt_tokens
            )
            for key, value in usage(reply.details).items():
                total[key] += value
        per_prompt, n = self.body.candidates, self.body.n or 1
        pairs = list(zip(requests, replies, strict=True))
        chosen = []
        for start in range(0, len(pairs), per_prompt):
            group = pairs[start : start + per_prompt]
            if per_prompt > n:
                group = sorted(group, key=lambda pair: _mean_logprob(pair[1]), reverse=True)[:n]
            chosen += group
        choices = []
        for index, (request, reply) in enumerate(chosen):
            tokens = list(reply.details.tokens)
            if request.parameters.return_full_text:  # echo: the prompt's tokens come first
                tokens = list(reply.details.prefill) + tokens
            choices.append(
                self._choice(
                    index,
                    reply.generated_text,
                    FINISH_REASONS.get(reply.details.finish_reason, "stop"),
                    stream=False,
                    logprobs=self._logprobs(tokens),
                )
            )
        return self._envelope(choices, usage=total)

    async def stream(self, requests: list[inference_pb2.GenerateRequest]):
        """One event stream for all the choices: their tokens interleave as they come,
        each chunk naming its choice's index."""
        start = time.perf_counter()
        opened = await asyncio.gather(
            *(
                self.backends.inference.stream("GenerateStream", r, adapter=r.adapter_id)
                for r in requests
            ),
            return_exceptions=True,
        )
        streams = [s for s in opened if not isinstance(s, BaseException)]
        failed = [s for s in opened if isinstance(s, BaseException)]
        if failed:  # the others stop costing compute
            for messages in streams:
                await messages.aclose()
            raise failed[0]
        chunk_object = "chat.completion.chunk" if self.chat else "text_completion"

        def chunk(choices: list[dict], **extra) -> dict:
            return {**self._envelope(choices, **extra), "object": chunk_object}

        async def pump(index: int, messages, queue: asyncio.Queue) -> None:
            try:
                async for message in messages:
                    await queue.put((index, message))
                await queue.put((index, None))
            except Exception as err:  # handed to the consumer, which raises it
                await queue.put((index, err))

        async def events():
            queue: asyncio.Queue = asyncio.Queue()
            pumps = [
                asyncio.create_task(pump(i, messages, queue)) for i, messages in enumerate(streams)
            ]
            offsets = [0] * len(streams)
            first_token_s: list[float | None] = [None] * len(streams)
            total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            try:
                if self.chat:
                    for index in range(len(streams)):
                        opening = self._choice(index, "", None, stream=True)
                        opening["delta"]["role"] = "assistant"
                        yield chunk([opening])
                running = len(streams)
                while running:
                    index, message = await queue.get()
                    if message is None:
                        running -= 1
                        continue
                    if isinstance(message, Exception):
                        raise message
                    if first_token_s[index] is None:
                        first_token_s[index] = time.perf_counter() - start
                    token = message.token
                    # With logprobs, a token that adds no text yet (part of a character)
                    # still gets its chunk: the streamed logprobs equal the whole answer's.
                    # A tool call (or no_tool's text) comes whole at the end instead.
                    wanted = token.text or self.body.top_n is not None
                    if not token.special and wanted and not self._calls_tools:
                        logprobs = self._logprobs([token], offsets[index])
                        offsets[index] += len(token.text)
                        yield chunk(
                            [self._choice(index, token.text, None, stream=True, logprobs=logprobs)]
                        )
                    if message.HasField("generated_text"):
                        details = message.details
                        self.metrics.observe_generation(
                            requests[index].adapter_id,
                            details.generated_tokens,
                            details.prompt_tokens,
                            first_token_s[index],
                            time.perf_counter() - start,
                        )
                        for key, value in usage(details).items():
                            total[key] += value
                        reason = FINISH_REASONS.get(details.finish_reason, "stop")
                        if self._calls_tools:
                            content, calls = self._tool_answer(message.generated_text)
                            delta = (
                                {"tool_calls": [{"index": 0, **calls[0]}]}
                                if calls
                                else {"content": content}
                            )
                            reason = "tool_calls" if calls else reason
                            yield chunk(
                                [
                                    {
                                        "index": index,
                                        "delta": delta,
                                        "logprobs": None,
                                        "finish_reason": None,
                                    }
                                ]
                            )
                        text = None if self.chat else ""
                        yield chunk([self._choice(index, text, reason, stream=True)])
                if self.body.include_usage:
                    yield chunk([], usage=total)
            finally:
                for task in pumps:
                    task.cancel()
                for messages in streams:
                    await messages.aclose()

        return event_response(self.request.url.path, events(), done_marker=True)


@router.post("/completions", responses=STREAMED)
async def completions(request: Request, body: CompletionRequest):
    answer = _Answer(request, body, chat=False)
    adapter = await adapter_for(answer.backends, body.model)
    params = body.parameters(body.max_tokens)
    params.return_full_text = bool(body.echo)
    params.decoder_input_details = bool(body.echo and body.logprobs is not None)
    requests = [
        choice
        for prompt in body.prompts
        for choice in body.choices(
            inference_pb2.GenerateRequest(inputs=prompt, adapter_id=adapter, parameters=params)
        )
    ]
    with params_named(body.engine_params()):
        if body.stream:
            return await answer.stream(requests)
        return await answer.complete(requests)


@router.post("/chat/completions", responses=STREAMED)
async def chat_completions(request: Request, body: ChatRequest):
    answer = _Answer(request, body, chat=True)
    adapter = await adapter_for(answer.backends, body.model)
    params = body.parameters(body.max_completion_tokens or body.max_tokens)
    grammar = body.tool_grammar() or (
        body.response_format.grammar() if body.response_format else None
    )
    if grammar is not None:
        params.grammar.CopyFrom(grammar)
    tools = body.rendered_tools()
    generate = inference_pb2.GenerateRequest(
        adapter_id=adapter,
        parameters=params,
        messages=[inference_pb2.ChatMessage(role=m.role, content=m.text()) for m in body.messages],
        tools=json.dumps(tools) if tools else "",
    )
    requests = body.choices(generate)
    with params_named(body.engine_params()):
        if body.stream:
            return await answer.stream(requests)
        return await answer.complete(requests)


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
