"""The OpenAI API's answer fields read off the inference service's replies: usage, both
logprobs shapes (chat's and the legacy text completion's) and a tool call's answer. The
envelopes around them are the serving classes' (gateway/routes/openai_serving.py)."""

import json
import math
import uuid

from gateway.routes.openai_requests import NO_TOOL
from tuneyard.v1 import inference_pb2


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


def _by_text(alternatives) -> dict[str, float]:
    """text -> logprob, best first; alternatives that read the same (pieces of a character)
    keep the best one's logprob."""
    top: dict[str, float] = {}
    for a in alternatives:
        top.setdefault(a.text, a.logprob)
    return top


def tool_answer(text: str) -> tuple[str | None, dict | None]:
    """(content, tool call) of an answer constrained to call a tool: the call in OpenAI's
    shape, or no_tool's content as text; the text as it is when max_tokens cut the call
    short (it is not JSON yet)."""
    try:
        call = json.loads(text)
    except json.JSONDecodeError:
        return text, None
    if call["name"] == NO_TOOL.function.name:
        return call["arguments"]["content"], None
    function = {"name": call["name"], "arguments": json.dumps(call["arguments"])}
    return None, {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": function}
