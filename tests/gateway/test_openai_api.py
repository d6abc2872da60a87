"""The OpenAI API in front of the real inference service on tiny_llama, driven by the real
`openai` client."""

import json

import openai
import pytest
import text_generation

from tests.support.services import SCHEMA


def test_openai_models(oai, tiny_llama, inference):
    models = {m.id: m for m in oai.models.list()}
    base = next(m for m in models.values() if getattr(m, "parent", None) is None)
    assert models["emails"].parent == base.id
    assert models["emails"].root == "emails@1"


def test_openai_completions(oai):
    completion = oai.completions.create(
        model="emails", prompt="Subject:", max_tokens=4, temperature=0
    )
    assert completion.object == "text_completion"
    assert completion.usage.completion_tokens == 4 or completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    chunks = list(
        oai.completions.create(
            model="emails",
            prompt="Subject:",
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == completion.choices[0].text
    assert chunks[-1].usage.completion_tokens == completion.usage.completion_tokens
    several = oai.completions.create(model="emails", prompt=["a", "b"], max_tokens=2, temperature=0)
    assert [c.index for c in several.choices] == [0, 1]


def test_openai_chat(oai, inference):
    base_id = next(m.id for m in oai.models.list() if getattr(m, "parent", None) is None)
    messages = [{"role": "user", "content": "Hi"}]
    for model in (base_id, "emails"):
        reply = oai.chat.completions.create(
            model=model, messages=messages, max_tokens=4, temperature=0
        )
        assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
        assert reply.usage.prompt_tokens > 0
        chunks = list(
            oai.chat.completions.create(
                model=model, messages=messages, max_tokens=4, temperature=0, stream=True
            )
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert streamed == reply.choices[0].message.content


def test_openai_chat_logprobs(oai):
    messages = [{"role": "user", "content": "Hi"}]
    ask = dict(model="emails", messages=messages, max_tokens=5, temperature=0)
    reply = oai.chat.completions.create(**ask, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and token.bytes == list(token.token.encode())
        # Greedy: the chosen token is the best alternative (alternatives are decoded one
        # by one, so a piece of a multi-byte character reads differently from the text).
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob)
    chunks = list(oai.chat.completions.create(**ask, logprobs=True, stream=True))
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [(t.token, t.top_logprobs) for t in streamed] == [(t.token, []) for t in content]
    assert oai.chat.completions.create(**ask).choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs: true"):
        oai.chat.completions.create(**ask, top_logprobs=2)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        oai.chat.completions.create(**ask, logprobs=True, top_logprobs=21)


def test_openai_completion_logprobs(oai):
    ask = dict(model="emails", prompt="Subject: Meet", max_tokens=4, temperature=0)
    completion = oai.completions.create(**ask, logprobs=2)
    logprobs = completion.choices[0].logprobs
    text = completion.choices[0].text
    assert "".join(logprobs.tokens) == text
    assert logprobs.text_offset == [
        len("".join(logprobs.tokens[:i])) for i in range(len(logprobs.tokens))
    ]
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    # A dict per token, text -> logprob (the legacy shape): alternatives with the same
    # text (pieces of characters) share a key.
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs)
    assert all(
        max(top.values()) == pytest.approx(lp)
        for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs, strict=True)
    )
    # echo: the prompt's tokens first, the very first without a logprob or alternatives.
    echoed = oai.completions.create(**ask, logprobs=0, echo=True).choices[0]
    assert echoed.text == "Subject: Meet" + text
    assert echoed.logprobs.token_logprobs[0] is None and echoed.logprobs.top_logprobs[0] is None
    assert echoed.logprobs.tokens[-len(logprobs.tokens) :] == logprobs.tokens
    chunks = list(oai.completions.create(**ask, logprobs=1, stream=True))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [lp.tokens[0] for lp in streamed] == logprobs.tokens
    assert [lp.text_offset[0] for lp in streamed] == logprobs.text_offset
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        oai.completions.create(**ask, logprobs=6)


def test_openai_several_choices(oai):
    """n choices per prompt, sampled with seed, seed + 1, ...; streamed ones interleave
    and each ends with its own finish_reason."""
    messages = [{"role": "user", "content": "Hi"}]
    ask = dict(model="emails", max_tokens=6, temperature=1.0, seed=11)
    reply = oai.chat.completions.create(**ask, messages=messages, n=3)
    texts = [c.message.content for c in reply.choices]
    assert [c.index for c in reply.choices] == [0, 1, 2] and len(set(texts)) > 1
    first = oai.chat.completions.create(**ask, messages=messages)
    assert first.choices[0].message.content == texts[0]  # choice 0 samples with the seed
    assert reply.usage.completion_tokens == sum(
        oai.chat.completions.create(
            **{**ask, "seed": 11 + i}, messages=messages
        ).usage.completion_tokens
        for i in range(3)
    )
    chunks = list(
        oai.chat.completions.create(
            **ask, messages=messages, n=3, stream=True, stream_options={"include_usage": True}
        )
    )
    streamed = ["", "", ""]
    finished = []
    for c in chunks:
        for choice in c.choices:
            streamed[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.append(choice.index)
    assert streamed == texts and sorted(finished) == [0, 1, 2]
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    # Completions: prompt-major order, several prompts streamed too.
    several = oai.completions.create(**ask, prompt=["a", "b"], n=2)
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    chunks = list(oai.completions.create(**ask, prompt=["a", "b"], n=2, stream=True))
    streamed = ["", "", "", ""]
    for c in chunks:
        for choice in c.choices:
            streamed[choice.index] += choice.text
    assert streamed == [c.text for c in several.choices]


def test_openai_penalties_and_logit_bias(oai, gateway):
    tgi = text_generation.Client(gateway.url, timeout=60)
    tokens = tgi.generate("Subject: Meet", max_new_tokens=6).details.tokens
    token = next(t for t in tokens if t.text.strip() and not t.special)
    ask = dict(model=tgi_model(oai), prompt="Subject: Meet", max_tokens=3, temperature=0)
    forced = oai.completions.create(**ask, logit_bias={str(token.id): 100})
    assert forced.choices[0].text == token.text * 3
    first = tokens[0]
    avoided = oai.completions.create(**ask, logit_bias={str(first.id): -100}, logprobs=0)
    assert avoided.choices[0].logprobs.tokens[0] != first.text
    # Penalties apply (different text from the plain answer) and are range-checked.
    plain = oai.completions.create(**{**ask, "max_tokens": 12}).choices[0].text
    penalized = oai.completions.create(
        **{**ask, "max_tokens": 12}, frequency_penalty=2.0, presence_penalty=2.0
    )
    assert penalized.choices[0].text != plain
    assert tgi.generate(
        "Subject: Meet", max_new_tokens=12, frequency_penalty=2.0
    ).generated_text == (
        oai.completions.create(**{**ask, "max_tokens": 12}, frequency_penalty=2.0).choices[0].text
    )
    with pytest.raises(openai.BadRequestError, match="presence_penalty"):
        oai.completions.create(**ask, presence_penalty=2.5)
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        oai.completions.create(**ask, logit_bias={"99999999": 1})


def tgi_model(oai) -> str:
    """The base model's id as /v1/models lists it."""
    return next(m.id for m in oai.models.list() if getattr(m, "parent", None) is None)


def test_openai_response_format(oai):
    ask = dict(model="emails", messages=[{"role": "user", "content": "Hi"}], max_tokens=60)
    reply = oai.chat.completions.create(
        **ask,
        response_format={"type": "json_schema", "json_schema": {"name": "o", "schema": SCHEMA}},
    )
    assert set(json.loads(reply.choices[0].message.content)) == {"ok"}
    # Any object: a random model may still be inside a key when max_tokens runs out.
    choice = oai.chat.completions.create(**ask, response_format={"type": "json_object"}).choices[0]
    assert choice.message.content.startswith("{")
    assert choice.finish_reason == "length" or isinstance(json.loads(choice.message.content), dict)
    with pytest.raises(openai.BadRequestError, match="json_schema"):
        oai.chat.completions.create(**ask, response_format={"type": "json_schema"})
    with pytest.raises(openai.BadRequestError, match="response_format"):
        oai.chat.completions.create(**ask, response_format={"type": "yaml"})


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"unit": {"enum": ["C", "F"]}},
                "required": ["unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"utc": {"type": "boolean"}},
                "required": ["utc"],
                "additionalProperties": False,
            },
        },
    },
]


def test_openai_forced_tool_calls(oai):
    ask = dict(model="emails", messages=[{"role": "user", "content": "Hi"}], max_tokens=60)
    reply = oai.chat.completions.create(**ask, tools=TOOLS, tool_choice="required")
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert arguments["unit"] in ("C", "F")
    else:
        assert call.function.name == "get_time" and isinstance(arguments["utc"], bool)
    named = {"type": "function", "function": {"name": "get_time"}}
    chunks = list(oai.chat.completions.create(**ask, tools=TOOLS, tool_choice=named, stream=True))
    calls = [d for c in chunks for ch in c.choices for d in ch.delta.tool_calls or []]
    assert [c.function.name for c in calls] == ["get_time"]
    assert set(json.loads(calls[0].function.arguments)) == {"utc"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # The call and its result go back as history; "none" answers in text.
    history = [
        *ask["messages"],
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "21 C"},
    ]
    text = oai.chat.completions.create(
        **{**ask, "messages": history}, tools=TOOLS, tool_choice="none"
    )
    assert text.choices[0].message.tool_calls is None
    # auto (the default with tools), as TGI does it: a tool call, or text as the content
    # of a no_tool call.
    for _ in range(3):
        auto = oai.chat.completions.create(**ask, tools=TOOLS, temperature=1.0).choices[0]
        if auto.message.tool_calls:
            assert auto.finish_reason == "tool_calls" and auto.message.content is None
            assert auto.message.tool_calls[0].function.name in ("get_weather", "get_time")
        else:
            assert isinstance(auto.message.content, str) and auto.finish_reason in (
                "stop",
                "length",
            )
    reserved = {**TOOLS[0], "function": {**TOOLS[0]["function"], "name": "no_tool"}}
    for bad, message in [
        ({"tools": [reserved]}, "the tool name 'no_tool' is reserved"),
        ({"tools": TOOLS, "tool_choice": {**named, "function": {"name": "x"}}}, "not one of"),
        ({"tool_choice": "required"}, "tool_choice needs tools"),
    ]:
        with pytest.raises(openai.BadRequestError, match=message):
            oai.chat.completions.create(**ask, **bad)


def test_openai_errors(oai):
    with pytest.raises(openai.NotFoundError, match="ghost"):
        oai.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        list(oai.completions.create(model="ghost", prompt="x", stream=True))
    with pytest.raises(openai.BadRequestError, match="not supported by this server: suffix"):
        oai.completions.create(model="emails", prompt="x", suffix="y")
