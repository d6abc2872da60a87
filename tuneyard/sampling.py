"""When generation parameters mean sampling rather than greedy decoding: one rule for the
gateway's checks and the engine's choice."""


def is_sampling(
    do_sample: bool | None,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    typical_p: float | None,
) -> bool:
    """As in TGI: asked for, or a temperature other than 1, a top_k, or a top_p or
    typical_p below 1."""
    return bool(
        do_sample
        or (temperature is not None and temperature != 1.0)
        or top_k is not None
        or (top_p is not None and top_p < 1.0)
        or (typical_p is not None and typical_p < 1.0)
    )
