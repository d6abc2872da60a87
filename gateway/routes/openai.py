"""The OpenAI API: /v1/completions, /v1/chat/completions (streaming and not) and /v1/models.
`model` is an adapter ("name" or "name@version") or the base model's id (or its last path
component); the answer carries usage counts."""

import asyncio
import contextlib
import json
import math
import time
import uuid
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.auth import require_key
from gateway.backends import Backends
from gateway.routes.tgi import UINT32_MAX
from gateway.sse import event_response
from tuneyard.v1 import inference_pb2

router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

FINISH_REASONS = {
    inference_pb2.LENGTH: "length",
    inference_pb2.EOS_TOKEN: "stop",
    inference_pb2.STOP_SEQUENCE: "stop",
}


class StreamOptions(BaseModel):
    include_usage: bool | None = False


class _Sampling(BaseModel):
    """Fields both endpoints share. Unknown fields are ignored; known ones this server cannot
    honour are refused when not at their default."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1, le=UINT32_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**64)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: int | None = Field(None, ge=1, le=16)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    # Token id (a string in JSON) -> bias added to its logit.
    logit_bias: dict[int, float] | None = None

    def unsupported(self) -> dict[str, bool]:
        return {}

    @model_validator(mode="after")
    def _refuse_unsupported(self):
        names = [name for name, refused in self.unsupported().items() if refused]
        if names:
            raise ValueError(f"not supported by this server: {', '.join(names)}")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def parameters(self, max_tokens: int | None) -> inference_pb2.GenerationParameters:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        params = inference_pb2.GenerationParameters(stop=stop, details=True)
        if max_tokens is not None:
            params.max_new_tokens = max_tokens
        # OpenAI samples at temperature 1 unless told otherwise; 0 means greedy.
        temperature = 1.0 if self.temperature is None else self.temperature
        if temperature > 0:
            params.do_sample = True
            params.temperature = temperature
            if self.top_p is not None and self.top_p < 1:
                params.top_p = self.top_p
        if self.seed is not None:
            params.seed = self.seed
        if self.top_n:
            params.top_n_tokens = self.top_n
        if self.presence_penalty:
            params.presence_penalty = self.presence_penalty
        if self.frequency_penalty:
            params.frequency_penalty = self.frequency_penalty
        params.logit_bias.update(self.logit_bias or {})
        return params

    @property
    def top_n(self) -> int | None:
        """Alternatives wanted per generated token; None: no logprobs at all."""
        return None

    @property
    def candidates(self) -> int:
        """Answers generated per prompt (more than n with completions' best_of)."""
        return self.n or 1

    def choices(self, request: inference_pb2.GenerateRequest) -> list:
        """The requests for one prompt; with a seed, candidate i samples with seed + i, so
        they differ and a repeated call gives the same ones."""
        copies = []
        for i in range(self.candidates):
            copy = inference_pb2.GenerateRequest()
            copy.CopyFrom(request)
            if self.seed is not None and i:
                copy.parameters.seed = (self.seed + i) % 2**64
            copies.append(copy)
        return copies


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, le=UINT32_MAX)
    echo: bool | None = False
    # Also the number of alternatives per token (OpenAI allows 0 to 5).
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1, le=16)
    suffix: str | None = None

    def unsupported(self) -> dict[str, bool]:
        return {
            **super().unsupported(),
            "best_of with stream": bool((self.best_of or 1) > 1 and self.stream),
            "suffix": bool(self.suffix),
            "echo with stream": bool(self.echo and self.stream),
        }

    @model_validator(mode="after")
    def _best_of_covers_n(self):
        if self.best_of is not None and self.best_of < (self.n or 1):
            raise ValueError(f"best_of ({self.best_of}) must be at least n ({self.n})")
        return self

    @property
    def candidates(self) -> int:
        return max(self.best_of or 1, self.n or 1)

    @property
    def top_n(self) -> int | None:
        return self.logprobs

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = ""
    # An assistant turn that called tools: its calls, written back as the model wrote them.
    tool_calls: list[dict] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        if not self.content and self.tool_calls:
            return json.dumps([_call_json(c) for c in self.tool_calls])
        return self.content or ""


class Function(BaseModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(BaseModel):
    type: Literal["function"]
    function: Function


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


def _call_json(call: dict) -> dict:
    """A tool call as the model writes it: {"name", "arguments"} (arguments an object)."""
    function = call.get("function", {})
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):  # kept as the text it was
            arguments = json.loads(arguments)
    return {"name": function.get("name", ""), "arguments": arguments}


class JsonSchema(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = ""
    schema_: dict = Field(default_factory=dict, alias="schema")


class ResponseFormat(BaseModel):
    """text; json_object (any JSON object); json_schema (JSON matching the schema)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs json_schema.schema")
        return self

    def grammar(self) -> inference_pb2.Grammar | None:
        if self.type == "text":
            return None
        schema = self.json_schema.schema_ if self.type == "json_schema" else {"type": "object"}
        return inference_pb2.Grammar(type="json", value=json.dumps(schema))


NO_TOOL = Tool(
    type="function",
    function=Function(
        name="no_tool",
        description="Answer in text, calling no tool: the answer goes in content.",
        parameters={
            "type": "object",
            "properties": {"content": {"type": "string"}},
            "required": ["content"],
            "additionalProperties": False,
        },
    ),
)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=UINT32_MAX)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _tool_choice_fits(self):
        names = [t.function.name for t in self.tools or []]
        choice = self.tool_choice
        if choice is not None and not names and choice != "none":
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names {choice.function.name!r}, not one of the tools")
        if NO_TOOL.function.name in names:
            raise ValueError(f"the tool name {NO_TOOL.function.name!r} is reserved")
        if self.callable_tools and self.response_format and self.response_format.type != "text":
            raise ValueError("give response_format or tools, not both")
        return self

    @property
    def callable_tools(self) -> list[Tool]:
        """What the answer may call: the named tool, every tool ('required'), or every tool
        and `no_tool` ('auto', the default with tools, as TGI does it: a text answer is the
        content of a no_tool call); none with 'none' or no tools."""
        tools, choice = list(self.tools or []), self.tool_choice
        if isinstance(choice, NamedToolChoice):
            return [t for t in tools if t.function.name == choice.function.name]
        if not tools or choice == "none":
            return []
        return tools if choice == "required" else [*tools, NO_TOOL]

    def tool_grammar(self) -> inference_pb2.Grammar | None:
        """The answer is {"name": <a callable tool>, "arguments": <its parameters>}."""
        calls = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.function.name},
                    "arguments": t.function.parameters,
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in self.callable_tools
        ]
        if not calls:
            return None
        schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
        return inference_pb2.Grammar(type="json", value=json.dumps(schema))

    def rendered_tools(self) -> list[dict]:
        """The tool definitions the chat template shows the model."""
        if self.tool_choice == "none":
            return []
        extra = [NO_TOOL] if NO_TOOL in self.callable_tools else []
        return [t.model_dump() for t in [*(self.tools or []), *extra]]

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def top_n(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


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


def completion_logprobs(tokens, offset: int, top_n: int) -> dict:
    """choices[].logprobs of a text completion (the legacy shape); `offset` is where the
    first token starts in the choice's text. Prompt tokens (echo) have no alternatives,
    and the first of them no logprob."""
    tokens = [t for t in tokens if not t.special]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.text)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [None if math.isnan(t.logprob) else t.logprob for t in tokens],
        "top_logprobs": [
            _by_text(t.top_tokens) if top_n and t.top_tokens else None for t in tokens
        ],
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

    def __init__(self, request: Request, body: _Sampling, chat: bool):
        self.request = request
        self.body = body
        self.chat = chat
        self.backends: Backends = request.app.state.backends
        self.metrics = request.app.state.metrics
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

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

    @property
    def _calls_tools(self) -> bool:
        """The answer is a tool call (JSON constrained by tool_grammar), not free text."""
        return bool(getattr(self.body, "callable_tools", None))

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
        top_n = self.body.top_n
        if top_n is None:
            return None
        if self.chat:
            return chat_logprobs(tokens)
        return completion_logprobs(tokens, offset, top_n)

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
        chosen = []
        for start in range(0, len(requests), per_prompt):
            group = list(zip(requests, replies, strict=True))[start : start + per_prompt]
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


@router.post("/completions")
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
    if body.stream:
        return await answer.stream(requests)
    return await answer.complete(requests)


@router.post("/chat/completions")
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
