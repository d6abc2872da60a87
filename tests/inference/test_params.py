"""Every bad generation parameter is refused before any compute, with a clear message."""

import pytest

from inference_service.params import GenerateInput, Parameters
from tests.support.engines import make_engine
from tuneyard.errors import InvalidArgument, ResourceExhausted

LONG = "The quick brown fox jumps over the lazy dog " * 8


@pytest.fixture(scope="module")
def limited(tiny_llama, adapters_dir):
    engine = make_engine(
        tiny_llama, adapters_dir, max_input_tokens=20, max_total_tokens=30, max_queue=2
    )
    yield engine
    engine.stop()


@pytest.mark.parametrize(
    "params, match",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"max_new_tokens": 29}, r"input tokens \(\d+\) \+ max_new_tokens \(29\) exceeds"),
        ({"temperature": 0.0}, "temperature must be strictly positive"),
        ({"temperature": -0.5, "do_sample": True}, "temperature must be strictly positive"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be strictly positive"),
        ({"truncate": 0}, "truncate must be between 1 and max_input_tokens=20"),
        ({"truncate": 21}, "truncate must be between 1 and max_input_tokens=20"),
        ({"stop": [""]}, "stop sequences must not be empty"),
        ({"stop": ["x"] * 9}, "at most 8 stop sequences"),
    ],
)
def test_bad_parameter(limited, params, match):
    with pytest.raises(InvalidArgument, match=match):
        limited.submit(GenerateInput(inputs="Hi there", parameters=Parameters(**params)))


def test_input_too_long_unless_truncated(limited):
    with pytest.raises(InvalidArgument, match="more than max_input_tokens=20; .*truncate"):
        limited.submit(GenerateInput(inputs=LONG))
    result = limited.submit(
        GenerateInput(inputs=LONG, parameters=Parameters(truncate=10, max_new_tokens=2))
    ).result(60)
    assert (result.details.prompt_tokens, result.details.generated_tokens) == (10, 2)


def test_default_max_new_tokens_fits_the_total(limited):
    result = limited.submit(GenerateInput(inputs=LONG, parameters=Parameters(truncate=20)))
    assert result.result(60).details.generated_tokens == 10  # 30 total - 20 input


@pytest.mark.parametrize(
    "request_, match",
    [
        (GenerateInput(), "empty input"),
        (GenerateInput(inputs="a", fields={"product": "x"}), "only one of inputs, fields"),
        (GenerateInput(fields={"product": "x"}), "fields need an adapter"),
        (GenerateInput(messages=[{"role": "", "content": "hi"}]), r"messages\[0\] has no role"),
    ],
)
def test_bad_input(limited, request_, match):
    with pytest.raises(InvalidArgument, match=match):
        limited.submit(request_)


def test_full_queue_is_resource_exhausted(limited):
    limited.scheduler.stop()  # nothing drains the queue now
    try:
        params = Parameters(max_new_tokens=1)
        queued = [limited.submit(GenerateInput(inputs="Hi", parameters=params)) for _ in range(2)]
        with pytest.raises(ResourceExhausted, match="queue is full"):
            limited.submit(GenerateInput(inputs="Hi", parameters=params))
    finally:
        limited.stop()
    for seq in queued:
        with pytest.raises(Exception, match="stopping"):
            seq.result(5)


def test_settings_from_environment(monkeypatch):
    from pydantic import ValidationError

    from inference_service.settings import InferenceSettings

    monkeypatch.setenv("TUNEYARD_INFERENCE_PORT", "6000")
    monkeypatch.setenv("TUNEYARD_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("TUNEYARD_QUANTIZATION", "4bit")
    settings = InferenceSettings()
    assert (settings.inference_port, settings.max_batch_size, settings.quantization) == (
        6000,
        3,
        "4bit",
    )
    monkeypatch.setenv("TUNEYARD_QUANTIZATION", "3bit")
    with pytest.raises(ValidationError, match="quantization"):
        InferenceSettings()
    monkeypatch.delenv("TUNEYARD_QUANTIZATION")
    with pytest.raises(ValidationError, match="must be below max_total_tokens"):
        InferenceSettings(max_input_tokens=100, max_total_tokens=100)
