"""The worker's outputs: the loss-curve PNG and the adapter version with its manifest."""

import shutil
from pathlib import Path

from tuneyard.adapter_store import AdapterStore, AdapterVersion, Manifest

LOSS_CURVE = "loss_curve.png"


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


def publish(
    store: AdapterStore, model, tokenizer, manifest: Manifest, loss_curve: Path
) -> AdapterVersion:
    """Save into a staging folder and rename it into place; nothing is left on failure."""
    staging = store.staging_dir(manifest.name)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        shutil.copy2(loss_curve, staging / LOSS_CURVE)
        return store.publish(staging, manifest)
    except BaseException:
        store.discard(staging)
        raise
