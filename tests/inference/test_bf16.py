"""The engine serving bf16 against PEFT in bf16, on every CPU (bf16 is emulated, slowly, on
AVX2 ones): rows of mixed batches on both decode paths, LoRA, DoRA, rsLoRA, added tokens,
4-bit and 8-bit bases.

Greedy tokens cannot be compared one for one here. bf16 keeps 8 bits of mantissa, and PEFT
runs one row while the engine runs a batch whose kernels sum in another order: where two
tokens are nearly tied, either may win, and the texts part from there. So each side is
compared as the parity gate compares them: the engine scores PEFT's own greedy tokens
after the same prompt (teacher-forced), and must choose PEFT's token wherever PEFT's choice
was clear and give every token PEFT's log-probability within bf16's tolerance."""

import pytest
import torch

from inference_service.params import GenerateInput, Parameters
from tests.support.adapters import make_adapter
from tests.support.engines import make_engine
from trainer_service.gate import HALF_TOLERANCE, judge, scored
from trainer_service.worker.gate import generated
from tuneyard.adapter_store import GateProbe, ParityGate
from tuneyard.modeling import load_model, load_tokenizer, resolve_base_model

from .test_engine import PROMPTS

TOKENS = 12
ADDED = ("<email>", "</email>")


def peft_probe(base_path, version, prompt: str, quantization: str = "none") -> GateProbe:
    """PEFT's greedy tokens in bf16 with their log-probabilities and margins, as the
    trainer's worker records them."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    ref = resolve_base_model(str(base_path))
    model = load_model(ref, device="cpu", dtype=torch.bfloat16, quantization=quantization)
    tokenizer = load_tokenizer(ref)
    if version is not None and version.manifest().added_tokens:
        tokenizer = AutoTokenizer.from_pretrained(version.path)
        model.resize_token_embeddings(len(tokenizer))
    if version is not None:
        # The adapter in bf16 too, as the engine holds it (PEFT would upcast it to float32).
        model = PeftModel.from_pretrained(model, version.path, autocast_adapter_dtype=False)
    probe = GateProbe(prompt=prompt, ids=[], logprobs=[])
    return generated(probe, model.eval(), tokenizer, TOKENS)


def served_together(engine, cases: list[tuple[GateProbe, str]]) -> list[GateProbe]:
    """Every probe scored by the engine (its adapter's rows), all submitted at once so
    that they share prefill batches."""
    params = Parameters(max_new_tokens=1, decoder_input_details=True, top_n_tokens=1)
    seqs = [
        engine.submit(
            GenerateInput(
                inputs=probe.prompt,
                adapter_id=adapter,
                continuation_ids=probe.ids,
                parameters=params,
            )
        )
        for probe, adapter in cases
    ]
    out = []
    for (probe, _), seq in zip(cases, seqs, strict=True):
        prefill = seq.result(120).details.prefill
        top = [t.top[0].id if t.top else t.id for t in prefill]
        out.append(scored(probe, [t.id for t in prefill], top, [t.logprob for t in prefill]))
    return out


def gate(probes: list[GateProbe]) -> ParityGate:
    pending = ParityGate(
        tokens=TOKENS,
        min_agreement=1.0,
        probes=probes,
        trained_dtype="bfloat16",
        served_dtype="bfloat16",
    )
    return judge(pending)


@pytest.fixture(scope="module")
def adapters(tiny_llama, adapters_dir, two_adapters, dora_and_rslora) -> dict:
    alpha, beta = two_adapters
    dora, rslora, _ = dora_and_rslora
    tags = make_adapter(tiny_llama, adapters_dir, "tags", seed=7, added_tokens=ADDED)
    return {"lora": alpha, "wide": beta, "dora": dora, "rslora": rslora, "tags": tags}


@pytest.fixture(scope="module", params=["dynamic", "static"])
def bf16_engine(request, tiny_llama, adapters_dir, adapters):
    engine = make_engine(tiny_llama, adapters_dir, decode=request.param, dtype="bfloat16")
    yield engine
    engine.stop()


def test_a_mixed_bf16_batch_scores_what_peft_generates_in_bf16(bf16_engine, tiny_llama, adapters):
    assert bf16_engine.info()["model_dtype"] == "bfloat16"
    names = [None, "lora", "wide", "dora", "rslora", "tags"]
    cases = [
        (
            peft_probe(tiny_llama, adapters[n] if n else None, PROMPTS[i % 3]),
            adapters[n].name if n else "",
        )
        for i, n in enumerate(names)
    ]
    result = gate(served_together(bf16_engine, cases))
    assert result.state == "passed", result.reason
    assert 0 < result.max_logprob_diff <= HALF_TOLERANCE
    # The adapters change the tokens, so passing means something: each row's tokens are
    # its own adapter's.
    assert len({tuple(probe.ids) for probe, _ in cases}) == len(cases)
    # And the comparison catches a row served by another adapter than PEFT ran.
    plain = cases[:-1]  # the added tokens' probe only its own adapter can read
    swapped = [(probe, plain[(i + 1) % len(plain)][1]) for i, (probe, _) in enumerate(plain)]
    assert gate(served_together(bf16_engine, swapped)).state == "failed"


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_a_quantized_bf16_base_scores_what_peft_generates_on_it(
    tiny_llama, adapters_dir, adapters, quantization
):
    engine = make_engine(tiny_llama, adapters_dir, quantization=quantization, dtype="bfloat16")
    try:
        # PEFT's own DoRA on an 8-bit bf16 base loses the int8 weights' scales (col_stats
        # None in bitsandbytes' int8_mm_dequant): no reference to compare with there.
        names = [None, "lora", "dora" if quantization == "4bit" else "rslora"]
        cases = [
            (
                peft_probe(tiny_llama, adapters[n] if n else None, PROMPTS[0], quantization),
                adapters[n].name if n else "",
            )
            for n in names
        ]
        result = gate(served_together(engine, cases))
    finally:
        engine.stop()
    assert result.state == "passed", result.reason
    assert len({tuple(probe.ids) for probe, _ in cases}) == len(cases)
