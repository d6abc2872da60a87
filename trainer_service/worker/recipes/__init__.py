"""Training recipes. A recipe is a module with `train(ctx: RecipeContext) -> dict` that
trains `ctx.model` (already wrapped in LoRA) on the rows and returns its final metrics;
loading, cancellation and publishing are the worker's, the same for every recipe."""

import importlib
from dataclasses import dataclass
from pathlib import Path

from trainer_service.dataset import Row
from trainer_service.worker.progress import ProgressCallback
from tuneyard.jobspec import JobSpec

RECIPES = ("causal_lm",)


@dataclass
class RecipeContext:
    spec: JobSpec
    model: object
    tokenizer: object
    train_rows: list[Row]
    eval_rows: list[Row]
    output_dir: Path
    device: str
    dtype: object
    progress: ProgressCallback


def get_recipe(name: str):
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r} is not available; available: {', '.join(RECIPES)}")
    return importlib.import_module(f"trainer_service.worker.recipes.{name}")


def training_arguments(ctx: RecipeContext, cls=None, **extra):
    """The Trainer arguments every recipe shares, from the spec; `cls` may be a subclass
    such as TRL's SFTConfig."""
    from transformers import TrainingArguments

    t = ctx.spec.training
    has_eval = bool(ctx.eval_rows)
    return (cls or TrainingArguments)(
        output_dir=str(ctx.output_dir),
        max_steps=t.max_steps or -1,
        num_train_epochs=t.epochs,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        logging_steps=t.logging_steps,
        seed=t.seed,
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=ctx.device == "cpu",
        bf16=str(ctx.dtype) == "torch.bfloat16",
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        **extra,
    )
