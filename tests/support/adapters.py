"""Real PEFT adapters with random non-zero weights, published as trained ones would be."""

import json
from pathlib import Path

import torch

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
