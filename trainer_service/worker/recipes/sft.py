"""The instruction-tuning recipe on TRL's SFTTrainer: prompt-completion rows, loss on the
completion only (switchable), optional packing with TRL's "bfd" strategy. Rows longer than
max_seq_length were already dropped by validation (the length filter)."""

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from trainer_service.worker.recipes import RecipeContext, run_trainer, training_arguments
from tuneyard.templates import ChatTemplate


def prompt_completion(ctx: RecipeContext, rows) -> Dataset:
    """One example per row; a chat row gives one per assistant turn it trains on (each with
    the conversation before it as its prompt), so weight-0 turns stay out of the loss."""
    if isinstance(ctx.template, ChatTemplate):
        pairs = [pair for r in rows for pair in ctx.template.trained_turns(r.fields)]
    else:
        pairs = [
            (ctx.template.render_prompt(r.fields), ctx.template.render_response(r.fields))
            for r in rows
        ]
    return Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs])


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
