"""The static batch's own bookkeeping: rows that outlive the KV buffer's width are moved
left, rows that join with longer prompts move the others right, and every row still gives
the tokens it gives alone."""

import pytest

from inference_service.dynamic_batch import DynamicBatch
from inference_service.params import GenerateInput, Parameters
from inference_service.static_batch import StaticBatch, unsupported_reason
from tests.support.adapters import make_adapter
from tests.support.engines import make_engine
from tuneyard.errors import FailedPrecondition


def submit(engine, prompt: str, n: int, adapter_id: str = ""):
    params = Parameters(max_new_tokens=n, details=True)
    return engine.submit(GenerateInput(inputs=prompt, adapter_id=adapter_id, parameters=params))


def tokens(seq) -> list[int]:
    result = seq.result(120)
    return [t.id for t in result.details.tokens]


def test_rows_outlive_the_buffer_width(tiny_llama, tmp_path):
    make_adapter(tiny_llama, tmp_path, "alpha", seed=1)
    engine = make_engine(
        tiny_llama, tmp_path, decode="static", max_total_tokens=100, max_input_tokens=40
    )
    static = engine.scheduler.batch
    assert isinstance(static, StaticBatch) and static.width == 128
    shifts, shift = [], static._shift
    static._shift = lambda columns: (shifts.append(columns), shift(columns))
    # Row a runs from the start; b joins with a prompt longer than the columns used so far
    # (the others move right); c joins late and runs past column 128 (the others move left).
    plan = [("a", "The quick brown fox", 60, "", 0), ("b", "x " * 15, 60, "alpha", 3)]
    plan.append(("c", "Order today and save", 80, "alpha", 50))
    try:
        alone = {name: tokens(submit(engine, p, n, a)) for name, p, n, a, _ in plan}
        shifts.clear()
        started, steps, record = {}, [], engine.scheduler.on_batch

        def on_step(size):
            steps.append(size)
            for name, prompt, n, adapter, at in plan:
                if at == len(steps) and name not in started:
                    started[name] = submit(engine, prompt, n, adapter)
            record(size)

        engine.scheduler.on_batch = on_step
        started["a"] = submit(engine, *plan[0][1:3])
        together = {name: tokens(started[name]) for name in ("a", "b", "c")}
    finally:
        engine.stop()
    assert max(steps) == 3
    assert any(c > 0 for c in shifts) and any(c < 0 for c in shifts), shifts
    assert {name: len(t) for name, t in together.items()} == {"a": 60, "b": 60, "c": 80}
    assert together == alone


def test_unsupported_models_are_named(tiny_bloom, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    bloom = AutoModelForCausalLM.from_pretrained(tiny_bloom)
    assert "bloom" in unsupported_reason(bloom, 2048)
    assert unsupported_reason(AutoModelForCausalLM.from_pretrained(tiny_llama), 2048) is None
    with pytest.raises(FailedPrecondition, match="TUNEYARD_DECODE=static cannot serve"):
        make_engine(tiny_bloom, tmp_path, decode="static")
    # auto keeps the dynamic batch on the CPU, and for models the static one cannot run.
    engine = make_engine(tiny_bloom, tmp_path, decode="auto")
    assert isinstance(engine.scheduler.batch, DynamicBatch)
    engine.stop()
