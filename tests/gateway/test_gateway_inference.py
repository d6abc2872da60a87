"""The gateway in front of the real inference service on tiny_llama, driven by the real
`text-generation` and `openai` clients and by httpx."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import text_generation
from text_generation.errors import ValidationError

from inference_service.server import serve
from inference_service.settings import InferenceSettings
from tests.gateway.conftest import gateway_before, start_gateway
from tests.inference.conftest import count_requests, make_adapter, promtool_check
from tuneyard.local_stack import free_port


def _inference(tiny_llama, adapters_dir, port: int = 0, **overrides):
    settings = dict(
        base_model=str(tiny_llama),
        adapters_dir=adapters_dir,
        device="cpu",
        inference_port=port,
        inference_metrics_port=0,
        max_batch_wait_ms=5,
        default_max_new_tokens=8,
    )
    settings.update(overrides)
    return serve(InferenceSettings(**settings))


@pytest.fixture(scope="module")
def adapters_dir(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    make_adapter(tiny_llama, folder, "emails")
    return folder


@pytest.fixture(scope="module")
def inference(tiny_llama, adapters_dir):
    running = _inference(tiny_llama, adapters_dir)
    yield running
    running.stop(grace=0)


@pytest.fixture(scope="module")
def gateway(inference):
    running = gateway_before(inference.port)
    yield running
    running.stop()


@pytest.fixture
def http(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


def _sse(response: httpx.Response) -> list:
    return [
        json.loads(line.removeprefix("data:")) if line != "data:[DONE]" else "[DONE]"
        for line in response.iter_lines()
        if line.startswith("data:")
    ]


# --- TGI --------------------------------------------------------------------------------
def test_text_generation_client_generate(gateway):
    client = text_generation.Client(gateway.url, timeout=60)
    response = client.generate("Subject: Meet", max_new_tokens=5, decoder_input_details=True)
    details = response.details
    assert details.finish_reason in ("length", "eos_token")
    assert 1 <= details.generated_tokens <= 5
    assert len(details.tokens) == details.generated_tokens
    assert "".join(t.text for t in details.tokens if not t.special) == response.generated_text
    assert len(details.prefill) >= 2 and details.prefill[0].logprob is None
    assert details.prefill[1].logprob is not None and details.prefill[1].logprob <= 0
    stop = next(t.text for t in details.tokens[1:] if t.text.strip() and not t.special)
    stopped = client.generate("Subject: Meet", max_new_tokens=5, stop_sequences=[stop])
    assert stopped.details.finish_reason == "stop_sequence"


def test_text_generation_client_stream_matches_generate(gateway):
    client = text_generation.Client(gateway.url, timeout=60)
    events = list(client.generate_stream("Subject: Meet", max_new_tokens=6))
    last = events[-1]
    assert last.details is not None and last.generated_text is not None
    assert all(e.details is None and e.generated_text is None for e in events[:-1])
    assert last.details.generated_tokens == len(events)
    assert "".join(e.token.text for e in events if not e.token.special) == last.generated_text
    assert client.generate("Subject: Meet", max_new_tokens=6).generated_text == last.generated_text


def test_text_generation_client_top_n_tokens(gateway):
    client = text_generation.Client(gateway.url, timeout=60)
    response = client.generate("Subject: Meet", max_new_tokens=4, top_n_tokens=3)
    top = response.details.top_tokens
    assert len(top) == len(response.details.tokens)
    for token, alternatives in zip(response.details.tokens, top, strict=True):
        assert len(alternatives) == 3
        assert alternatives[0].id == token.id  # greedy: the best one was chosen
        assert [a.logprob for a in alternatives] == sorted(
            (a.logprob for a in alternatives), reverse=True
        )
    events = list(client.generate_stream("Subject: Meet", max_new_tokens=4, top_n_tokens=2))
    assert [[a.id for a in e.top_tokens] for e in events] == [
        [a.id for a in alternatives[:2]] for alternatives in top
    ]
    assert client.generate("Subject: Meet", max_new_tokens=2).details.top_tokens is None
    with pytest.raises(ValidationError, match="top_n_tokens must be between 0 and 20"):
        client.generate("hi", top_n_tokens=21)


def test_text_generation_client_typical_p_is_seeded(gateway):
    client = text_generation.Client(gateway.url, timeout=60)
    ask = dict(max_new_tokens=6, do_sample=True, typical_p=0.5, seed=3)
    first = client.generate("Subject: Meet", **ask)
    assert first.details.seed == 3
    assert client.generate("Subject: Meet", **ask).generated_text == first.generated_text


SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


def test_text_generation_client_grammar(gateway):
    from text_generation.types import Grammar, GrammarType

    client = text_generation.Client(gateway.url, timeout=60)
    answer = client.generate(
        "Answer:", max_new_tokens=60, grammar=Grammar(type=GrammarType.Json, value=SCHEMA)
    )
    assert set(json.loads(answer.generated_text)) == {"ok"}
    answer = client.generate(
        "Answer:", max_new_tokens=10, grammar=Grammar(type=GrammarType.Regex, value="(yes|no)")
    )
    assert answer.generated_text in ("yes", "no")
    with pytest.raises(ValidationError, match="unclosed group"):
        client.generate("Answer:", grammar=Grammar(type=GrammarType.Regex, value="("))


def test_best_of(gateway, oai, http):
    """TGI: the most likely of best_of samples (highest sum of logprobs), the others in
    best_of_sequences; OpenAI: the n of best_of with the highest mean logprob."""
    client = text_generation.Client(gateway.url, timeout=60)
    answer = client.generate("Subject: Meet", max_new_tokens=5, do_sample=True, best_of=3)
    others = answer.details.best_of_sequences
    assert len(others) == 2
    best = sum(t.logprob for t in answer.details.tokens)
    assert all(best >= sum(t.logprob for t in o.tokens) for o in others)
    stream = {"inputs": "x", "parameters": {"best_of": 2, "do_sample": True}}
    refused = http.post("/generate_stream", json=stream)
    assert refused.status_code == 422 and "best_of" in refused.json()["error"]
    assert http.get("/info").json()["max_best_of"] == 4

    ask = dict(model="emails", prompt="Subject:", max_tokens=5, temperature=1.0, seed=5)
    candidates = [oai.completions.create(**{**ask, "seed": 5 + i}, logprobs=0) for i in range(3)]
    chosen = oai.completions.create(**ask, best_of=3, n=2, logprobs=0)

    def mean(choice) -> float:
        return sum(choice.logprobs.token_logprobs) / len(choice.logprobs.token_logprobs)

    ranked = sorted((c.choices[0] for c in candidates), key=mean, reverse=True)
    assert [c.text for c in chosen.choices] == [c.text for c in ranked[:2]]
    assert chosen.usage.completion_tokens == sum(c.usage.completion_tokens for c in candidates)


def test_tokenize(http, tiny_llama):
    from transformers import AutoTokenizer

    text = "Subject: Meet the lamp"
    tokens = http.post("/tokenize", json={"inputs": text}).json()
    expected = AutoTokenizer.from_pretrained(tiny_llama)(text)["input_ids"]
    assert [t["id"] for t in tokens] == expected
    assert all(t["text"] == text[t["start"] : t["stop"]] for t in tokens)
    assert "".join(t["text"] for t in tokens) == text
    empty = http.post("/tokenize", json={"inputs": "", "fields": {"product": "x"}})
    assert empty.status_code == 422 and "inputs, not fields" in empty.json()["error"]


def test_text_generation_client_errors(gateway):
    client = text_generation.Client(gateway.url, timeout=60)
    with pytest.raises(ValidationError, match="max_new_tokens"):
        # The client checks nothing about max_new_tokens itself: the gateway answers 422.
        client.generate("hi", max_new_tokens=0)
    with pytest.raises(ValidationError, match="not supported by this server: watermark"):
        client.generate("hi", watermark=True)


# Every client's response models parse the answers; counts checked against the tokenizer.
PROMPT = "Subject: Meet"


@pytest.fixture(scope="module")
def prompt_length(tiny_llama) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tiny_llama)(PROMPT)["input_ids"])


def _finish_reason(generated_tokens: int, max_new_tokens: int) -> str:
    return "length" if generated_tokens == max_new_tokens else "eos_token"


def test_lorax_client_generate_with_adapter(gateway, http, prompt_length):
    import lorax

    client = lorax.Client(gateway.url, timeout=60)
    answer = client.generate(
        PROMPT, adapter_id="emails", max_new_tokens=6, details=True, decoder_input_details=True
    )
    details = answer.details
    assert details.prompt_tokens == prompt_length == len(details.prefill)
    assert 1 <= details.generated_tokens <= 6 and len(details.tokens) == details.generated_tokens
    assert details.finish_reason == _finish_reason(details.generated_tokens, 6)
    assert "".join(t.text for t in details.tokens if not t.special) == answer.generated_text
    # The adapter answered: as over plain HTTP with it, not as the base model.
    ask = {"inputs": PROMPT, "parameters": {"adapter_id": "emails", "max_new_tokens": 6}}
    assert http.post("/generate", json=ask).json()["generated_text"] == answer.generated_text
    assert client.generate(PROMPT, max_new_tokens=6).generated_text != answer.generated_text

    events = list(client.generate_stream(PROMPT, adapter_id="emails", max_new_tokens=6))
    last = events[-1]
    assert all(e.details is None and e.generated_text is None for e in events[:-1])
    assert last.generated_text == answer.generated_text
    assert last.details.prompt_tokens == prompt_length
    assert last.details.generated_tokens == len(events) == details.generated_tokens
    assert last.details.finish_reason == details.finish_reason


def test_lorax_client_best_of(gateway, prompt_length):
    import lorax

    client = lorax.Client(gateway.url, timeout=60)
    answer = client.generate(PROMPT, max_new_tokens=3, do_sample=True, best_of=2)
    assert answer.details.prompt_tokens == prompt_length
    (other,) = answer.details.best_of_sequences
    assert 1 <= other.generated_tokens <= 3 and len(other.tokens) == other.generated_tokens
    assert other.finish_reason == _finish_reason(other.generated_tokens, 3)


def test_lorax_client_alternative_tokens(gateway, http):
    import lorax

    client = lorax.Client(gateway.url, timeout=60)
    answer = client.generate(PROMPT, max_new_tokens=3, return_k_alternatives=2)
    for token in answer.details.tokens:
        assert len(token.alternative_tokens) == 2
        assert token.alternative_tokens[0].id == token.id  # greedy: the best one was chosen
        assert token.alternative_tokens[0].logprob >= token.alternative_tokens[1].logprob
    assert client.generate(PROMPT, max_new_tokens=3).details.tokens[0].alternative_tokens is None
    # With TGI's top_n_tokens too, each answer takes as many as it asked for.
    ask = {"max_new_tokens": 3, "details": True, "top_n_tokens": 3, "return_k_alternatives": 1}
    details = http.post("/generate", json={"inputs": PROMPT, "parameters": ask}).json()["details"]
    for token, top in zip(details["tokens"], details["top_tokens"], strict=True):
        assert len(top) == 3 and token["alternative_tokens"] == [
            {key: top[0][key] for key in ("id", "text", "logprob")}
        ]


def test_text_generation_client_details(gateway, prompt_length):
    client = text_generation.Client(gateway.url, timeout=60)
    answer = client.generate(PROMPT, max_new_tokens=4, decoder_input_details=True)
    assert len(answer.details.prefill) == prompt_length
    assert answer.details.finish_reason == _finish_reason(answer.details.generated_tokens, 4)
    last = list(client.generate_stream(PROMPT, max_new_tokens=4))[-1]
    assert last.details.generated_tokens == answer.details.generated_tokens
    assert last.details.finish_reason == answer.details.finish_reason


def test_huggingface_hub_text_generation(gateway, prompt_length):
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=gateway.url, timeout=60)
    ask = dict(adapter_id="emails", max_new_tokens=4)
    answer = client.text_generation(
        PROMPT, details=True, decoder_input_details=True, top_n_tokens=2, **ask
    )
    details = answer.details
    assert len(details.prefill) == prompt_length
    assert 1 <= details.generated_tokens <= 4 and len(details.tokens) == details.generated_tokens
    assert details.finish_reason == _finish_reason(details.generated_tokens, 4)
    assert [len(top) for top in details.top_tokens] == [2] * details.generated_tokens
    assert client.text_generation(PROMPT, **ask) == answer.generated_text

    events = list(client.text_generation(PROMPT, details=True, stream=True, **ask))
    assert [e.index for e in events] == list(range(1, len(events) + 1))
    last = events[-1]
    assert last.generated_text == answer.generated_text
    assert last.details.input_length == prompt_length
    assert last.details.generated_tokens == len(events) == details.generated_tokens
    assert last.details.finish_reason == details.finish_reason
    texts = list(client.text_generation(PROMPT, stream=True, **ask))
    assert texts == [e.token.text for e in events]


def test_generate_with_adapter_and_unknown_adapter(http):
    def generate(adapter_id, path="/generate"):
        return http.post(
            path,
            json={
                "inputs": "Subject: Meet",
                "parameters": {
                    "adapter_id": adapter_id,
                    "max_new_tokens": 6,
                    "details": True,
                    "seed": None,
                },
            },
        )

    base, tuned, pinned = generate(None), generate("emails"), generate("emails@1")
    assert base.status_code == tuned.status_code == pinned.status_code == 200
    assert tuned.json() == pinned.json()
    assert tuned.json()["generated_text"] != base.json()["generated_text"]
    assert set(tuned.json()["details"]) == {
        "finish_reason",
        "prompt_tokens",
        "generated_tokens",
        "seed",
        "prefill",
        "tokens",
    }
    for path in ("/generate", "/generate_stream", "/"):
        response = generate("nope", path)
        assert response.status_code == 404, response.text
        assert response.json()["error_type"] == "not_found"
        assert "nope" in response.json()["error"]
    response = generate("emails@9")
    assert response.status_code == 404 and "no version 9" in response.json()["error"]
    response = generate("../etc")
    assert response.status_code == 422 and response.json()["error_type"] == "validation"


def test_generate_without_details_and_with_fields(http):
    body = http.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}})
    assert list(body.json()) == ["generated_text"]
    # Template fields are rendered with the adapter's own template by the inference service.
    response = http.post(
        "/generate",
        json={
            "fields": {"product": "Lamp", "description": "A lamp."},
            "parameters": {"adapter_id": "emails", "max_new_tokens": 3},
        },
    )
    assert response.status_code == 200, response.text
    response = http.post("/generate", json={"inputs": "x", "fields": {"product": "Lamp"}})
    assert response.status_code == 422 and "not both" in response.json()["error"]


def test_compat_route(http):
    response = http.post("/", json={"inputs": "hi", "parameters": {"max_new_tokens": 3}})
    assert response.status_code == 200
    assert isinstance(response.json(), list) and len(response.json()) == 1
    with http.stream(
        "POST", "/", json={"inputs": "hi", "stream": True, "parameters": {"max_new_tokens": 3}}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse(response)
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    assert set(events[0]) == {"index", "token", "generated_text", "details"}
    assert events[-1]["details"]["generated_tokens"] == len(events)
    assert events[-1]["details"]["input_length"] > 0


def test_info_and_health(http, tiny_llama):
    info = http.get("/info").json()
    assert info["model_id"] == "tiny-llama"  # the folder's name, never its path
    assert info["model_device_type"] == "cpu" and info["max_input_tokens"] == 1024
    assert info["max_total_tokens"] == 2048 and info["model_pipeline_tag"] == "text-generation"
    assert http.get("/health").status_code == 200


# --- adapters ----------------------------------------------------------------------------
def test_adapters_list_load_unload(http):
    unloaded = http.post("/v1/adapters/emails/unload")
    assert unloaded.status_code == 200 and unloaded.json()["loaded"] is False
    loaded = http.post("/v1/adapters/emails/load").json()
    assert loaded["id"] == "emails@1" and loaded["loaded"] is True and loaded["rank"] == 4
    listed = http.get("/v1/adapters").json()
    assert listed["object"] == "list"
    (entry,) = [a for a in listed["data"] if a["name"] == "emails"]
    assert entry["loaded"] and entry["size"] > 0 and entry["version"] == "1"
    assert entry["state"] == "loaded"
    assert entry["base_model"] == "tiny-llama"  # the served name, not the folder's path
    response = http.post("/v1/adapters/ghost/load")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert "/" not in response.json()["error"]["message"]  # no server path


# --- OpenAI ------------------------------------------------------------------------------
@pytest.fixture
def oai(gateway):
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


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


# --- metrics -----------------------------------------------------------------------------
def test_metrics_after_generation(gateway, http):
    client = text_generation.Client(gateway.url, timeout=60)
    list(client.generate_stream("Subject:", max_new_tokens=3))
    http.post(
        "/generate",
        json={"inputs": "x", "parameters": {"adapter_id": "emails", "max_new_tokens": 2}},
    )
    assert http.post("/v1/adapters/emails@1/load").status_code == 200
    text = http.get("/metrics").text
    assert 'tuneyard_gateway_time_to_first_token_seconds_count{adapter="(base)"}' in text
    assert 'tuneyard_gateway_generated_tokens_total{adapter="emails"}' in text
    assert 'tuneyard_gateway_adapter_load_duration_seconds_count{adapter="emails"}' in text
    # The scrape itself is the one request in flight.
    assert "tuneyard_gateway_requests_in_flight 1.0" in text
    # The text-generation client posts to `/`.
    assert 'tuneyard_gateway_requests_total{method="POST",route="/",status="200"}' in text
    promtool_check(text)


# --- a backend that goes away and comes back ---------------------------------------------
def test_inference_down_then_back(tiny_llama, adapters_dir):
    port = free_port()
    running = _inference(tiny_llama, adapters_dir, port=port)
    gateway = start_gateway(
        inference_addr=f"127.0.0.1:{port}", connect_timeout_s=1.0, reconnect_backoff_max_s=0.5
    )
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            body = {"inputs": "hi", "parameters": {"max_new_tokens": 2}}
            assert http.post("/generate", json=body).status_code == 200
            running.stop(grace=0)
            start = time.monotonic()
            response = http.post("/generate", json=body)
            assert response.status_code == 503 and response.json()["error_type"] == "unavailable"
            assert time.monotonic() - start < 1.5
            assert http.get("/health").status_code == 503
            running = _inference(tiny_llama, adapters_dir, port=port)
            deadline = time.monotonic() + 5
            while (status := http.post("/generate", json=body).status_code) != 200:
                assert status == 503 and time.monotonic() < deadline
                time.sleep(0.1)
            assert http.get("/health").status_code == 200
    finally:
        gateway.stop()
        running.stop(grace=0)


def _inference_requests(running, status: str) -> float:
    return count_requests(running.metrics.registry, status)


def test_client_disconnect_cancels_generation(inference, http):
    before = _inference_requests(inference, "cancelled")
    body = {"inputs": "Subject:", "parameters": {"max_new_tokens": 1500}}
    with http.stream("POST", "/generate_stream", json=body) as response:
        first = next(line for line in response.iter_lines() if line.startswith("data:"))
        assert json.loads(first.removeprefix("data:"))["index"] == 1
    deadline = time.monotonic() + 10
    while _inference_requests(inference, "cancelled") == before:
        assert time.monotonic() < deadline, "the inference service kept generating"
        time.sleep(0.05)


def test_queue_full_is_429_overloaded(tiny_llama, adapters_dir):
    running = _inference(tiny_llama, adapters_dir, max_queue=1, max_batch_size=1)
    gateway = start_gateway(inference_addr=f"127.0.0.1:{running.port}")
    body = {"inputs": "Subject:", "parameters": {"max_new_tokens": 50}}
    try:
        # One request generating and one waiting fill the engine: of four sent at once, at
        # least one is turned away.
        with httpx.Client(base_url=gateway.url, timeout=60) as http, ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: http.post("/generate", json=body), range(4)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses[0] == 200 and statuses[-1] == 429 and set(statuses) == {200, 429}
        for response in responses:
            if response.status_code == 429:
                assert response.json()["error_type"] == "overloaded"
                assert "queue is full" in response.json()["error"]
    finally:
        gateway.stop()
        running.stop(grace=0)


# --- hot reload under load -----------------------------------------------------------------
def test_hot_reload_under_concurrent_load(gateway, tiny_llama, adapters_dir):
    """Clients keep generating with `reload` while its version 2 is published: no request
    fails, each answer is version 1's or version 2's, and every request sent after the
    publication gets version 2."""
    make_adapter(tiny_llama, adapters_dir, "reload", seed=4)
    body = {"inputs": "Subject: Meet", "parameters": {"max_new_tokens": 6}}

    def generate(http, adapter_id):
        request = {**body, "parameters": {**body["parameters"], "adapter_id": adapter_id}}
        return http.post("/generate", json=request)

    published_at = None
    results = []  # (sent at, status, text)

    def client(_):
        with httpx.Client(base_url=gateway.url, timeout=60) as http:
            after = 0
            while after < 3:
                sent = time.monotonic()
                response = generate(http, "reload")
                text = response.json().get("generated_text")
                results.append((sent, response.status_code, text))
                if published_at is not None and sent > published_at:
                    after += 1

    with ThreadPoolExecutor(6) as pool:
        running = pool.map(client, range(6))
        deadline = time.monotonic() + 30
        while len(results) < 12:
            assert time.monotonic() < deadline, "no load"
            time.sleep(0.01)
        make_adapter(tiny_llama, adapters_dir, "reload", seed=5)
        published_at = time.monotonic()
        list(running)

    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        v1 = generate(http, "reload@1").json()["generated_text"]
        v2 = generate(http, "reload@2").json()["generated_text"]
    assert v1 != v2
    assert {status for _, status, _ in results} == {200}
    assert {text for _, _, text in results} <= {v1, v2}
    after = [text for sent, _, text in results if sent > published_at]
    assert len(after) >= 18 and set(after) == {v2}
    assert sum(text == v1 for sent, _, text in results if sent < published_at) >= 12
