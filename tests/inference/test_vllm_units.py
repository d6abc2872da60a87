"""The vllm engine's translations, without vLLM: our request to vLLM's body, vLLM's reply
to our tokens, its errors to ours, and the server's command line."""

import math
import sys
from pathlib import Path

import pytest

from inference_service.params import Parameters
from inference_service.sampling import NextTokenChooser
from inference_service.sequence import Sequence
from inference_service.server import engine_kind
from inference_service.settings import InferenceSettings
from inference_service.vllm_engine import feed, request_body, vllm_error, vllm_gauges
from inference_service.vllm_server import server_args, vllm_lora_rank
from tests.conftest import make_tokenizer
from tuneyard.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def sequence(tokenizer, **params) -> Sequence:
    params = Parameters(**params)
    return Sequence(
        tokenizer=tokenizer,
        prompt_text="Hi there",
        prompt_ids=tokenizer("Hi there")["input_ids"],
        params=params,
        max_new_tokens=params.max_new_tokens or 5,
        eos_ids={tokenizer.eos_token_id},
        chooser=NextTokenChooser(params, 0, "cpu"),
        seed=7 if params.sampling else None,
        adapter_key=None,
    )


def test_greedy_body_asks_for_ids_logprobs_and_our_stops(tokenizer):
    seq = sequence(tokenizer, max_new_tokens=4, stop=["<|im_end|>", "."])
    body = request_body(seq, "base")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert body["prompt"] == seq.prompt_ids and body["max_tokens"] == 4
    assert body["temperature"] == 0.0 and "seed" not in body
    assert body["return_token_ids"] and body["logprobs"] == 0 and body["stream"]
    # Special-token stops and end-of-sequence by id; text stops stay ours.
    assert body["stop_token_ids"] == sorted({tokenizer.eos_token_id, im_end})
    assert "stop" not in body


def test_sampling_penalties_bias_grammar_and_prompt_logprobs_map(tokenizer):
    seq = sequence(
        tokenizer,
        do_sample=True,
        temperature=0.7,
        top_k=5,
        top_p=0.9,
        repetition_penalty=1.2,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={3: -100.0},
        top_n_tokens=3,
        decoder_input_details=True,
        grammar=("json", '{"type": "object"}'),
    )
    body = request_body(seq, "alpha@1")
    assert body["model"] == "alpha@1"
    assert (body["temperature"], body["top_k"], body["top_p"], body["seed"]) == (0.7, 5, 0.9, 7)
    assert body["repetition_penalty"] == 1.2
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.5, -0.5)
    assert body["logit_bias"] == {"3": -100.0} and body["logprobs"] == 3
    # The prompt's tokens with as many alternatives as the generated ones.
    assert body["prompt_logprobs"] == 3 and body["stream"] is False
    assert body["structured_outputs"]["json"] == {"type": "object"}
    regex = request_body(sequence(tokenizer, grammar=("regex", "[ab]+")), "base")
    assert regex["structured_outputs"] == {"regex": "[ab]+"}


def test_typical_p_is_refused_naming_it_and_the_engine(tokenizer):
    with pytest.raises(InvalidArgument) as refused:
        request_body(sequence(tokenizer, typical_p=0.5, do_sample=True), "base")
    assert refused.value.param == "typical_p" and "vllm" in refused.value.message


def test_feed_hands_tokens_alternatives_and_prefill_to_the_sequence(tokenizer):
    seq = sequence(
        tokenizer, max_new_tokens=2, top_n_tokens=2, decoder_input_details=True, details=True
    )
    ids = tokenizer("Best regards", add_special_tokens=False)["input_ids"][:2]
    prompt = [None] + [
        {str(t): {"logprob": -1.5}, "5": {"logprob": -0.5}} for t in seq.prompt_ids[1:]
    ]
    feed(
        seq,
        {
            "token_ids": ids,
            "prompt_logprobs": prompt,
            "logprobs": {
                "token_logprobs": [-0.1, -0.2],
                "top_logprobs": [
                    {f"token_id:{ids[0]}": -0.1, "token_id:9": -3.0, "token_id:8": -2.0},
                    {f"token_id:{ids[1]}": -0.2},
                ],
            },
        },
    )
    result = seq.result(timeout=1)
    assert [t.id for t in result.details.tokens] == ids
    assert [t.logprob for t in result.details.tokens] == [-0.1, -0.2]
    assert [(t.id, t.logprob) for t in result.details.tokens[0].top] == [(ids[0], -0.1), (8, -2.0)]
    assert math.isnan(result.details.prefill[0].logprob)
    assert [t.logprob for t in result.details.prefill[1:]] == [-1.5] * (len(seq.prompt_ids) - 1)
    tops = [[(a.id, a.logprob) for a in t.top] for t in result.details.prefill]
    assert tops == [[]] + [[(5, -0.5), (t, -1.5)] for t in seq.prompt_ids[1:]]
    assert result.details.finish_reason == "length"


def test_feed_stops_at_a_stop_sequence_even_if_vllm_goes_on(tokenizer):
    seq = sequence(tokenizer, max_new_tokens=10, stop=["regards"])
    ids = tokenizer("Best regards, The Team", add_special_tokens=False)["input_ids"]
    feed(seq, {"token_ids": ids, "logprobs": {"token_logprobs": [-1.0] * len(ids)}})
    result = seq.result(timeout=1)
    assert result.generated_text.endswith("regards")
    assert result.details.finish_reason == "stop_sequence"
    assert result.details.generated_tokens < len(ids)


def test_vllm_errors_become_ours_with_the_field():
    bad = vllm_error(400, b'{"error": {"message": "max_tokens too big", "param": "max_tokens"}}')
    assert isinstance(bad, InvalidArgument) and bad.param == "max_tokens"
    assert "max_tokens too big" in bad.message
    assert isinstance(vllm_error(404, b'{"error": {"message": "no such model"}}'), NotFound)
    assert isinstance(vllm_error(500, b"<html>oops"), Unavailable)


def test_gauges_sum_over_labels():
    text = (
        "# HELP vllm:num_requests_running x\n"
        'vllm:num_requests_running{engine="0",model_name="base"} 3.0\n'
        'vllm:num_requests_running{engine="1",model_name="base"} 2.0\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.25\n'
    )
    assert vllm_gauges(text) == {
        "vllm:num_requests_running": 5.0,
        "vllm:kv_cache_usage_perc": 0.25,
    }


def settings(**values) -> InferenceSettings:
    return InferenceSettings(inference_metrics_port=0, **values)


def test_server_args_follow_the_settings():
    args = server_args(
        settings(max_adapter_rank=20, max_total_tokens=4096, max_batch_size=32, device="cuda"),
        Path("/models/base"),
        "cuda",
        "bfloat16",
        lora_rank=20,
    )
    flag = {name: args[i + 1] for i, name in enumerate(args[:-1]) if name.startswith("--")}
    assert flag["--model"] == "/models/base" and flag["--dtype"] == "bfloat16"
    assert flag["--max-lora-rank"] == "32"  # vLLM's next size up from 20
    assert flag["--max-model-len"] == "4096" and flag["--max-num-seqs"] == "32"
    assert flag["--max-cpu-loras"] == "8" and "--gpu-memory-utilization" in args
    merged = server_args(settings(merged_adapter="a"), Path("/m"), "cpu", "float32", 8)
    assert "--enable-lora" not in merged and "--gpu-memory-utilization" not in merged
    quantized = server_args(settings(quantization="4bit"), Path("/m"), "cuda", "bfloat16", 8)
    assert quantized[quantized.index("--quantization") + 1] == "bitsandbytes"
    with pytest.raises(FailedPrecondition, match="4 bit"):
        server_args(settings(quantization="8bit"), Path("/m"), "cuda", "bfloat16", 8)
    # Its in-flight 4 bit is NF4 with double quantization: adapters compare against that.
    with pytest.raises(FailedPrecondition, match="NF4 with double quantization only"):
        server_args(settings(quantization="4bit", quant_type="fp4"), Path("/m"), "cuda", "", 8)
    extra = server_args(
        settings(vllm_extra_args="--enforce-eager --seed 3"), Path("/m"), "cpu", "", 8
    )
    assert extra[-3:] == ["--enforce-eager", "--seed", "3"]


def test_the_lora_rank_rounds_up_to_what_vllm_takes():
    assert [vllm_lora_rank(r) for r in (1, 8, 9, 16, 17, 300, 512)] == [
        8,
        8,
        16,
        16,
        32,
        320,
        512,
    ]


def test_auto_engine_is_native_without_cuda():
    assert engine_kind(settings(device="cpu")) == "native"
    assert engine_kind(settings(engine="vllm", device="cpu")) == "vllm"


def test_a_missing_vllm_is_a_clear_error_at_start(tmp_path):
    from inference_service.vllm_engine import VllmEngine

    with pytest.raises(FailedPrecondition, match="make vllm"):
        VllmEngine.load(settings(engine="vllm", vllm_python=sys.executable))


def test_merged_weights_for_vllm_equal_base_plus_adapter(tiny_llama, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from inference_service.vllm_engine import merged_weights
    from tests.support.adapters import make_adapter
    from tuneyard.modeling import resolve_base_model

    version = make_adapter(tiny_llama, tmp_path / "adapters", "mail")
    home = settings(home=tmp_path / "home")
    folder = merged_weights(resolve_base_model(str(tiny_llama)), version.path, version.id, home)
    assert folder == tmp_path / "home" / "merged" / version.id
    ids = torch.tensor([[1, 5, 9, 12]])
    merged = AutoModelForCausalLM.from_pretrained(folder)(ids).logits
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    expected = PeftModel.from_pretrained(base, version.path)(ids).logits
    assert torch.allclose(merged, expected, atol=1e-4)
    # Done once: a second call finds the folder.
    assert merged_weights(resolve_base_model(str(tiny_llama)), version.path, version.id, home)


def test_dora_is_refused_on_vllm_unless_merged():
    import torch
    from torch import nn

    from inference_service.lora import MultiLora
    from inference_service.peft_files import LoraWeights
    from inference_service.vllm_engine import VllmLoras

    structure = nn.Module()
    structure.proj = nn.Linear(4, 3)
    a, b = torch.ones(2, 4), torch.ones(3, 2)
    plain = LoraWeights(2, 1.0, ["proj"], {"proj": (a, b)})
    dora = LoraWeights(2, 1.0, ["proj"], {"proj": (a, b)}, {"proj": torch.ones(3)})
    VllmLoras(MultiLora(structure, 1)).check(plain)
    with pytest.raises(FailedPrecondition, match="vLLM does not serve DoRA adapters unmerged"):
        VllmLoras(MultiLora(structure, 1)).check(dora)
    VllmLoras(MultiLora(structure, 1), merged=True).check(dora)
