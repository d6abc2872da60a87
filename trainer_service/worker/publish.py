"""The worker's outputs: the loss-curve PNG, optional merged weights, and the adapter
version with its manifest."""

import shutil
from pathlib import Path

from tuneyard.adapter_store import (
    LOSS_CURVE,
    MERGED,
    AdapterStore,
    AdapterVersion,
    BaseQuantization,
    Manifest,
)
from tuneyard.modeling import BaseModelRef, load_model

# Largest |merged - (base + adapter)| logit difference accepted, fp32 on the same device.
MERGE_ATOL = 1e-3


def write_loss_curve(
    path: Path, losses: list[tuple[int, float]], eval_losses: list[tuple[int, float]], title: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if losses:
        ax.plot(*zip(*losses, strict=True), label="train loss")
    if eval_losses:
        ax.plot(*zip(*eval_losses, strict=True), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if losses or eval_losses:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_merged(
    ref: BaseModelRef,
    adapter_dir: Path,
    tokenizer,
    device: str,
    dequantized: BaseQuantization | None = None,
) -> dict[str, float]:
    """Merge the saved adapter into an unquantized fp32 copy of the base, check that the
    merged model's logits match base + adapter, and save it in adapter_dir/merged.
    `dequantized`: the base as the adapter trained on it (4 or 8 bit), whose weights are
    dequantized to fp32 and merged into instead of the original ones; the logits of the
    quantized base + adapter are compared too. Returns the metrics: the largest logit
    difference to base + adapter (raises ValueError past MERGE_ATOL), and with
    `dequantized` to the quantized base + adapter (int8 matmuls also round activations:
    not 0 for 8 bit)."""
    import torch
    from peft import PeftModel

    probe = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    probe = {k: v.to(device) for k, v in probe.items()}
    metrics = {}
    with torch.no_grad():
        if dequantized is None:
            base = load_model(ref, device=device, dtype=torch.float32)
        else:
            quantized = load_model(
                ref,
                device=device,
                dtype=torch.float32,
                quantization=dequantized.mode,
                quant_type=dequantized.quant_type or "nf4",
                double_quant=dequantized.double_quant,
                compute_dtype=torch.float32,
            )
            as_trained = PeftModel.from_pretrained(quantized, adapter_dir).eval()
            trained_logits = as_trained(**probe).logits
            base = as_trained.unload().dequantize()
        tuned = PeftModel.from_pretrained(base, adapter_dir).eval()
        expected = tuned(**probe).logits
        merged = tuned.merge_and_unload()
        logits = merged(**probe).logits
        diff = (logits - expected).abs().max().item()
        if dequantized is not None:
            metrics["merge_quantized_max_logit_diff"] = (logits - trained_logits).abs().max().item()
    if not diff <= MERGE_ATOL:
        raise ValueError(
            f"merged weights disagree with base + adapter: max logit difference {diff:.3g} "
            f"> {MERGE_ATOL}; nothing published"
        )
    merged.save_pretrained(adapter_dir / MERGED, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir / MERGED)
    return {"merge_max_logit_diff": diff, **metrics}


def publish(
    store: AdapterStore,
    model,
    tokenizer,
    manifest: Manifest,
    loss_curve: Path | None,
    merge_with: tuple[BaseModelRef, str, BaseQuantization | None] | None = None,
) -> AdapterVersion:
    """Save into a staging folder and rename it into place; nothing is left on failure.
    `merge_with` = (base, device, the quantized base to dequantize or None) also writes
    checked merged weights."""
    staging = store.staging_dir(manifest.name)
    try:
        # Not the whole resized embedding of a job that added tokens: PEFT's trainable
        # tokens hold their rows, and the base's rows are the base's.
        model.save_pretrained(staging, safe_serialization=True, save_embedding_layers=False)
        tokenizer.save_pretrained(staging)
        if loss_curve is not None:
            shutil.copy2(loss_curve, staging / LOSS_CURVE)
        if merge_with is not None:
            ref, device, dequantized = merge_with
            metrics = write_merged(ref, staging, tokenizer, device, dequantized)
            merged_on = dequantized or BaseQuantization.of("none", dtype="float32")
            manifest = manifest.model_copy(
                update={"metrics": {**manifest.metrics, **metrics}, "merged_on": merged_on}
            )
        return store.publish(staging, manifest)
    except BaseException:
        store.discard(staging)
        raise


# Trainer state in a checkpoint folder that is not part of an adapter.
_CHECKPOINT_ONLY = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin")


def publish_checkpoint(store: AdapterStore, checkpoint: Path, manifest: Manifest) -> AdapterVersion:
    """Publish a Trainer checkpoint folder (a PEFT adapter plus trainer state) as a version."""
    staging = store.staging_dir(manifest.name)
    try:
        for item in Path(checkpoint).iterdir():
            if (
                item.is_file()
                and item.name not in _CHECKPOINT_ONLY
                and not item.name.startswith(("rng_state", "tuneyard_"))  # tuneyard's marks
            ):
                shutil.copy2(item, staging / item.name)
        if not (staging / "adapter_config.json").is_file():
            raise ValueError(f"checkpoint {checkpoint} holds no adapter")
        return store.publish(staging, manifest)
    except BaseException:
        store.discard(staging)
        raise
