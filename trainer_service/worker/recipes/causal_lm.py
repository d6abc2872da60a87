"""The input-output schema recipe: each row rendered as prompt + response + EOS, loss on
the whole text, plain Trainer with the causal-LM collator (mlm=False)."""

from transformers import DataCollatorForLanguageModeling, Trainer

from trainer_service.worker.recipes import RecipeContext, training_arguments


class _CausalLMCollator(DataCollatorForLanguageModeling):
    """Where pad == EOS (common), the stock collator masks every EOS out of the labels and
    the model never learns to stop; mask by the attention mask instead."""

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch


def encode(ctx: RecipeContext, rows) -> list[dict]:
    template, tokenizer = ctx.spec.template.build(), ctx.tokenizer
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
    eval_data = encode(ctx, ctx.eval_rows) if ctx.eval_rows else None
    trainer = Trainer(
        model=ctx.model,
        args=training_arguments(ctx),
        train_dataset=encode(ctx, ctx.train_rows),
        eval_dataset=eval_data,
        data_collator=_CausalLMCollator(ctx.tokenizer, mlm=False),
        callbacks=[ctx.progress],
    )
    output = trainer.train()
    metrics = {
        "train_loss": output.training_loss,
        "steps": output.global_step,
        "train_runtime_s": output.metrics.get("train_runtime", 0.0),
    }
    if eval_data and not ctx.progress.stop.is_set():
        evaluated = ctx.progress.eval_losses
        if evaluated and evaluated[-1][0] == output.global_step:
            metrics["eval_loss"] = evaluated[-1][1]
        else:  # the run ended mid-epoch: one last evaluation (logged as an event too)
            metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    return metrics
