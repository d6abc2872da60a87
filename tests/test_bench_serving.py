"""The serving benchmark runs end to end (the GPU host's randomly initialised Llama path,
with a tiny shape on the CPU) and writes its JSON result."""

import json

import pytest

from benchmarks import serving


@pytest.mark.slow
@pytest.mark.integration
def test_serving_benchmark_runs_the_gpu_path_on_a_tiny_llama(tmp_path, capsys):
    result = serving.main(
        [
            "--model=llama-tiny",
            "--dtype=float32",
            "--clients=4",
            "--adapters=2",
            "--requests-per-client=1",
            "--prompt-tokens=8",
            "--max-new-tokens=4",
            "--overhead-requests=5",
            "--max-batch-wait-ms=5",
            f"--out={tmp_path}",
        ]
    )
    (written,) = tmp_path.glob("serving-*.json")
    assert json.loads(written.read_text()) == result
    load = result["service"]["concurrent"]
    assert load["requests"] == 4 and 4 <= load["tokens"] <= 16
    assert result["naive"]["requests"] == 4 and result["speedup"] > 0
    assert 0 < load["ttft_p50_s"] <= load["ttft_p95_s"]
    hot = result["service"]["hot_load"]
    assert hot["adapter"] == "bench-0@2" and hot["new_version_loaded"]
    assert set(result["targets"]) >= {"speedup_met", "gateway_overhead_met"}
    bound = result["bound"]
    assert bound["static_batch_rows"] == 4 and bound["static_batch_tokens_per_s"] > 0
    assert bound["one_stream_tokens_per_s"] > 0
    assert result["ratios"]["concurrent_vs_bound"] == pytest.approx(
        load["tokens_per_s"] / bound["static_batch_tokens_per_s"]
    )
    assert result["ratios"]["one_stream_vs_bound"] > 0
    over = result["service"]["gateway_overhead"]
    assert over["repeats"] == 3 and len(over["overhead_p50_ms_each"]) == 3
    low, high = over["overhead_p50_ms_spread"]
    assert low <= over["overhead_p50_ms"] <= high
    assert "speed-up over naive" in capsys.readouterr().out
