"""The inference service over a real gRPC server on a loopback port."""

import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from inference_service.server import SERVICE_NAME, serve
from inference_service.settings import InferenceSettings
from tests.support.adapters import make_adapter
from tests.support.engines import count_requests, metric_total, promtool_check
from tuneyard.v1 import inference_pb2 as pb
from tuneyard.v1 import inference_pb2_grpc


@pytest.fixture(scope="module")
def running(tiny_llama, adapters_dir):
    make_adapter(tiny_llama, adapters_dir, "emails")
    server = serve(
        InferenceSettings(
            base_model=str(tiny_llama),
            adapters_dir=adapters_dir,
            inference_port=0,
            inference_metrics_port=0,
            device="cpu",
            dtype="float32",
        )
    )
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="module")
def channel(running):
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel):
    return inference_pb2_grpc.InferenceServiceStub(channel)


def request(**kwargs) -> pb.GenerateRequest:
    params = kwargs.pop("parameters", {"max_new_tokens": 6})
    return pb.GenerateRequest(parameters=pb.GenerationParameters(**params), **kwargs)


def test_generate_and_stream_agree(stub):
    response = stub.Generate(request(inputs="Hi there", adapter_id="emails"), timeout=30)
    assert response.details.generated_tokens == 6
    assert response.details.finish_reason == pb.LENGTH
    assert response.details.adapter == "emails@1"
    chunks = list(stub.GenerateStream(request(inputs="Hi there", adapter_id="emails"), timeout=30))
    assert sum(len(c.tokens) for c in chunks) == 6
    assert not chunks[0].HasField("generated_text")
    assert chunks[-1].generated_text == response.generated_text
    assert "".join(t.text for c in chunks for t in c.tokens) == response.generated_text


def test_details_over_grpc(stub):
    response = stub.Generate(
        request(
            inputs="Hi there",
            parameters={
                "max_new_tokens": 3,
                "details": True,
                "decoder_input_details": True,
                "do_sample": True,
                "seed": 5,
            },
        ),
        timeout=30,
    )
    d = response.details
    assert len(d.tokens) == 3 and d.seed == 5 and len(d.prefill) == d.prompt_tokens


@pytest.mark.parametrize(
    "adapter_id, code",
    [
        ("missing", grpc.StatusCode.NOT_FOUND),
        ("emails@9", grpc.StatusCode.NOT_FOUND),
        ("../etc", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_adapter_ids(stub, adapter_id, code):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(request(inputs="Hi", adapter_id=adapter_id), timeout=30)
    assert err.value.code() == code
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateStream(request(inputs="Hi", adapter_id=adapter_id), timeout=30))
    assert err.value.code() == code


def test_bad_parameters_are_invalid_argument(stub):
    for bad in (
        request(inputs="Hi", parameters={"max_new_tokens": 0}),
        request(inputs="Hi", parameters={"temperature": -1.0}),
        request(inputs=""),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(bad, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details()


def test_adapter_admin(stub):
    loaded = stub.LoadAdapter(pb.LoadAdapterRequest(adapter_id="emails"), timeout=30)
    assert (loaded.id, loaded.state, loaded.loaded, loaded.rank) == ("emails@1", "loaded", True, 4)
    assert sorted(loaded.target_modules) == ["q_proj", "v_proj"]
    listed = stub.ListAdapters(pb.ListAdaptersRequest(), timeout=30).adapters
    assert [a.id for a in listed if a.name == "emails"] == ["emails@1"]
    unloaded = stub.UnloadAdapter(pb.UnloadAdapterRequest(adapter_id="emails"), timeout=30)
    assert (unloaded.state, unloaded.loaded) == ("available", False)
    with pytest.raises(grpc.RpcError) as err:
        stub.LoadAdapter(pb.LoadAdapterRequest(adapter_id="nope"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_info(stub, tiny_llama):
    info = stub.Info(pb.InfoRequest(), timeout=30)
    assert info.model_id == tiny_llama.name
    assert (info.model_dtype, info.model_device_type) == ("float32", "cpu")
    assert info.max_total_tokens == 2048 and info.eos_token == "<|endoftext|>"


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = [s.name for s in next(answers).list_services_response.service]
    assert "tuneyard.v1.InferenceService" in names


def test_metrics_endpoint(tiny_llama, adapters_dir):
    server = serve(
        InferenceSettings(
            base_model=str(tiny_llama),
            adapters_dir=adapters_dir,
            inference_port=0,
            inference_metrics_port=0,
            device="cpu",
        )
    )
    server.stop(grace=0)  # metrics off: port 0
    assert server.metrics_server is None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    make_adapter(tiny_llama, adapters_dir, "capped", seed=3)
    server = serve(
        InferenceSettings(
            base_model=str(tiny_llama),
            adapters_dir=adapters_dir,
            inference_port=0,
            inference_metrics_port=port,
            device="cpu",
            metrics_max_adapters=1,
        )
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError):
                stub.Generate(request(inputs="Hi", adapter_id="ghost"), timeout=30)
            stub.Generate(request(inputs="Hi", adapter_id="emails"), timeout=30)
            list(stub.GenerateStream(request(inputs="Hi", adapter_id="capped"), timeout=30))
            stub.Generate(request(inputs="Hi"), timeout=30)
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
    finally:
        server.stop(grace=0)
    for name in (
        "requests_total",
        "request_duration_seconds_count",
        "generated_tokens_total",
        "prompt_tokens_total",
        "time_to_first_token_seconds_count",
        "time_per_output_token_seconds_count",
        "batch_size_count",
        "queue_size",
        "adapters_loaded",
        "adapter_load_duration_seconds_count",
        "adapter_evictions_total",
    ):
        assert f"tuneyard_inference_{name}" in text, name
    p = "tuneyard_inference_"
    # An unknown adapter takes no label value; the cap of 1 goes to the first real adapter.
    assert p + 'requests_total{adapter="other",route="Generate",status="not_found"} 1.0' in text
    assert p + 'requests_total{adapter="emails",route="Generate",status="ok"} 1.0' in text
    assert p + 'requests_total{adapter="other",route="GenerateStream",status="ok"} 1.0' in text
    assert p + 'requests_total{adapter="(base)",route="Generate",status="ok"} 1.0' in text
    assert p + 'generated_tokens_total{adapter="emails"} 6.0' in text
    assert p + 'adapter_load_duration_seconds_count{adapter="emails"} 1.0' in text
    assert p + 'adapter_load_duration_seconds_count{adapter="other"} 1.0' in text
    assert p + 'request_duration_seconds_count{route="GenerateStream"} 1.0' in text
    assert p + "adapters_loaded 2.0" in text
    assert "capped" not in text and "ghost" not in text
    promtool_check(text)


def test_client_cancel_stops_the_work(stub, running):
    def cancelled() -> float:
        return count_requests(running.metrics.registry, "cancelled")

    def generated() -> float:
        return metric_total(running.metrics.registry, "tuneyard_inference_generated_tokens")

    before, tokens_before = cancelled(), generated()
    call = stub.GenerateStream(
        request(inputs="Hi there", parameters={"max_new_tokens": 2000}), timeout=60
    )
    next(call)
    call.cancel()
    deadline = time.monotonic() + 10
    while cancelled() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + 1
    # This request's tokens, not the module's: it stopped long before max_new_tokens.
    assert generated() - tokens_before < 1000


@pytest.mark.parametrize("native", [False, True])
def test_auto_serves_bf16_where_the_cpu_runs_it_natively(
    tiny_llama, adapters_dir, monkeypatch, native
):
    """`auto` reads the CPU's flags (faked here, whatever this CPU has); Info says what it chose."""
    from tests.support.engines import make_engine
    from tuneyard import modeling

    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: native)
    engine = make_engine(tiny_llama, adapters_dir, dtype="auto")
    try:
        assert engine.info()["model_dtype"] == ("bfloat16" if native else "float32")
    finally:
        engine.stop()
