"""Training recipes. A recipe is a module with `train(ctx: RecipeContext) -> dict` that
trains `ctx.model` (already wrapped in LoRA) on the rows and returns its final metrics;
loading, cancellation, checkpoints and publishing are the worker's, the same for every
recipe."""

import importlib
from dataclasses import dataclass
from pathlib import Path

from trainer_service.dataset import Row
from trainer_service.worker.progress import ProgressCallback
from tuneyard.jobspec import JobSpec

RECIPES = ("causal_lm", "sft", "dpo")


@dataclass
class RecipeContext:
    spec: JobSpec
    model: object
    tokenizer: object
    template: object  # PromptTemplate or ChatTemplate
    train_rows: list[Row]
    eval_rows: list[Row]
    output_dir: Path
    device: str
    dtype: object
    progress: ProgressCallback
    resume_from: str | None = None  # a checkpoint folder of an earlier run of this job


def get_recipe(name: str):
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r} is not available; available: {', '.join(RECIPES)}")
    return importlib.import_module(f"trainer_service.worker.recipes.{name}")


def training_arguments(ctx: RecipeContext, cls=None, **extra):
    """The Trainer arguments every recipe shares, from the spec; `cls` may be a subclass
    such as TRL's SFTConfig."""
    from transformers import TrainingArguments

    t = ctx.spec.training
    eval_strategy = "no" if not ctx.eval_rows else "steps" if t.eval_steps else "epoch"
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
        optim=t.optimizer,
        # Set up on the model already (model.py); said here too, as TRL's default is on.
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps or None,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        report_to=[],
        disable_tqdm=True,
        use_cpu=ctx.device == "cpu",
        bf16=str(ctx.dtype) == "torch.bfloat16",
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        **extra,
    )


def run_trainer(ctx: RecipeContext, trainer) -> dict:
    """Train (resuming if asked) and return the final metrics, with an eval loss at the
    last step when there is an eval split."""
    output = trainer.train(resume_from_checkpoint=ctx.resume_from)
    metrics = {
        "train_loss": output.training_loss,
        "steps": output.global_step,
        "train_runtime_s": output.metrics.get("train_runtime", 0.0),
    }
    if ctx.eval_rows and not ctx.progress.stop.is_set():
        evaluated = ctx.progress.eval_losses
        if evaluated and evaluated[-1][0] == output.global_step:
            metrics["eval_loss"] = evaluated[-1][1]
        else:  # the run ended between evaluations: one last one (logged as an event too)
            metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    return metrics
