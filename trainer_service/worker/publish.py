"""The worker's outputs: the loss-curve PNG, optional merged weights, and the adapter
version with its manifest."""

import shutil
from pathlib import Path

from tuneyard.adapter_store import LOSS_CURVE, AdapterStore, AdapterVersion, Manifest
from tuneyard.modeling import BaseModelRef, load_model

MERGED = "merged"
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


def write_merged(ref: BaseModelRef, adapter_dir: Path, tokenizer, device: str) -> float:
    """Merge the saved adapter into an unquantized fp32 copy of the base, check that the
    merged model's logits match base + adapter, and save it in adapter_dir/merged.
    Returns the largest logit difference; raises ValueError past MERGE_ATOL."""
    import torch
    from peft import PeftModel

    base = load_model(ref, device=device, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, adapter_dir).eval()
    probe = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    probe = {k: v.to(device) for k, v in probe.items()}
    with torch.no_grad():
        expected = tuned(**probe).logits
        merged = tuned.merge_and_unload()
        diff = (merged(**probe).logits - expected).abs().max().item()
    if not diff <= MERGE_ATOL:
        raise ValueError(
            f"merged weights disagree with base + adapter: max logit difference {diff:.3g} "
            f"> {MERGE_ATOL}; nothing published"
        )
    merged.save_pretrained(adapter_dir / MERGED, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir / MERGED)
    return diff


def publish(
    store: AdapterStore,
    model,
    tokenizer,
    manifest: Manifest,
    loss_curve: Path | None,
    merge_with: tuple[BaseModelRef, str] | None = None,
) -> AdapterVersion:
    """Save into a staging folder and rename it into place; nothing is left on failure.
    `merge_with` = (base, device) also writes checked merged weights."""
    staging = store.staging_dir(manifest.name)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if loss_curve is not None:
            shutil.copy2(loss_curve, staging / LOSS_CURVE)
        if merge_with is not None:
            diff = write_merged(merge_with[0], staging, tokenizer, merge_with[1])
            manifest = manifest.model_copy(
                update={"metrics": {**manifest.metrics, "merge_max_logit_diff": diff}}
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
