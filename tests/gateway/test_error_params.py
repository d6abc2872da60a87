"""Errors only the inference service can find keep the field they are about across gRPC:
the `openai` client sees the name it wrote (`messages`, not the engine's `inputs`), and the
trainer's clients of the service (evaluation, notifier) keep it too."""

import openai
import pytest

from inference_service.server import serve
from inference_service.settings import InferenceSettings
from tests.support.services import gateway_before
from trainer_service.evaluation.inference import InferenceClient
from trainer_service.notify import InferenceNotifier
from tuneyard.errors import InvalidArgument, NotFound

MAX_INPUT_TOKENS = 32
OUTSIDE_VOCABULARY = 10**6  # tiny_llama has a few hundred tokens
TOO_LONG = "word " * 100


@pytest.fixture(scope="module")
def inference(tiny_llama, tmp_path_factory):
    running = serve(
        InferenceSettings(
            base_model=str(tiny_llama),
            adapters_dir=tmp_path_factory.mktemp("adapters"),
            device="cpu",
            inference_port=0,
            inference_metrics_port=0,
            max_batch_wait_ms=5,
            max_input_tokens=MAX_INPUT_TOKENS,
            max_total_tokens=2 * MAX_INPUT_TOKENS,
        )
    )
    yield running
    running.stop(grace=0)


@pytest.fixture(scope="module")
def client(inference):
    gateway = gateway_before(inference.port)
    yield openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    gateway.stop()


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def _chat(client, model, content="hi", **extra):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=2, **extra
    )


@pytest.mark.parametrize("stream", [False, True])
def test_a_logit_bias_id_outside_the_vocabulary_names_logit_bias(client, model, stream):
    bias = {str(OUTSIDE_VOCABULARY): 5}
    with pytest.raises(openai.BadRequestError) as chat:
        _chat(client, model, logit_bias=bias, stream=stream)
    with pytest.raises(openai.BadRequestError) as completion:
        client.completions.create(
            model=model, prompt="hi", max_tokens=2, logit_bias=bias, stream=stream
        )
    for caught in (chat, completion):
        assert caught.value.param == "logit_bias", caught.value.body
        assert "outside the vocabulary" in caught.value.message


def test_an_input_over_max_input_tokens_names_the_field_the_client_wrote(client, model):
    with pytest.raises(openai.BadRequestError) as chat:
        _chat(client, model, TOO_LONG)
    assert chat.value.param == "messages", chat.value.body
    assert f"max_input_tokens={MAX_INPUT_TOKENS}" in chat.value.message
    with pytest.raises(openai.BadRequestError) as completion:
        client.completions.create(model=model, prompt=["hi", TOO_LONG], max_tokens=2)
    assert completion.value.param == "prompt", completion.value.body


def test_max_tokens_past_max_total_tokens_names_the_field_the_client_wrote(client, model):
    too_many = 2 * MAX_INPUT_TOKENS
    with pytest.raises(openai.BadRequestError) as completion:
        client.completions.create(model=model, prompt="hi", max_tokens=too_many)
    assert completion.value.param == "max_tokens", completion.value.body
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            max_completion_tokens=too_many,
        )
    assert chat.value.param == "max_completion_tokens", chat.value.body


def test_an_unknown_adapter_names_model(client):
    with pytest.raises(openai.NotFoundError) as caught:
        _chat(client, "no-such-adapter")
    assert caught.value.param == "model", caught.value.body


def test_the_evaluation_client_keeps_the_field(inference):
    evaluation = InferenceClient(f"127.0.0.1:{inference.port}", timeout_s=30)
    try:
        with pytest.raises(InvalidArgument) as caught:
            evaluation.generate("hi", "", {"logit_bias": {OUTSIDE_VOCABULARY: 1.0}})
    finally:
        evaluation.close()
    assert caught.value.param == "logit_bias"
    assert "outside the vocabulary" in caught.value.message


def test_the_notifier_keeps_the_field(inference):
    notifier = InferenceNotifier(f"127.0.0.1:{inference.port}")
    try:
        with pytest.raises(NotFound) as caught:
            notifier.load_adapter("no-such-adapter")
    finally:
        notifier.close()
    assert caught.value.param == "adapter_id"
