"""The per-arm table of an evaluation, shared by its reports (trainer side) and the CLI and
demo (client side, from the API's JSON). Arms are dicts with the proto's field names."""

HEAD = ["arm", "adapter", "shots", "eval loss", "perplexity"]
TAIL = ["output tokens", "latency p50 (s)", "tokens/s"]


def number(value: float) -> str:
    """How every number of an evaluation is shown: the API's value, rounded."""
    return f"{value:.4f}"


def columns(arms: list[dict]) -> list[str]:
    return [*HEAD, *(arms[0]["checks"] if arms else []), *TAIL]


def table_rows(arms: list[dict]) -> list[list[str]]:
    return [
        [
            arm["name"],
            arm.get("adapter_id") or "(base)",
            str(arm.get("shots", 0)),
            number(arm["eval_loss"]),
            number(arm["perplexity"]),
            *(number(v) for v in arm["checks"].values()),
            number(arm["mean_output_tokens"]),
            number(arm["p50_latency_s"]),
            number(arm["tokens_per_second"]),
        ]
        for arm in arms
    ]


def format_table(evaluation: dict) -> str:
    """An evaluation's arms (`evaluation["arms"]`) as an aligned plain-text table."""
    head, rows = columns(evaluation["arms"]), table_rows(evaluation["arms"])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
