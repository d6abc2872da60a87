"""The plain-text table printed by `tuneyard eval` and `make demo`."""

from tuneyard.eval_table import format_table, number


def arm(name: str, adapter: str, loss: float, fmt: float) -> dict:
    return {
        "name": name,
        "adapter_id": adapter,
        "shots": 3 if name == "few_shot" else 0,
        "eval_loss": loss,
        "perplexity": 2.0**loss,
        "checks": {"format": fmt, "rouge_l": 0.5},
        "mean_output_tokens": 80.0,
        "p50_latency_s": 1.25,
        "tokens_per_second": 40.0,
    }


def test_table_has_a_row_per_arm_with_rounded_numbers():
    evaluation = {
        "arms": [
            arm("zero_shot", "", 2.345678, 0.0),
            arm("few_shot", "", 1.5, 0.2857142857),
            arm("adapter", "email@3", 0.75, 1.0),
        ]
    }
    lines = format_table(evaluation).splitlines()
    assert lines[0].split() == [
        "arm",
        "adapter",
        "shots",
        "eval",
        "loss",
        "perplexity",
        "format",
        "rouge_l",
        "output",
        "tokens",
        "latency",
        "p50",
        "(s)",
        "tokens/s",
    ]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[:6] == [
        "zero_shot",
        "(base)",
        "0",
        "2.3457",
        number(2**2.345678),
        "0.0000",
    ]
    assert lines[3].split()[:7] == [
        "few_shot",
        "(base)",
        "3",
        "1.5000",
        "2.8284",
        "0.2857",
        "0.5000",
    ]
    assert lines[4].split()[:2] == ["adapter", "email@3"]
    # Columns line up: each header's offset starts a cell on every row.
    for header in ("adapter", "eval loss", "tokens/s"):
        offset = lines[0].index(header)
        for line in lines[2:]:
            assert line[offset - 1] == " " and line[offset] != " ", (header, line)
