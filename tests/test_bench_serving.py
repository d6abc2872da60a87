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


@pytest.mark.slow
@pytest.mark.integration
def test_the_hot_load_stall_phase_times_gaps_quiet_and_loading(tmp_path, capsys):
    result = serving.main(
        [
            "--model=llama-tiny",
            "--dtype=float32",
            "--hot-load-stall",
            "--clients=2",
            "--adapters=2",
            "--max-new-tokens=16",
            "--stall-adapters=2",
            "--stall-rank=64",
            "--stall-quiet-s=1",
            f"--out={tmp_path}",
        ]
    )
    (written,) = tmp_path.glob("serving-stall-*.json")
    assert json.loads(written.read_text()) == result
    stall = result["hot_load_stall"]
    for phase in ("quiet", "loading"):
        gaps = stall[phase]
        assert gaps["tokens"] > 0 and gaps["seconds"] > 0
        assert 0 < gaps["gap_p50_ms"] <= gaps["gap_p99_ms"] <= gaps["gap_max_ms"]
    assert stall["quiet"]["seconds"] >= 1 and stall["adapters_loaded"] == 2
    assert stall["ratios"]["gap_p99_loading_vs_quiet"] == pytest.approx(
        stall["loading"]["gap_p99_ms"] / stall["quiet"]["gap_p99_ms"]
    )
    assert set(stall["targets"]) >= {"gap_p99_met", "gap_max_met"}
    assert "inter-token gap" in capsys.readouterr().out
