"""The input-output schema recipe: each row rendered as prompt + response + EOS, loss on
the whole text, plain Trainer with the causal-LM collator (mlm=False)."""

from transformers import DataCollatorForLanguageModeling, Trainer

from trainer_service.worker.recipes import RecipeContext, run_trainer, training_arguments


class _CausalLMCollator(DataCollatorForLanguageModeling):
    """Where pad == EOS (common), the stock collator masks every EOS out of the labels and
    the model never learns to stop; mask by the attention mask instead."""

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch


def encode(ctx: RecipeContext, rows) -> list[dict]:
    template, tokenizer = ctx.template, ctx.tokenizer
    texts = [
        template.render_prompt(r.fields) + template.render_response(r.fields) + tokenizer.eos_token
        for r in rows
    ]
    encoded = tokenizer(texts, truncation=True, max_length=ctx.spec.training.max_seq_length)
    return [
        {"input_ids": ids, "attention_mask": mask}
        for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
    ]


def train(ctx: RecipeContext) -> dict:
    ctx.tokenizer.padding_side = "right"
    trainer = Trainer(
        model=ctx.model,
        args=training_arguments(ctx, remove_unused_columns=False),
        train_dataset=encode(ctx, ctx.train_rows),
        eval_dataset=encode(ctx, ctx.eval_rows) if ctx.eval_rows else None,
        data_collator=_CausalLMCollator(ctx.tokenizer, mlm=False),
        processing_class=ctx.tokenizer,
        callbacks=[ctx.progress],
    )
    return run_trainer(ctx, trainer)
