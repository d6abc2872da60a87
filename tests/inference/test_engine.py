"""The engine against PEFT's own generate: same greedy tokens, alone and in mixed batches."""

import json
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from inference_service.params import GenerateInput, Parameters
from inference_service.sequence import EOS_TOKEN, LENGTH, STOP_SEQUENCE
from tests.support.adapters import make_adapter
from tests.support.engines import make_engine, submit_together
from tuneyard.adapter_store import AdapterVersion
from tuneyard.errors import InvalidArgument

PROMPTS = ["Hi there, our new product", "The quick brown fox", "Order today and save"]


def peft_greedy(base_path, version, prompt: str, n: int) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    if version is not None:
        model = PeftModel.from_pretrained(model, version.path)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def greedy(engine, prompt: str, adapter_id: str = "", n: int = 8, **params) -> list[int]:
    params = Parameters(max_new_tokens=n, details=True, **params)
    result = engine.submit(
        GenerateInput(inputs=prompt, adapter_id=adapter_id, parameters=params)
    ).result(timeout=60)
    return [t.id for t in result.details.tokens]


def test_greedy_tokens_equal_peft(engine, tiny_llama, two_adapters):
    alpha, beta = two_adapters
    for version in (None, alpha, beta):
        expected = peft_greedy(tiny_llama, version, PROMPTS[0], 8)
        got = greedy(engine, PROMPTS[0], version.name if version else "")
        assert got == expected, version
    # The adapters really change the output, so the comparison above means something.
    assert greedy(engine, PROMPTS[0], "alpha") != greedy(engine, PROMPTS[0])


def test_mixed_batch_rows_equal_each_alone(engine, two_adapters):
    cases = [(p, a) for p in PROMPTS for a in ("alpha", "beta", "")]
    alone = [greedy(engine, p, a) for p, a in cases]
    _, results, batch_sizes = submit_together(engine, cases, 8)
    together = [[t.id for t in r.details.tokens] for r in results]
    assert max(batch_sizes) > 1, "the requests were not batched"
    assert together == alone


def test_dora_and_rslora_in_a_mixed_batch_equal_peft(engine, tiny_llama, dora_and_rslora):
    """Every row of one batch mixing DoRA, rsLoRA, plain LoRA and base rows has PEFT's
    greedy tokens for its own adapter."""
    cases = [
        (PROMPTS[i % 3], name)
        for i, name in enumerate(("dora", "alpha", "", "rslora", "dora-rs", "dora", ""))
    ]
    expected = {
        (p, name): peft_greedy(
            tiny_llama, engine.adapters.store.resolve(name) if name else None, p, 8
        )
        for p, name in set(cases)
    }
    _, results, batch_sizes = submit_together(engine, cases, 8)
    together = [[t.id for t in r.details.tokens] for r in results]
    assert max(batch_sizes) > 1, "the requests were not batched"
    assert together == [expected[case] for case in cases]
    # DoRA's magnitudes change the tokens: the same A and B as plain LoRA give others.
    assert expected[(PROMPTS[0], "dora")] != peft_greedy_as_plain(
        tiny_llama, engine.adapters.store.resolve("dora"), PROMPTS[0], 8
    )


def peft_greedy_as_plain(base_path, version, prompt: str, n: int) -> list[int]:
    """PEFT's greedy tokens for a DoRA version's A and B without its magnitudes."""
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as tmp:
        plain = AdapterVersion(version.name, version.version, Path(tmp))
        config = json.loads((version.path / "adapter_config.json").read_text())
        (plain.path / "adapter_config.json").write_text(json.dumps({**config, "use_dora": False}))
        tensors = load_file(version.path / "adapter_model.safetensors")
        save_file(
            {k: v for k, v in tensors.items() if "magnitude" not in k},
            plain.path / "adapter_model.safetensors",
        )
        return peft_greedy(base_path, plain, prompt, n)


def test_rows_finish_independently(engine):
    seqs = [
        engine.submit(GenerateInput(inputs=PROMPTS[0], parameters=Parameters(max_new_tokens=n)))
        for n in (2, 9, 5)
    ]
    results = [s.result(60) for s in seqs]
    assert [r.details.generated_tokens for r in results] == [2, 9, 5]
    assert all(r.details.finish_reason == LENGTH for r in results)
    assert greedy(engine, PROMPTS[0], n=9)[:5] == greedy(engine, PROMPTS[0], n=5)


def test_bloom_adapter(tiny_bloom, tmp_path):
    version = make_adapter(tiny_bloom, tmp_path, "bloomy", target_modules=("query_key_value",))
    engine = make_engine(tiny_bloom, tmp_path)
    try:
        got = greedy(engine, PROMPTS[1], "bloomy")
        assert got == peft_greedy(tiny_bloom, version, PROMPTS[1], 8)
        assert got != greedy(engine, PROMPTS[1])
    finally:
        engine.stop()


def test_merged_mode_equals_unmerged(tiny_llama, adapters_dir, engine, two_adapters):
    merged = make_engine(tiny_llama, adapters_dir, merged_adapter="beta")
    try:
        assert greedy(merged, PROMPTS[2], "beta") == greedy(engine, PROMPTS[2], "beta")
        result = merged.submit(GenerateInput(inputs="x", adapter_id="beta@1")).result(60)
        assert result.details.adapter == "beta@1"
        from tuneyard.errors import FailedPrecondition

        for other in ("", "alpha", "beta@2"):
            with pytest.raises(FailedPrecondition, match="merged"):
                merged.submit(GenerateInput(inputs="x", adapter_id=other))
    finally:
        merged.stop()


def test_merged_dora_equals_peft(tiny_llama, adapters_dir, dora_and_rslora):
    """Merged as PEFT merges DoRA: mag * (W + scaling B A), row by row."""
    merged = make_engine(tiny_llama, adapters_dir, merged_adapter="dora-rs")
    try:
        version = merged.adapters.store.resolve("dora-rs")
        assert greedy(merged, PROMPTS[1], "dora-rs") == peft_greedy(
            tiny_llama, version, PROMPTS[1], 8
        )
    finally:
        merged.stop()


def test_streaming_text_equals_generate(engine, two_adapters):
    params = Parameters(max_new_tokens=12)
    whole = engine.submit(
        GenerateInput(inputs=PROMPTS[1], adapter_id="alpha", parameters=params)
    ).result(60)
    chunks = list(
        engine.submit(
            GenerateInput(inputs=PROMPTS[1], adapter_id="alpha", parameters=params)
        ).stream(60)
    )
    tokens = [t for c in chunks for t in c.tokens]
    assert len(tokens) == 12
    assert all(c.details is None for c in chunks[:-1])
    assert "".join(t.text for t in tokens if not t.special) == whole.generated_text
    assert chunks[-1].generated_text == whole.generated_text


def test_stop_sequence_ends_text(engine):
    text = (
        engine.submit(GenerateInput(inputs=PROMPTS[2], parameters=Parameters(max_new_tokens=10)))
        .result(60)
        .generated_text
    )
    stop = text[3:5]
    result = engine.submit(
        GenerateInput(
            inputs=PROMPTS[2],
            parameters=Parameters(max_new_tokens=10, stop=["never appears", stop]),
        )
    ).result(60)
    assert result.details.finish_reason == STOP_SEQUENCE
    assert result.generated_text == text[: text.index(stop) + len(stop)]


def test_eos_token_stops(tiny_llama, adapters_dir):
    engine = make_engine(tiny_llama, adapters_dir)
    try:
        first = greedy(engine, PROMPTS[0], n=1)[0]
        engine.eos_ids = {first}  # the model's first greedy token now ends the request
        result = engine.submit(
            GenerateInput(inputs=PROMPTS[0], parameters=Parameters(max_new_tokens=5, details=True))
        ).result(60)
        assert result.details.finish_reason == EOS_TOKEN
        assert result.details.generated_tokens == 1 and result.generated_text == ""
        assert result.details.tokens[0].special
    finally:
        engine.stop()


def test_details_and_prefill(engine):
    prompt_ids = engine.tokenizer(PROMPTS[0])["input_ids"]
    result = engine.submit(
        GenerateInput(
            inputs=PROMPTS[0],
            parameters=Parameters(max_new_tokens=4, details=True, decoder_input_details=True),
        )
    ).result(60)
    d = result.details
    assert (d.generated_tokens, d.prompt_tokens, d.seed) == (4, len(prompt_ids), None)
    assert [t.id for t in d.prefill] == prompt_ids
    assert torch.isnan(torch.tensor(d.prefill[0].logprob))
    assert all(t.logprob < 0 for t in d.prefill[1:] + d.tokens)
    assert "".join(t.text for t in d.tokens) == result.generated_text
    plain = engine.submit(
        GenerateInput(inputs=PROMPTS[0], parameters=Parameters(max_new_tokens=4))
    ).result(60)
    assert plain.details.tokens == [] and plain.details.prefill == []


def test_a_continuation_is_scored_as_the_engine_generated_it(engine, two_adapters):
    """continuation_ids, teacher-forced: the prefill of prompt + the engine's own greedy
    tokens gives each token the log-probability and the top-1 it had when generated."""
    params = Parameters(max_new_tokens=6, details=True, top_n_tokens=1)
    generated = engine.submit(
        GenerateInput(inputs=PROMPTS[1], adapter_id="alpha", parameters=params)
    ).result(60)
    ids = [t.id for t in generated.details.tokens]
    scoring = Parameters(max_new_tokens=1, decoder_input_details=True, top_n_tokens=2)
    scored = engine.submit(
        GenerateInput(
            inputs=PROMPTS[1], adapter_id="alpha", continuation_ids=ids, parameters=scoring
        )
    ).result(60)
    prompt_ids = engine.tokenizer(PROMPTS[1])["input_ids"]
    prefill = scored.details.prefill
    assert [t.id for t in prefill] == prompt_ids + ids
    assert scored.details.prompt_tokens == len(prompt_ids) + len(ids)
    tail = prefill[len(prompt_ids) :]
    assert [t.logprob for t in tail] == pytest.approx(
        [t.logprob for t in generated.details.tokens], abs=1e-4
    )
    assert [t.top[0].id for t in tail] == ids and all(len(t.top) == 2 for t in tail)
    assert prefill[0].top == []
    with pytest.raises(InvalidArgument, match=r"continuation_ids names tokens outside") as bad:
        engine.submit(GenerateInput(inputs="x", continuation_ids=[3, 10**6]))
    assert bad.value.param == "continuation_ids"


def test_top_n_tokens(engine):
    params = Parameters(max_new_tokens=4, details=True, top_n_tokens=3)
    result = engine.submit(GenerateInput(inputs=PROMPTS[0], parameters=params)).result(60)
    for token in result.details.tokens:
        assert len(token.top) == 3
        logprobs = [t.logprob for t in token.top]
        assert logprobs == sorted(logprobs, reverse=True) and all(lp <= 0 for lp in logprobs)
        # Greedy: the chosen token is the best alternative, with the same logprob.
        assert token.top[0].id == token.id
        assert token.top[0].logprob == pytest.approx(token.logprob)
    plain = greedy(engine, PROMPTS[0], n=4)
    assert [t.id for t in result.details.tokens] == plain  # asking for them changes nothing
    with pytest.raises(InvalidArgument, match="top_n_tokens must be between 0 and 20"):
        engine.submit(GenerateInput(inputs="x", parameters=Parameters(top_n_tokens=21)))


def test_logit_bias_steers_and_unknown_tokens_are_refused(engine):
    plain = greedy(engine, PROMPTS[0], n=3)
    assert greedy(engine, PROMPTS[0], n=3, logit_bias={7: 100.0}) == [7, 7, 7]
    assert greedy(engine, PROMPTS[0], n=1, logit_bias={plain[0]: -100.0}) != plain[:1]
    with pytest.raises(InvalidArgument, match="outside the vocabulary"):
        engine.submit(GenerateInput(inputs="x", parameters=Parameters(logit_bias={10**6: 1.0})))


def test_sampling_is_seeded(engine):
    def sample(seed):
        return greedy(
            engine,
            PROMPTS[0],
            n=10,
            do_sample=True,
            temperature=1.5,
            top_k=50,
            top_p=0.95,
            seed=seed,
        )

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    result = engine.submit(
        GenerateInput(inputs="x", parameters=Parameters(max_new_tokens=2, do_sample=True))
    ).result(60)
    assert result.details.seed is not None


def test_repetition_penalty_changes_greedy(engine):
    plain = greedy(engine, PROMPTS[0], n=10)
    assert len(set(plain)) < 10  # a random tiny model repeats itself
    assert greedy(engine, PROMPTS[0], n=10, repetition_penalty=100.0) != plain


def test_return_full_text_and_truncate(engine):
    full = engine.submit(
        GenerateInput(
            inputs=PROMPTS[0], parameters=Parameters(max_new_tokens=3, return_full_text=True)
        )
    ).result(60)
    short = engine.submit(
        GenerateInput(inputs=PROMPTS[0], parameters=Parameters(max_new_tokens=3))
    ).result(60)
    assert full.generated_text == PROMPTS[0] + short.generated_text
    truncated = engine.submit(
        GenerateInput(
            inputs=PROMPTS[0], parameters=Parameters(max_new_tokens=3, truncate=2, details=True)
        )
    ).result(60)
    assert truncated.details.prompt_tokens == 2


def test_fields_use_the_adapter_template(engine, two_adapters):
    fields = {"product": "Lamp", "description": "A fine thing."}
    rendered = "### Product\nLamp\n\n### Description\nA fine thing.\n\n### Email\n"
    by_fields = engine.submit(
        GenerateInput(
            fields=fields,
            adapter_id="alpha",
            parameters=Parameters(max_new_tokens=5, return_full_text=True),
        )
    ).result(60)
    by_text = engine.submit(
        GenerateInput(
            inputs=rendered,
            adapter_id="alpha",
            parameters=Parameters(max_new_tokens=5, return_full_text=True),
        )
    ).result(60)
    assert by_fields.generated_text == by_text.generated_text
    assert by_fields.generated_text.startswith(rendered)


def test_chat_messages_use_the_chat_template(engine):
    messages = [{"role": "user", "content": "Hi there"}]
    rendered = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    result = engine.submit(
        GenerateInput(
            messages=messages,
            parameters=Parameters(max_new_tokens=3, return_full_text=True, details=True),
        )
    ).result(60)
    assert result.generated_text.startswith(rendered)
    assert result.details.prompt_tokens == len(
        engine.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    )


def test_tools_are_rendered_by_the_chat_template(engine):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    messages = [{"role": "user", "content": "Weather?"}]
    params = Parameters(max_new_tokens=1)
    seq = engine.submit(GenerateInput(messages=messages, tools=tools, parameters=params))
    seq.result(60)
    assert "get_weather" in seq.prompt_text and "Weather?" in seq.prompt_text
    with pytest.raises(InvalidArgument, match="tools go with messages"):
        engine.submit(GenerateInput(inputs="x", tools=tools, parameters=params))


def test_cancelled_request_leaves_the_batch(engine):
    seq = engine.submit(GenerateInput(inputs=PROMPTS[0], parameters=Parameters(max_new_tokens=200)))
    other = engine.submit(
        GenerateInput(inputs=PROMPTS[1], parameters=Parameters(max_new_tokens=20))
    )
    first = next(seq.stream(60))
    assert first.tokens
    seq.cancel()
    assert other.result(60).details.generated_tokens == 20
    with pytest.raises(Exception, match="cancelled"):
        seq.result(60)
    assert len(seq.ids) < 200


def test_engine_thread_survives_concurrent_clients(engine, two_adapters):
    errors, texts = [], []

    def client(i):
        try:
            texts.append(
                engine.submit(
                    GenerateInput(
                        inputs=PROMPTS[i % 3],
                        adapter_id=["alpha", "beta", ""][i % 3],
                        parameters=Parameters(max_new_tokens=4),
                    )
                )
                .result(60)
                .generated_text
            )
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(texts) == 12


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_base_serves_adapters(
    tiny_llama, adapters_dir, two_adapters, dora_and_rslora, quantization
):
    """DoRA's weight norms too, over the dequantized base weights (as PEFT takes them)."""
    engine = make_engine(tiny_llama, adapters_dir, quantization=quantization)
    try:
        names = ("alpha", "", "dora")
        alone = [greedy(engine, PROMPTS[0], a) for a in names]
        assert alone[0] != alone[1] != alone[2]
        seqs = [
            engine.submit(
                GenerateInput(
                    inputs=PROMPTS[0],
                    adapter_id=a,
                    parameters=Parameters(max_new_tokens=8, details=True),
                )
            )
            for a in names
        ]
        assert [[t.id for t in s.result(60).details.tokens] for s in seqs] == alone
    finally:
        engine.stop()


def test_merging_into_a_quantized_base_is_refused(tiny_llama, adapters_dir, two_adapters):
    from tuneyard.errors import FailedPrecondition

    with pytest.raises(FailedPrecondition, match="cannot merge into .*quantized"):
        make_engine(tiny_llama, adapters_dir, quantization="8bit", merged_adapter="alpha")


def test_requests_join_a_running_batch(engine, two_adapters):
    """Requests arriving mid-generation are prefilled and merged into the running batch,
    with prompts both longer and shorter than its cache, and give the same greedy tokens
    as alone; the long request goes on unchanged after they leave."""
    joiners = [(PROMPTS[0] * 3, "alpha"), ("x", "beta"), (PROMPTS[2], "")]
    alone_long = greedy(engine, PROMPTS[1], "alpha", n=24)
    alone = [greedy(engine, p, a) for p, a in joiners]

    def submit(prompt, adapter_id, n):
        params = Parameters(max_new_tokens=n, details=True)
        return engine.submit(GenerateInput(inputs=prompt, adapter_id=adapter_id, parameters=params))

    sizes, joined, record = [], [], engine.scheduler.on_batch

    def on_step(n):
        sizes.append(n)
        if len(sizes) == 4:  # the long request is decoding alone: send the others now
            joined.extend(submit(p, a, 8) for p, a in joiners)
        record(n)

    engine.scheduler.on_batch = on_step
    try:
        long = submit(PROMPTS[1], "alpha", 24)
        long_tokens = [t.id for t in long.result(60).details.tokens]
        together = [[t.id for t in s.result(60).details.tokens] for s in joined]
    finally:
        engine.scheduler.on_batch = record
    # Alone for 4 steps, then 4 rows in one batch, then alone again once the others left.
    assert sizes[:4] == [1, 1, 1, 1] and max(sizes) == 4 and sizes[-1] == 1
    assert together == alone
    assert long_tokens == alone_long


def test_stopping_fails_the_running_rows(tiny_llama, adapters_dir):
    from tuneyard.errors import Unavailable

    engine = make_engine(tiny_llama, adapters_dir)
    seq = engine.submit(
        GenerateInput(inputs=PROMPTS[0], parameters=Parameters(max_new_tokens=1500))
    )
    next(seq.stream(60))
    engine.stop()
    with pytest.raises(Unavailable, match="stopping"):
        seq.result(10)


def test_dora_on_a_4bit_base_equals_peft(tiny_llama, adapters_dir, dora_and_rslora):
    """DoRA's weight norms over the dequantized NF4 weights, as PEFT takes them."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tuneyard.modeling import load_model, resolve_base_model

    engine = make_engine(tiny_llama, adapters_dir, quantization="4bit", dtype="float32")
    try:
        version = engine.adapters.store.resolve("dora-rs")
        base = load_model(
            resolve_base_model(str(tiny_llama)),
            device="cpu",
            dtype=torch.float32,
            quantization="4bit",
            compute_dtype=torch.float32,
        )
        tuned = PeftModel.from_pretrained(base, version.path).eval()
        ids = AutoTokenizer.from_pretrained(tiny_llama)(PROMPTS[0], return_tensors="pt")
        out = tuned.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        expected = out[0, ids["input_ids"].shape[1] :].tolist()
        assert greedy(engine, PROMPTS[0], "dora-rs") == expected
    finally:
        engine.stop()
