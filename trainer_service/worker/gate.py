"""The worker's side of the parity gate: the trained model, still in memory, generates
greedily for a few held-out prompts rendered with the adapter's template, and the prompts'
ids, its tokens, their log-probabilities and margins go into the manifest; the trainer
then has the inference service score the same tokens after the same prompts and compares
(trainer_service/gate.py)."""

from trainer_service import preference
from tuneyard.adapter_store import GateProbe, ParityGate
from tuneyard.errors import InvalidArgument
from tuneyard.jobspec import JobSpec
from tuneyard.templates import PromptTemplate, chat_messages


def gate_probes(spec: JobSpec, model, tokenizer, template, eval_rows, train_rows) -> ParityGate:
    """The gate, `pending` with the trained model's generations; `skipped` (the name moves
    at once) when the job turns it off or no row has a prompt the service can be sent."""
    wanted = spec.parity_gate
    gate = ParityGate(
        tokens=wanted.tokens,
        min_agreement=wanted.min_agreement,
        min_margin=wanted.min_margin,
        logprob_tolerance=wanted.logprob_tolerance,
    )
    if not wanted.prompts:
        return gate.model_copy(update={"state": "skipped", "reason": "parity_gate.prompts is 0"})
    model.eval()
    probes = []
    for row in eval_rows or train_rows:
        if len(probes) == wanted.prompts:
            break
        probe = _probe_input(spec, template, tokenizer, row)
        if probe is not None:
            probes.append(generated(probe, model, tokenizer, wanted.tokens))
    if not probes:
        return gate.model_copy(
            update={
                "state": "skipped",
                "reason": "no held-out row has a prompt of text turns to send the service",
            }
        )
    return gate.model_copy(update={"probes": probes})


def generated(probe: GateProbe, model, tokenizer, tokens: int) -> GateProbe:
    """The probe with the model's greedy tokens after its prompt: their ids,
    log-probabilities and margins over the next likeliest, and the prompt's ids."""
    import torch

    # As the inference service tokenizes it: a chat template writes its special tokens.
    encoded = tokenizer(
        probe.prompt, return_tensors="pt", add_special_tokens=probe.messages is None
    )
    ids = encoded["input_ids"].to(next(model.parameters()).device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=tokens,
            do_sample=False,
            eos_token_id=sorted(_eos_ids(model, tokenizer)),
            pad_token_id=tokenizer.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new = out.sequences[0, ids.shape[1] :].tolist()
    logprobs, margins = [], []
    for logits, token in zip(out.logits, new, strict=True):
        scores = torch.log_softmax(logits[0].float(), dim=-1)
        chosen = scores[token].item()
        scores[token] = -float("inf")
        logprobs.append(chosen)
        margins.append(chosen - scores.max().item())
    return probe.model_copy(
        update={"prompt_ids": ids[0].tolist(), "ids": new, "logprobs": logprobs, "margins": margins}
    )


def _probe_input(spec: JobSpec, template, tokenizer, row) -> GateProbe | None:
    """A row's prompt as the inference service is sent it: its template fields, or for a
    chat adapter the conversation before the answer (text turns only: a request's messages
    carry no tool calls), rendered as the service renders it; None for a row it cannot."""
    if isinstance(template, PromptTemplate):
        # Strings, as the service gets them, so both render the same prompt.
        fields = {
            k: str(v)
            for k, v in row.fields.items()
            if k in template.prompt_fields and v is not None
        }
        return GateProbe(fields=fields, prompt=template.render_prompt(fields), ids=[], logprobs=[])
    try:
        if spec.recipe == "dpo":
            pair = preference.parse(row.fields, row.line)
            turns, tools = pair.messages, pair.tools
        else:
            turns, tools = chat_messages(row.fields)[:-1], row.fields.get("tools")
    except InvalidArgument:
        return None
    if not turns or any(set(t) - {"role", "content"} for t in turns):
        return None
    messages = [{"role": t["role"], "content": t["content"]} for t in turns]
    prompt = tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=False, add_generation_prompt=True
    )
    return GateProbe(messages=messages, tools=tools or None, prompt=prompt, ids=[], logprobs=[])


def _eos_ids(model, tokenizer) -> set[int]:
    """The ids the inference service ends a generation at: the generation config's and the
    tokenizer's end-of-sequence tokens."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured) if isinstance(configured, list) else {configured}
    return {i for i in ids | {tokenizer.eos_token_id} if i is not None}
