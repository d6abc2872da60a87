"""Fixtures of the inference tests: real PEFT adapters published to a real adapter store,
and one engine on tiny_llama shared by a module."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from inference_service.engine import Engine
from inference_service.settings import InferenceSettings
from tests.conftest import EMAIL_TEMPLATE
from tuneyard.adapter_store import AdapterStore, Manifest
from tuneyard.modeling import add_tokens, load_tokenizer, resolve_base_model


def make_adapter(
    base_path: Path,
    adapters_dir: Path,
    name: str,
    *,
    seed: int = 1,
    r: int = 4,
    target_modules=("q_proj", "v_proj"),
    base_model: str | None = None,
    added_tokens: tuple[str, ...] = (),
    **lora_kwargs,
):
    """Train nothing: a PEFT LoRA with random non-zero A and B, published with a manifest.
    `added_tokens`: added to its tokenizer (published with it), their embedding rows
    PEFT's trainable tokens, random and strong enough to be generated."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    ref = resolve_base_model(str(base_path))
    tokenizer = load_tokenizer(ref)
    ids = add_tokens(tokenizer, list(added_tokens))
    if ids:
        model.resize_token_embeddings(len(tokenizer))
        lora_kwargs["trainable_token_indices"] = {"embed_tokens": ids}
    config = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=list(target_modules),
        init_lora_weights=False,
        **lora_kwargs,
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.mul_(20)  # strong enough to change greedy tokens of a random model
            if "trainable_tokens_delta" in n:
                p.normal_(0, 1)
    store = AdapterStore(adapters_dir)
    staging = store.staging_dir(name)
    peft_model.save_pretrained(staging)
    if ids:
        tokenizer.save_pretrained(staging)
    manifest = Manifest(
        name=name,
        base_model=base_model if base_model is not None else ref.id,
        base_model_revision=ref.revision if base_model is None else "",
        recipe="causal_lm",
        template_prompt=EMAIL_TEMPLATE["prompt"],
        template_response=EMAIL_TEMPLATE["response"],
        template_sha256="x",
        added_tokens=list(added_tokens),
    )
    return store.publish(staging, manifest)


def edit_adapter_config(version, **changes):
    path = version.path / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def make_engine(base_path: Path, adapters_dir: Path, **settings) -> Engine:
    """float32 unless a test asks for another dtype: what a test compares must not depend on
    the CPU (auto serves bf16 where it is native) nor on TUNEYARD_DTYPE."""
    values = dict(
        base_model=str(base_path),
        adapters_dir=adapters_dir,
        device="cpu",
        dtype="float32",
        inference_metrics_port=0,
        max_batch_wait_ms=50,
    )
    values.update(settings)
    return Engine.load(InferenceSettings(**values))


def submit_together(engine: Engine, cases: list[tuple[str, str]], max_new_tokens: int):
    """Submit every (prompt, adapter) case at once: (their sequences, their results, the
    batch sizes the scheduler ran), so a test can check they were batched."""
    from inference_service.params import GenerateInput, Parameters

    batch_sizes, record = [], engine.scheduler.on_batch
    engine.scheduler.on_batch = lambda n: (batch_sizes.append(n), record(n))
    try:
        parameters = Parameters(max_new_tokens=max_new_tokens, details=True)
        seqs = [
            engine.submit(GenerateInput(inputs=p, adapter_id=a, parameters=parameters))
            for p, a in cases
        ]
        results = [s.result(60) for s in seqs]
    finally:
        engine.scheduler.on_batch = record
    return seqs, results, batch_sizes


def count_requests(registry, status: str) -> float:
    """tuneyard_inference_requests_total with this status, over every route and adapter."""
    return sum(
        sample.value
        for family in registry.collect()
        if family.name == "tuneyard_inference_requests"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["status"] == status
    )


def promtool_check(text: str) -> None:
    """`promtool check metrics` passes on an exposition (skips when promtool is missing)."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, text=True, capture_output=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def two_adapters(tiny_llama, adapters_dir):
    return (
        make_adapter(tiny_llama, adapters_dir, "alpha", seed=1),
        make_adapter(
            tiny_llama,
            adapters_dir,
            "beta",
            seed=2,
            r=8,
            target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"),
        ),
    )


@pytest.fixture(scope="module")
def dora_and_rslora(tiny_llama, adapters_dir, two_adapters):
    """A DoRA adapter (its magnitudes away from the weight norms: B grew after PEFT set
    them), an rsLoRA one (alpha / sqrt(r)), and one that is both."""
    return (
        make_adapter(tiny_llama, adapters_dir, "dora", seed=3, use_dora=True),
        make_adapter(tiny_llama, adapters_dir, "rslora", seed=4, r=8, use_rslora=True),
        make_adapter(
            tiny_llama,
            adapters_dir,
            "dora-rs",
            seed=5,
            target_modules=("q_proj", "o_proj", "gate_proj"),
            use_dora=True,
            use_rslora=True,
        ),
    )


@pytest.fixture(scope="module", params=["dynamic", "static"])
def engine(request, tiny_llama, adapters_dir):
    """The engine on both decode paths: a growing KV cache, and the static KV buffers that
    a GPU replays as CUDA graphs (the same step without the graphs on the CPU)."""
    engine = make_engine(tiny_llama, adapters_dir, decode=request.param)
    yield engine
    engine.stop()
