"""The vllm engine behind the same contract: real vLLM (CPU build) as the inference
service's child, the real gateway, and the real text-generation and openai clients."""

import json
import math
import os
import signal
import threading
import time

import grpc
import httpx
import openai
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lorax import Client as LoraxClient
from lorax.errors import NotFoundError
from text_generation import Client

from inference_service.engine import NativeEngine
from inference_service.params import GenerateInput, Parameters
from tests.support.adapters import make_adapter
from tuneyard.errors import FailedPrecondition, InvalidArgument
from tuneyard.v1 import inference_pb2 as pb
from tuneyard.v1 import inference_pb2_grpc

from .conftest import ADAPTERS, START_TIMEOUT_S, vllm_settings

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = [
    "The capital of France is",
    "Write a short email about a new toothbrush.",
    "List three colours:",
    "Once upon a time",
]


def test_text_generation_client_through_the_gateway(vllm_gateway):
    for client, adapter in [
        (Client(vllm_gateway.url, timeout=120), {}),
        (LoraxClient(vllm_gateway.url, timeout=120), {"adapter_id": "alpha"}),
    ]:
        reply = client.generate(PROMPTS[0], max_new_tokens=8, **adapter)
        assert reply.details.generated_tokens == len(reply.details.tokens) > 0
        assert reply.generated_text
        streamed = list(client.generate_stream(PROMPTS[0], max_new_tokens=8, **adapter))
        text = "".join(r.token.text for r in streamed if not r.token.special)
        assert text == reply.generated_text
        assert streamed[-1].details.finish_reason == reply.details.finish_reason


def test_openai_client_through_the_gateway(vllm_gateway):
    client = openai.OpenAI(base_url=f"{vllm_gateway.url}/v1", api_key="none", timeout=120)
    completion = client.completions.create(model="beta", prompt=PROMPTS[2], max_tokens=6)
    assert completion.choices[0].text and completion.usage.completion_tokens <= 6
    chat = client.chat.completions.create(
        model="gamma",
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=6,
        temperature=0,
    )
    assert chat.choices[0].message.content is not None
    chunks = list(
        client.chat.completions.create(
            model="gamma",
            messages=[{"role": "user", "content": "Say hi."}],
            max_tokens=6,
            temperature=0,
            stream=True,
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == chat.choices[0].message.content


def test_structured_output_and_stop_sequences(vllm_gateway):
    client = openai.OpenAI(base_url=f"{vllm_gateway.url}/v1", api_key="none", timeout=120)
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["colour"],
    }
    reply = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "Pick a colour, as JSON."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    content = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop", content
    assert json.loads(content)["colour"] in {"red", "green", "blue"}
    tgi = Client(vllm_gateway.url, timeout=120)
    stopped = tgi.generate(PROMPTS[2], max_new_tokens=40, stop_sequences=[","])
    assert stopped.details.finish_reason == "stop_sequence", stopped.generated_text
    assert stopped.generated_text.endswith(",") and stopped.generated_text.count(",") == 1


def _greedy_peft(base, adapters_dir, adapter: str | None, prompt_ids, n: int) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter:
        version = sorted((adapters_dir / adapter).iterdir())[-1]
        model = PeftModel.from_pretrained(model, version)
    out = model.generate(
        torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n
    )
    return out[0, len(prompt_ids) :].tolist()


def test_mixed_adapter_batch_matches_peft_per_row(vllm_service, smollm, vllm_adapters_dir):
    engine = vllm_service.engine
    rows = [(PROMPTS[i % 4], [*ADAPTERS, None][i % 5]) for i in range(10)]
    # All submitted before any is read: vLLM batches them, adapters mixed.
    seqs = [
        engine.submit(
            GenerateInput(
                inputs=prompt,
                adapter_id=adapter or "",
                parameters=Parameters(max_new_tokens=6, details=True),
            )
        )
        for prompt, adapter in rows
    ]
    results = [seq.result(timeout=300) for seq in seqs]
    expected = {}
    for (prompt, adapter), seq, result in zip(rows, seqs, results, strict=True):
        if (prompt, adapter) not in expected:
            expected[prompt, adapter] = _greedy_peft(
                smollm, vllm_adapters_dir, adapter, seq.prompt_ids, 6
            )
        got = [t.id for t in result.details.tokens]
        want = expected[prompt, adapter][: len(got)]
        assert got == want, (prompt, adapter)
    # The adapters do change the answers: the comparison above is not base against base.
    assert len({tuple(tokens) for tokens in expected.values()}) > len(PROMPTS)


def test_prompt_logprobs_equal_the_native_engines(vllm_service, smollm, vllm_adapters_dir):
    """Evaluations score with decoder_input_details: the same loss on either engine."""
    settings = vllm_settings(smollm, vllm_adapters_dir, engine="native", inference_metrics_port=0)
    native = NativeEngine.load(settings)
    try:
        for adapter in ("", "delta"):
            request = GenerateInput(
                inputs=PROMPTS[1],
                adapter_id=adapter,
                parameters=Parameters(max_new_tokens=1, decoder_input_details=True),
            )
            ours = native.submit(request).result(timeout=120).details.prefill
            theirs = vllm_service.engine.submit(request).result(timeout=120).details.prefill
            assert [t.id for t in ours] == [t.id for t in theirs]
            assert math.isnan(theirs[0].logprob)
            for a, b in zip(ours[1:], theirs[1:], strict=True):
                assert b.logprob == pytest.approx(a.logprob, abs=2e-3)
    finally:
        native.stop()


def test_unknown_adapter_is_404(vllm_gateway):
    reply = httpx.post(
        f"{vllm_gateway.url}/generate",
        json={"inputs": "Hi", "parameters": {"adapter_id": "nope", "max_new_tokens": 2}},
        timeout=60,
    )
    assert reply.status_code == 404 and "nope" in reply.json()["error"]
    with pytest.raises(NotFoundError):
        LoraxClient(vllm_gateway.url, timeout=60).generate("Hi", max_new_tokens=2, adapter_id="x")


def test_a_parameter_vllm_cannot_honour_is_refused_naming_it(vllm_gateway):
    reply = httpx.post(
        f"{vllm_gateway.url}/generate",
        json={"inputs": "Hi", "parameters": {"typical_p": 0.5, "do_sample": True}},
        timeout=60,
    )
    assert reply.status_code == 422
    assert "typical_p" in reply.json()["error"] and "vllm" in reply.json()["error"]


def test_bad_adapters_are_refused_with_the_reason(vllm_service, smollm, vllm_adapters_dir):
    dora = make_adapter(smollm, vllm_adapters_dir, "dora", r=4, use_dora=True)
    wide = make_adapter(smollm, vllm_adapters_dir, "wide", r=32)
    adapters = vllm_service.engine.adapters
    with pytest.raises(FailedPrecondition, match="vLLM does not serve DoRA adapters unmerged"):
        adapters.load("dora")
    with pytest.raises(FailedPrecondition, match="rank 32 exceeds"):
        adapters.load("wide")
    states = {a.id: a.state for a in adapters.list()}
    assert states[dora.id] == states[wide.id] == "failed"
    with pytest.raises(InvalidArgument, match="typical_p"):
        vllm_service.engine.submit(
            GenerateInput(inputs="Hi", parameters=Parameters(typical_p=0.5, do_sample=True))
        )


def test_new_version_is_hot_loaded_under_load(vllm_service, smollm, vllm_adapters_dir):
    stop = threading.Event()
    answered_by: list[str] = []
    failures: list[str] = []
    request = pb.GenerateRequest(
        inputs=PROMPTS[3], adapter_id="beta", parameters=pb.GenerationParameters(max_new_tokens=4)
    )

    def load() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{vllm_service.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            while not stop.is_set():
                try:
                    answered_by.append(stub.Generate(request, timeout=120).details.adapter)
                except grpc.RpcError as err:
                    failures.append(f"{err.code()}: {err.details()}")

    clients = [threading.Thread(target=load) for _ in range(4)]
    for client in clients:
        client.start()
    time.sleep(3)
    new = make_adapter(smollm, vllm_adapters_dir, "beta", seed=42, r=8)
    deadline = time.monotonic() + 120
    while new.id not in answered_by[-4:] and time.monotonic() < deadline:
        time.sleep(0.5)
    stop.set()
    for client in clients:
        client.join()
    assert not failures
    assert new.id in answered_by and answered_by[0] != new.id
    loaded = {a.id for a in vllm_service.engine.adapters.list() if a.loaded}
    assert new.id in loaded


def test_metrics_carry_the_engines_gauges(vllm_service):
    time.sleep(2.5)  # gauges are read from vLLM every 2 s
    text = httpx.get(f"http://127.0.0.1:{vllm_service.metrics_port}/metrics").text
    for name in ("kv_cache_usage_ratio", "running_requests", "queue_size", "requests_total"):
        assert f"tuneyard_inference_{name}" in text


def test_a_larger_adapter_restarts_vllm_as_planned(vllm_service, smollm, vllm_adapters_dir):
    """vLLM was started for the rank on the volume (8), not the largest allowed (16): an
    adapter of rank 16 restarts it with --max-lora-rank 16. The stream in flight finishes,
    a request coming during the restart waits and is answered, nothing fails, and the
    adapters served before answer as they did."""
    engine, server = vllm_service.engine, vllm_service.engine.server
    assert engine.lora_rank == 8 and "--max-lora-rank" in server._args
    generation, restarts = server.generation, server.restarts

    def generate(adapter: str, max_new: int = 8) -> pb.GenerateResponse:
        with grpc.insecure_channel(f"127.0.0.1:{vllm_service.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            request = pb.GenerateRequest(
                inputs=PROMPTS[0],
                adapter_id=adapter,
                parameters=pb.GenerationParameters(max_new_tokens=max_new),
            )
            return stub.Generate(request, timeout=START_TIMEOUT_S)

    before = generate("alpha").generated_text
    replies: dict[str, object] = {}

    def ask(adapter: str) -> None:
        try:
            replies[adapter] = generate(adapter)
        except grpc.RpcError as err:
            replies[adapter] = err

    with grpc.insecure_channel(f"127.0.0.1:{vllm_service.port}") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        stream = stub.GenerateStream(
            pb.GenerateRequest(
                inputs=PROMPTS[1],
                adapter_id="beta",
                parameters=pb.GenerationParameters(max_new_tokens=48),
            ),
            timeout=START_TIMEOUT_S,
        )
        first = next(stream)  # in flight
        broad = make_adapter(smollm, vllm_adapters_dir, "broad", seed=7, r=16)
        asking = [threading.Thread(target=ask, args=("broad",))]
        asking[0].start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not engine._restarting:  # the restart waits for the stream
            assert time.monotonic() < deadline
            time.sleep(0.05)
        asking.append(threading.Thread(target=ask, args=("gamma",)))  # comes meanwhile
        asking[1].start()
        rest = list(stream)
    assert len(first.tokens) + sum(len(m.tokens) for m in rest) == 48
    assert rest[-1].details.finish_reason == pb.LENGTH
    for thread in asking:
        thread.join(timeout=START_TIMEOUT_S)
    assert isinstance(replies["broad"], pb.GenerateResponse), replies["broad"]
    assert replies["broad"].details.adapter == broad.id
    assert isinstance(replies["gamma"], pb.GenerateResponse), replies["gamma"]
    assert engine.lora_rank == 16
    # Planned: not counted as a crash. (A busy machine may add a missed health poll.)
    assert server.generation > generation and server.restarts == restarts
    assert server._args[server._args.index("--max-lora-rank") + 1] == "16"
    assert generate("alpha").generated_text == before


def _health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return reply.status


def test_a_dead_vllm_child_is_restarted(vllm_service, vllm_gateway):
    """Last in this module: the requests in flight fail with 503, health goes NOT_SERVING,
    and the service is healthy again by itself, adapters loaded again on use."""
    server = vllm_service.engine.server
    assert server.wait_ready(START_TIMEOUT_S)
    restarts = server.restarts
    assert _health(vllm_service.port) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(f"127.0.0.1:{vllm_service.port}") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        stream = stub.GenerateStream(
            pb.GenerateRequest(
                inputs=PROMPTS[1], parameters=pb.GenerationParameters(max_new_tokens=300)
            ),
            timeout=120,
        )
        next(stream)  # it is running
        killed = server.pid
        os.kill(killed, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as failed:
            list(stream)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    deadline = time.monotonic() + 30
    while _health(vllm_service.port) == health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    reply = httpx.post(
        f"{vllm_gateway.url}/generate",
        json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}},
        timeout=60,
    )
    assert reply.status_code == 503
    assert server.wait_ready(START_TIMEOUT_S) and server.restarts == restarts + 1
    with pytest.raises(ProcessLookupError):  # its engine processes went with it
        os.killpg(killed, 0)
    assert _health(vllm_service.port) == health_pb2.HealthCheckResponse.SERVING
    again = LoraxClient(vllm_gateway.url, timeout=120).generate(
        "Hi", max_new_tokens=3, adapter_id="alpha"
    )
    assert again.details.generated_tokens > 0
