"""The worker's side of the parity gate: the trained model, still in memory, generates
greedily for a few held-out prompts rendered with the adapter's template, and its tokens
and their log-probabilities go into the manifest; the trainer then asks the inference
service for the same prompts and compares (trainer_service/gate.py)."""

from tuneyard.adapter_store import GateProbe, ParityGate
from tuneyard.jobspec import JobSpec
from tuneyard.templates import PromptTemplate


def gate_probes(spec: JobSpec, model, tokenizer, template, eval_rows, train_rows) -> ParityGate:
    """The gate, `pending` with the trained model's generations; `skipped` (the name moves
    at once) when the job turns it off or its template is the chat template."""
    wanted = spec.parity_gate
    gate = ParityGate(tokens=wanted.tokens, min_agreement=wanted.min_agreement)
    if not wanted.prompts:
        return gate.model_copy(update={"state": "skipped", "reason": "parity_gate.prompts is 0"})
    if not isinstance(template, PromptTemplate):
        return gate.model_copy(
            update={"state": "skipped", "reason": "chat-template jobs are not gated yet"}
        )
    import torch

    model.eval()
    device = next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    probes = []
    for row in (eval_rows or train_rows)[: wanted.prompts]:
        # As the inference service gets them (strings), so both render the same prompt.
        fields = {
            k: str(v)
            for k, v in row.fields.items()
            if k in template.prompt_fields and v is not None
        }
        prompt = template.render_prompt(fields)
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=wanted.tokens,
                do_sample=False,
                eos_token_id=sorted(eos),
                pad_token_id=tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
        new = out.sequences[0, ids.shape[1] :].tolist()
        logprobs = [
            torch.log_softmax(logits[0].float(), dim=-1)[token].item()
            for logits, token in zip(out.logits, new, strict=True)
        ]
        probes.append(GateProbe(fields=fields, prompt=prompt, ids=new, logprobs=logprobs))
    return gate.model_copy(update={"probes": probes})


def _eos_ids(model, tokenizer) -> set[int]:
    """The ids the inference service ends a generation at: the generation config's and the
    tokenizer's end-of-sequence tokens."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured) if isinstance(configured, list) else {configured}
    return {i for i in ids | {tokenizer.eos_token_id} if i is not None}
