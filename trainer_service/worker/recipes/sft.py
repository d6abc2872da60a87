"""The instruction-tuning recipe on TRL's SFTTrainer: prompt-completion rows, loss on the
completion only (switchable), optional packing with TRL's "bfd" strategy. Rows longer than
max_seq_length were already dropped by validation (the length filter)."""

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from trainer_service.worker.recipes import RecipeContext, run_trainer, training_arguments


def prompt_completion(ctx: RecipeContext, rows) -> Dataset:
    return Dataset.from_list(
        [
            {
                "prompt": ctx.template.render_prompt(r.fields),
                "completion": ctx.template.render_response(r.fields),
            }
            for r in rows
        ]
    )


def config(ctx: RecipeContext) -> SFTConfig:
    t = ctx.spec.training
    return training_arguments(
        ctx,
        SFTConfig,
        max_length=t.max_seq_length,
        completion_only_loss=t.completion_only_loss,
        packing=t.packing,
        packing_strategy="bfd",
        # Packing already makes equal-length sequences; without it, pad per batch.
        padding_free=t.packing,
    )


def train(ctx: RecipeContext) -> dict:
    ctx.tokenizer.padding_side = "right"
    trainer = SFTTrainer(
        model=ctx.model,
        args=config(ctx),
        train_dataset=prompt_completion(ctx, ctx.train_rows),
        eval_dataset=prompt_completion(ctx, ctx.eval_rows) if ctx.eval_rows else None,
        processing_class=ctx.tokenizer,
        callbacks=[ctx.progress],
    )
    return run_trainer(ctx, trainer)
