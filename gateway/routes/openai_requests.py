"""The OpenAI API's request bodies and their checks: what is accepted, what is refused
with the reason, and what each becomes in the inference service's GenerationParameters
(including the grammar behind response_format and tool calls)."""

import contextlib
import json
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, Strict, field_validator, model_validator

from gateway.openapi import Body
from tuneyard.protos import UINT32_MAX
from tuneyard.v1 import inference_pb2


class StreamOptions(Body):
    include_usage: bool | None = False


class SamplingRequest(Body):
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
    # (JSON keys are strings: an id is read from one.)
    logit_bias: dict[Annotated[int, Strict(False)], float] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: dict[int, float] | None):
        for token in bias or {}:
            if not 0 <= token <= UINT32_MAX:
                raise ValueError(f"token id {token} is not a token id (0 or more)")
        return bias

    def unsupported(self) -> dict[str, bool]:
        return {}

    @model_validator(mode="after")
    def _refuse_unsupported(self):
        names = [name for name, refused in self.unsupported().items() if refused]
        if names:
            raise ValueError(f"not supported by this server: {', '.join(names)}")
        return self

    def engine_params(self) -> dict[str, str]:
        """The client's name of each field of the inference service's request that an
        error may name, where the two differ (see gateway.errors.params_named)."""
        return {"adapter_id": "model", "adapter_name": "model", "max_new_tokens": "max_tokens"}

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


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, le=UINT32_MAX)
    echo: bool | None = False
    # Also the number of alternatives per token (OpenAI allows 0 to 5).
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1, le=16)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, prompt: str | list[str]):
        if not prompt and isinstance(prompt, list):
            raise ValueError("give at least one prompt (the list is empty)")
        return prompt

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

    def engine_params(self) -> dict[str, str]:
        return {**super().engine_params(), "inputs": "prompt", "top_n_tokens": "logprobs"}

    @property
    def top_n(self) -> int | None:
        return self.logprobs

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class TextPart(Body):
    type: Literal["text"]
    text: str


class Message(Body):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = ""
    # An assistant turn that called tools: its calls, written back as the model wrote them.
    tool_calls: list[dict] | None = None

    @model_validator(mode="after")
    def _content_given(self):
        # Only an assistant turn that called tools may leave content out (OpenAI's rule).
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content (it is null)")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        if not self.content and self.tool_calls:
            return json.dumps([_call_json(c) for c in self.tool_calls])
        return self.content or ""


class Function(Body):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(Body):
    type: Literal["function"]
    function: Function


class FunctionName(Body):
    name: str


class NamedToolChoice(Body):
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


class JsonSchema(Body):
    model_config = ConfigDict(extra="ignore")

    name: str = ""
    schema_: dict = Field(default_factory=dict, alias="schema")


class ResponseFormat(Body):
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


class ChatRequest(SamplingRequest):
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

    def engine_params(self) -> dict[str, str]:
        max_tokens = "max_completion_tokens" if self.max_completion_tokens else "max_tokens"
        return {
            **super().engine_params(),
            "inputs": "messages",
            "top_n_tokens": "top_logprobs",
            "max_new_tokens": max_tokens,
            "grammar": "tools" if self.callable_tools else "response_format",
        }
