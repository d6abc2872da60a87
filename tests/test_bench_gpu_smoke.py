"""The GPU smoke script runs end to end on the CPU (a tiny random Llama, plain LoRA), and a
run whose first stage fails still writes its JSON, with the error."""

import json

import pytest
import torch

from benchmarks import gpu_smoke


@pytest.mark.slow
@pytest.mark.integration
def test_gpu_smoke_trains_serves_and_compares_on_a_tiny_llama(tmp_path, capsys):
    result = gpu_smoke.main(["--model=llama-tiny", "--device=cpu", f"--out={tmp_path}"])

    (written,) = tmp_path.glob("gpu-smoke-*.json")
    assert json.loads(written.read_text()) == result
    assert {name: s["ok"] for name, s in result["stages"].items()} == {
        "base": True,
        "train": True,
        "adapters": True,
        "serve_static": True,
        "serve_dynamic": True,
    }
    assert result["config"]["dtype"] == "float32" and result["config"]["streams"] == 4

    train = result["train"]
    assert train["adapter"] == "bench@1" and train["published"]
    assert (train["quantization"], train["qlora"]) == ("none", False)
    assert train["why"] == "QLoRA needs a CUDA device"
    assert train["manifest_quantization"] == "none"
    assert train["metrics"]["steps"] == 10 and train["trained_tokens"] > 0
    assert train["peak_memory_gib"] > 0  # the worker's RSS on a CPU

    for decode in ("static", "dynamic"):
        served = result[f"serve_{decode}"]
        one, load = served["one_stream"], served["concurrent"]
        assert one["requests"] == 1 and 0 < one["tokens"] <= 128, decode
        assert load["requests"] == 4 and 4 <= load["tokens"] <= 4 * 128, decode
        assert load["tokens_per_s"] > 0 and 0 < load["ttft_p50_s"] <= load["ttft_p95_s"]
        assert load["adapters"] == ["bench-0", "bench-1", "bench-2", "bench@1"]
        assert len(served["greedy_tokens"]) == 4
        assert all(len(tokens) == 32 for tokens in served["greedy_tokens"]), decode
    # fp32 on the CPU: both decode paths choose exactly the same greedy tokens.
    assert result["serve_static"]["greedy_tokens"] == result["serve_dynamic"]["greedy_tokens"]
    assert result["static_vs_dynamic"]["fraction_equal"] == 1.0

    targets = result["targets"]
    assert (
        targets["one_stream_tokens_per_s"] == result["serve_static"]["one_stream"]["tokens_per_s"]
    )
    assert targets["one_stream_met"] == (
        targets["one_stream_tokens_per_s"] >= targets["one_stream_tokens_per_s_min"]
    )
    assert result["baseline"]["one_stream_unmerged_tokens_per_s"] == 40.0
    assert result["peak_gpu_memory_gib"] is None
    assert result["environment"]["torch"] == torch.__version__
    out = capsys.readouterr().out
    assert "train ..." in out and "serve_dynamic done" in out
    assert "static == dynamic greedy tokens: 4/4 prompts" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_failed_stage_is_recorded_and_the_rest_skipped(tmp_path, capsys):
    """`make gpu-smoke` on a machine without a GPU: the base fails, the JSON says why."""
    result = gpu_smoke.main(["--model=llama-tiny", "--device=cuda", f"--out={tmp_path}"])

    (written,) = tmp_path.glob("gpu-smoke-*.json")
    assert json.loads(written.read_text()) == result
    base = result["stages"]["base"]
    assert not base["ok"] and "CUDA" in base["error"] and "Traceback" in base["traceback"]
    for name in ("train", "adapters", "serve_static", "serve_dynamic"):
        assert result["stages"][name]["skipped"] == "no base model"
    assert result["targets"]["one_stream_tokens_per_s"] is None
    assert not result["targets"]["one_stream_met"] and not result["targets"]["concurrent_met"]
    assert result["static_vs_dynamic"] is None
    out = capsys.readouterr().out
    assert "base FAILED" in out and "FAIL" in out and f"written to {written}" in out
