"""Preference tuning on TRL's DPOTrainer: each row's preferred and non-preferred answers to
the same conversation, rendered by the base model's chat template; the loss raises the
preferred answer's log-probability over the other's, relative to the reference model.

The reference is the base model itself (the adapter switched off): the worker's LoRA is
fresh (its B matrices are zero), so before training adapter and base agree. TRL would keep
a frozen copy of the adapter as "ref" instead; dropping it saves its memory and keeps
checkpoints and the published folder to the one adapter. Rows longer than max_seq_length
were already dropped by validation."""

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from trainer_service.validation import preferences
from trainer_service.worker.recipes import RecipeContext, run_trainer, training_arguments

REFERENCE_ADAPTER = "ref"  # the name TRL gives its copy of the adapter


def preference_dataset(rows) -> Dataset:
    return Dataset.from_list([pair.example() for pair in preferences(rows)])


def config(ctx: RecipeContext) -> DPOConfig:
    return training_arguments(
        ctx,
        DPOConfig,
        beta=ctx.spec.dpo.beta,
        max_length=ctx.spec.training.max_seq_length,
    )


def train(ctx: RecipeContext) -> dict:
    ctx.tokenizer.padding_side = "right"
    trainer = DPOTrainer(
        model=ctx.model,
        args=config(ctx),
        train_dataset=preference_dataset(ctx.train_rows),
        eval_dataset=preference_dataset(ctx.eval_rows) if ctx.eval_rows else None,
        processing_class=ctx.tokenizer,
        callbacks=[ctx.progress],
    )
    if REFERENCE_ADAPTER in ctx.model.peft_config:
        ctx.model.delete_adapter(REFERENCE_ADAPTER)
    return run_trainer(ctx, trainer)
