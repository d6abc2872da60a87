"""Adapters that add tokens, served next to plain LoRA adapters and base rows: each row
reads and writes with its own adapter's tokenizer and rows, equal to PEFT's greedy tokens;
no other row ever sees the added tokens. A tokenizer that differs otherwise is refused."""

import re

import pytest
from transformers import AutoTokenizer

from inference_service.params import GenerateInput, Parameters
from tests.inference.test_engine import greedy, peft_greedy
from tests.support.adapters import make_adapter
from tests.support.engines import make_engine, submit_together
from tuneyard.errors import FailedPrecondition

ADDED = ("<email>", "</email>")
PROMPTS = ["Hello there", "### Email\n<email>", "a b c d", "Our new lamp"]


@pytest.fixture(scope="module")
def adapters(tiny_llama, adapters_dir):
    return (
        make_adapter(tiny_llama, adapters_dir, "tags", seed=7, added_tokens=ADDED),
        make_adapter(tiny_llama, adapters_dir, "plain", seed=1),
    )


def peft_added_greedy(base_path, version, prompt: str, n: int) -> list[int]:
    """PEFT's greedy tokens on the base resized to the adapter's tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(version.path)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    model.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(model, version.path)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def test_a_mixed_batch_equals_peft_and_only_its_rows_see_the_added_tokens(
    engine, tiny_llama, adapters
):
    tags, plain = adapters
    vocab = len(AutoTokenizer.from_pretrained(tiny_llama))
    cases = [(p, name) for p in PROMPTS for name in ("tags", "plain", "")]
    expected = {(p, "tags"): peft_added_greedy(tiny_llama, tags, p, 10) for p in PROMPTS} | {
        (p, name): peft_greedy(tiny_llama, v, p, 10)
        for p in PROMPTS
        for name, v in (("plain", plain), ("", None))
    }
    seqs, results, batch_sizes = submit_together(engine, cases, 10)
    assert max(batch_sizes) > 1, "the requests were not batched"
    assert [[t.id for t in r.details.tokens] for r in results] == [expected[c] for c in cases]
    for (_, name), seq, result in zip(cases, seqs, results, strict=True):
        if name != "tags":  # "<email>" is text to them, and never a choice
            assert max(seq.prompt_ids + [t.id for t in result.details.tokens]) < vocab
    tags_rows = [
        (s, r) for (_, name), s, r in zip(cases, seqs, results, strict=True) if name == "tags"
    ]
    assert vocab in tags_rows[1][0].prompt_ids  # its prompt's "<email>" is one token
    generated = "".join(r.generated_text for _, r in tags_rows)
    assert "<email>" in generated and "</email>" in generated  # generated and decoded


def test_a_stop_sequence_of_added_tokens(engine, adapters):
    result = engine.submit(
        GenerateInput(
            inputs=PROMPTS[0],
            adapter_id="tags",
            parameters=Parameters(max_new_tokens=10, stop=["</email>"]),
        )
    ).result(60)
    assert result.generated_text.endswith("</email>") and result.details.generated_tokens == 1


def test_a_tokenizer_that_differs_otherwise_is_refused(engine, tiny_llama, adapters_dir, adapters):
    odd = make_adapter(tiny_llama, adapters_dir, "odd", seed=7, added_tokens=ADDED)
    tokenizer = AutoTokenizer.from_pretrained(odd.path)
    tokenizer.add_tokens(["<phone>"])  # not in its manifest
    tokenizer.chat_template = "{{ messages }}"
    tokenizer.save_pretrained(odd.path)
    with pytest.raises(FailedPrecondition, match="differs from the base's") as err:
        engine.adapters.acquire("odd")
    assert "<phone>" in err.value.message and "another chat template" in err.value.message
    assert greedy(engine, PROMPTS[0], "tags")  # still serving


def test_vllm_refuses_an_adapter_that_adds_tokens(adapters):
    from inference_service.peft_files import read_adapter
    from inference_service.vllm_engine import VllmLoras

    with pytest.raises(FailedPrecondition, match="vLLM does not serve adapters that add tokens"):
        VllmLoras(shapes=None).check(read_adapter(adapters[0].path, 64))


def test_a_grammar_row_of_such_an_adapter_keeps_to_the_grammar(engine, adapters):
    """The grammar is compiled for the base's vocabulary: its rows cannot choose the
    added tokens (the adapter's first greedy token here is "</email>")."""
    pattern = "[a-z ]{1,8}"
    params = Parameters(max_new_tokens=10, grammar=("regex", pattern))
    result = engine.submit(
        GenerateInput(inputs=PROMPTS[0], adapter_id="tags", parameters=params)
    ).result(60)
    assert re.fullmatch(pattern, result.generated_text), result.generated_text


def test_a_slot_freed_by_such_an_adapter_serves_a_plain_one(tiny_llama, adapters_dir, adapters):
    """One slot: the plain adapter evicts the one that added tokens, whose rows leave with
    it, and back."""
    engine = make_engine(tiny_llama, adapters_dir, max_loaded_adapters=1)
    try:
        first = [greedy(engine, PROMPTS[1], name) for name in ("tags", "plain", "tags")]
    finally:
        engine.stop()
    tags, plain = adapters
    assert first == [
        peft_added_greedy(tiny_llama, tags, PROMPTS[1], 8),
        peft_greedy(tiny_llama, plain, PROMPTS[1], 8),
        peft_added_greedy(tiny_llama, tags, PROMPTS[1], 8),
    ]


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_a_quantized_base_serves_them(tiny_llama, adapters_dir, adapters, quantization):
    """bitsandbytes leaves the embedding and the output layer unquantized: the added rows
    are served the same way, each row of a mixed batch as it is alone."""
    engine = make_engine(tiny_llama, adapters_dir, quantization=quantization)
    try:
        cases = [(p, name) for p in PROMPTS[:2] for name in ("tags", "plain", "")]
        alone = [greedy(engine, p, name, n=8) for p, name in cases]
        seqs = [
            engine.submit(
                GenerateInput(
                    inputs=p, adapter_id=name, parameters=Parameters(max_new_tokens=8, details=True)
                )
            )
            for p, name in cases
        ]
        assert [[t.id for t in s.result(60).details.tokens] for s in seqs] == alone
        vocab = len(AutoTokenizer.from_pretrained(tiny_llama))
        assert any(i >= vocab for i in alone[0] + alone[3])  # the added tokens are generated
    finally:
        engine.stop()
