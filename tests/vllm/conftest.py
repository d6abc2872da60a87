"""The vllm engine under test: the inference service with TUNEYARD_ENGINE=vllm (real vLLM,
the CPU build from `make vllm`, as a child process) on the embedded SmolLM2-135M, four
random adapters, and the real gateway in front. Started once: vLLM takes about a minute to
come up on 2 cores."""

import pytest

from inference_service.server import serve
from inference_service.settings import InferenceSettings
from tests.support.adapters import make_adapter
from tests.support.services import gateway_before
from tuneyard import embedded_model
from tuneyard.local_stack import free_port

ADAPTERS = ("alpha", "beta", "gamma", "delta")
START_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def smollm(tmp_path_factory):
    return embedded_model.prepare(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="session")
def vllm_adapters_dir(smollm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vllm-adapters")
    for seed, name in enumerate(ADAPTERS, start=1):
        make_adapter(smollm, folder, name, seed=seed, r=8)
    return folder


def vllm_settings(base, adapters_dir, **overrides) -> InferenceSettings:
    values = dict(
        engine="vllm",
        base_model=str(base),
        adapters_dir=adapters_dir,
        device="cpu",
        dtype="float32",
        inference_port=0,
        inference_metrics_port=free_port(),
        max_input_tokens=384,
        max_total_tokens=512,
        max_batch_size=16,
        max_loaded_adapters=6,
        max_adapter_rank=16,
        vllm_cpu_kv_cache_gib=1,
        # No torch.compile warm-up: a minute less to start on 2 cores.
        vllm_extra_args="--enforce-eager",
    )
    values.update(overrides)
    return InferenceSettings(**values)


@pytest.fixture(scope="session")
def vllm_service(smollm, vllm_adapters_dir):
    running = serve(vllm_settings(smollm, vllm_adapters_dir))
    assert running.engine.wait_ready(START_TIMEOUT_S), "vLLM did not become ready"
    yield running
    running.stop(grace=0)


@pytest.fixture(scope="session")
def vllm_gateway(vllm_service):
    gateway = gateway_before(vllm_service.port)
    yield gateway
    gateway.stop()
