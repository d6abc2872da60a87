"""The demo's flow with the inference service in bf16, as `auto` serves on a CPU with
native bf16 (AMX, AVX512-BF16) and on every GPU, while the worker trains in float32: the
demo's own job spec trains, its parity gate passes across the two dtypes, and the adapter
answers by its bare name through huggingface_hub's TGI client, OpenAI's and LoRAX's, as
the README says."""

import httpx
import lorax
import openai
import pytest
from huggingface_hub import InferenceClient

from tuneyard.client import GatewayClient
from tuneyard.demo import SPEC
from tuneyard.jobspec import JobSpec
from tuneyard.local_stack import LocalStack
from tuneyard.progress import follow_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_llama):
    home = tmp_path_factory.mktemp("home")
    with LocalStack(
        home=home,
        base_model=str(tiny_llama),
        extra_env={"HF_HUB_OFFLINE": "1", "TUNEYARD_DTYPE": "bfloat16"},
    ) as running:
        yield running


def test_the_demo_adapter_is_live_by_name_when_served_in_bf16(stack):
    spec = JobSpec.from_yaml(SPEC)
    spec = spec.model_copy(
        update={"training": spec.training.model_copy(update={"epochs": 1, "max_steps": 3})}
    )
    client = GatewayClient(stack.gateway_url)
    job = follow_job(client, client.create_job(spec)["id"])
    assert job["status"] == "succeeded", job.get("error")
    name = spec.adapter_name
    assert client.model(name)["root"] == job["fine_tuned_model"] == f"{name}@1"
    gate = [e["message"] for e in client.stream_events(job["id"]) if "parity gate" in e["message"]]
    assert any("(float32 trained, bfloat16 served)" in m and "passed" in m for m in gate), gate

    prompt = "### Product\nLamp\n\n### Description\nA bright lamp.\n\n### Email\n"
    # The text-generation client (0.7.0) has no adapter_id; huggingface_hub's has TGI's.
    tgi = InferenceClient(model=stack.gateway_url, timeout=120).text_generation(
        prompt, adapter_id=name, max_new_tokens=4, details=True
    )
    assert tgi.details.generated_tokens == 4
    oai = openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key="unused")
    completion = oai.completions.create(model=name, prompt=prompt, max_tokens=4, temperature=0)
    assert completion.choices[0].text == tgi.generated_text
    answer = lorax.Client(stack.gateway_url, timeout=120).generate(
        prompt, adapter_id=name, max_new_tokens=4
    )
    assert answer.generated_text == tgi.generated_text
    # Where users look for the dtype: /info, and how /v1/adapters says the base is held.
    assert httpx.get(f"{stack.gateway_url}/info", timeout=30).json()["model_dtype"] == "bfloat16"
    listed = httpx.get(f"{stack.gateway_url}/v1/adapters", timeout=30).json()["data"]
    assert {a["id"]: a["served_on"] for a in listed}[f"{name}@1"] == "none (bfloat16)"
