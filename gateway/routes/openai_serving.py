"""Serving the OpenAI API's two generating endpoints: a request becomes inference service
requests (one per candidate choice), and their replies the answer, whole or as an event
stream. What both endpoints do is on the base; each endpoint's class says how its request
is put to the inference service and how its choices read."""

import asyncio
import json
import time
import uuid
from functools import cached_property

from fastapi import Request

from gateway.backends import Backends
from gateway.finish_reasons import finish_words
from gateway.project_scope import served_adapter
from gateway.routes.openai_requests import ChatRequest, CompletionRequest, SamplingRequest
from gateway.routes.openai_responses import (
    chat_logprobs,
    completion_logprobs,
    tool_answer,
    usage,
)
from gateway.sse import event_response
from gateway.streams import merged
from tuneyard.v1 import inference_pb2


async def adapter_for(request: Request, model: str) -> str:
    """The adapter id a `model` names for the caller; "" for the base model."""
    model_id = (await request.app.state.backends.info()).model_id
    if model in (model_id, model_id.rstrip("/").rsplit("/", 1)[-1]):
        return ""
    return await served_adapter(request, model, "model")


def _mean_logprob(reply: inference_pb2.GenerateResponse) -> float:
    tokens = reply.details.tokens
    return sum(t.logprob for t in tokens) / max(len(tokens), 1)


def _add_usage(total: dict, details: inference_pb2.GenerateDetails) -> None:
    for key, value in usage(details).items():
        total[key] += value


class OpenAIServing:
    """One request to a generating endpoint, from the inference service's replies to the
    answer's envelope, usage, best_of choice and stream merging."""

    id_prefix: str
    object: str
    chunk_object: str

    def __init__(self, request: Request, body: SamplingRequest):
        self.request = request
        self.body = body
        self.backends: Backends = request.app.state.backends
        self.metrics = request.app.state.metrics
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    async def answer(self):
        """The whole answer, or its event stream with `stream: true`."""
        adapter = await adapter_for(self.request, self.body.model)
        await self.request.app.state.rate_limits.admit(self.request)
        requests = self.generate_requests(adapter)
        if self.body.stream:
            return await self.stream(requests)
        return await self.complete(requests)

    def generate_requests(self, adapter: str) -> list[inference_pb2.GenerateRequest]:
        """The inference service requests, `body.candidates` in a row for each prompt."""
        raise NotImplementedError

    def choice(self, index: int, text: str, reason: str | None, logprobs: dict | None) -> dict:
        """A choice of the whole answer."""
        raise NotImplementedError

    def shape_logprobs(self, tokens, offset: int) -> dict:
        """A choice's logprobs; `offset` is where the first token starts in its text."""
        raise NotImplementedError

    def opening_choices(self, index: int) -> list[dict]:
        """The stream's choices for a choice before its first token."""
        return []

    def token_choice(self, index: int, token: inference_pb2.Token, offset: int) -> dict | None:
        """The stream's choice for one generated token; None: none sent."""
        raise NotImplementedError

    def closing_choices(self, index: int, text: str, reason: str) -> list[dict]:
        """The stream's choices once a choice's text is whole: the last has its reason."""
        raise NotImplementedError

    def _logprobs(self, tokens, offset: int = 0) -> dict | None:
        return None if self.body.top_n is None else self.shape_logprobs(tokens, offset)

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

    async def complete(self, requests: list[inference_pb2.GenerateRequest]) -> dict:
        """All the answers at once. With best_of, a prompt's n choices are those of highest
        mean logprob per token among its candidates, and usage counts every candidate, as
        at OpenAI."""
        replies = await asyncio.gather(
            *(self.backends.inference.call("Generate", r, adapter=r.adapter_id) for r in requests)
        )
        total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for request, reply in zip(requests, replies, strict=True):
            self.metrics.observe_generation(
                request.adapter_id, reply.details.generated_tokens, reply.details.prompt_tokens
            )
            _add_usage(total, reply.details)
        self.request.app.state.rate_limits.used(self.request, total["total_tokens"])
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
            reason = finish_words(reply.details.finish_reason).openai
            choices.append(self.choice(index, reply.generated_text, reason, self._logprobs(tokens)))
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

        def chunk(choice: dict | None = None, **extra) -> dict:
            choices = [] if choice is None else [choice]
            return {**self._envelope(choices, **extra), "object": self.chunk_object}

        async def events():
            offsets = [0] * len(streams)
            first_token_s: list[float | None] = [None] * len(streams)
            total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            async with merged(streams) as messages:
                for index in range(len(streams)):
                    for choice in self.opening_choices(index):
                        yield chunk(choice)
                async for index, message in messages:
                    if first_token_s[index] is None:
                        first_token_s[index] = time.perf_counter() - start
                    group = []
                    for token in message.tokens:
                        # With logprobs, a token that adds no text yet (part of a character)
                        # still gets its chunk: the streamed logprobs equal the whole answer's.
                        wanted = token.text or self.body.top_n is not None
                        if not token.special and wanted:
                            choice = self.token_choice(index, token, offsets[index])
                            if choice is not None:
                                offsets[index] += len(token.text)
                                group.append(chunk(choice))
                    yield group
                    if message.HasField("generated_text"):
                        details = message.details
                        self.metrics.observe_generation(
                            requests[index].adapter_id,
                            details.generated_tokens,
                            details.prompt_tokens,
                            first_token_s[index],
                            time.perf_counter() - start,
                        )
                        _add_usage(total, details)
                        self.request.app.state.rate_limits.used(
                            self.request, details.prompt_tokens + details.generated_tokens
                        )
                        reason = finish_words(details.finish_reason).openai
                        for choice in self.closing_choices(index, message.generated_text, reason):
                            yield chunk(choice)
            if self.body.include_usage:
                yield chunk(usage=total)

        return event_response(self.request.url.path, events(), done_marker=True)


class CompletionServing(OpenAIServing):
    """/v1/completions: text_completion answers, one choice per prompt and candidate."""

    id_prefix = "cmpl"
    object = "text_completion"
    chunk_object = "text_completion"
    body: CompletionRequest

    def generate_requests(self, adapter: str) -> list[inference_pb2.GenerateRequest]:
        body = self.body
        params = body.parameters(body.max_tokens)
        params.return_full_text = bool(body.echo)
        params.decoder_input_details = bool(body.echo and body.logprobs is not None)
        return [
            choice
            for prompt in body.prompts
            for choice in body.choices(
                inference_pb2.GenerateRequest(inputs=prompt, adapter_id=adapter, parameters=params)
            )
        ]

    def choice(self, index: int, text: str, reason: str | None, logprobs: dict | None) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    def shape_logprobs(self, tokens, offset: int) -> dict:
        return completion_logprobs(tokens, offset)

    def token_choice(self, index: int, token: inference_pb2.Token, offset: int) -> dict:
        return self.choice(index, token.text, None, self._logprobs([token], offset))

    def closing_choices(self, index: int, text: str, reason: str) -> list[dict]:
        return [self.choice(index, "", reason, None)]


class ChatServing(OpenAIServing):
    """/v1/chat/completions: chat.completion answers, a message (or tool call) per choice.
    With tools, the answer is JSON constrained by the tool grammar: it is read once whole,
    and streams as one chunk at the end rather than token by token."""

    id_prefix = "chatcmpl"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    body: ChatRequest

    def generate_requests(self, adapter: str) -> list[inference_pb2.GenerateRequest]:
        body = self.body
        params = body.parameters(body.max_completion_tokens or body.max_tokens)
        grammar = body.tool_grammar() or (
            body.response_format.grammar() if body.response_format else None
        )
        if grammar is not None:
            params.grammar.CopyFrom(grammar)
        tools = body.rendered_tools()
        messages = [inference_pb2.ChatMessage(role=m.role, content=m.text()) for m in body.messages]
        generate = inference_pb2.GenerateRequest(
            adapter_id=adapter,
            parameters=params,
            messages=messages,
            tools=json.dumps(tools) if tools else "",
        )
        return body.choices(generate)

    @cached_property
    def _calls_tools(self) -> bool:
        return bool(self.body.callable_tools)

    def _read(self, text: str, reason: str) -> tuple[str | None, dict | None, str]:
        """(content, tool call, finish reason) of a whole answer."""
        if not self._calls_tools:
            return text, None, reason
        content, call = tool_answer(text)
        return content, call, "tool_calls" if call else reason

    def choice(self, index: int, text: str, reason: str, logprobs: dict | None) -> dict:
        content, call, reason = self._read(text, reason)
        message = {"role": "assistant", "content": content}
        if call:
            message["tool_calls"] = [call]
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": reason}

    def shape_logprobs(self, tokens, offset: int) -> dict:
        return chat_logprobs(tokens)

    def _delta(self, index: int, delta: dict, reason: str | None, logprobs: dict | None) -> dict:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}

    def opening_choices(self, index: int) -> list[dict]:
        return [self._delta(index, {"content": "", "role": "assistant"}, None, None)]

    def token_choice(self, index: int, token: inference_pb2.Token, offset: int) -> dict | None:
        if self._calls_tools:
            return None
        return self._delta(index, {"content": token.text}, None, self._logprobs([token]))

    def closing_choices(self, index: int, text: str, reason: str) -> list[dict]:
        if not self._calls_tools:  # the text went out token by token
            return [self._delta(index, {}, reason, None)]
        content, call, reason = self._read(text, reason)
        delta = {"tool_calls": [{"index": 0, **call}]} if call else {"content": content}
        return [self._delta(index, delta, None, None), self._delta(index, {}, reason, None)]
