"""The TGI API (and LoRAX's additions) in front of the real inference service on
tiny_llama, driven by the real `text-generation`, `lorax-client` and `huggingface_hub`
clients and by httpx."""

import json

import httpx
import pytest
import text_generation
from text_generation.errors import ValidationError

from tests.support.services import SCHEMA


def _sse(response: httpx.Response) -> list:
    return [
        json.loads(line.removeprefix("data:")) if line != "data:[DONE]" else "[DONE]"
        for line in response.iter_lines()
        if line.startswith("data:")
    ]


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
