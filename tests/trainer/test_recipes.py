"""The recipes and their knobs, each run by the real worker process on tiny models: sft
(completion-only loss, bfd packing, eval every N steps, checkpoints), 8-bit and 4-bit
LoRA (test_worker.py, test_example_specs.py), all-linear targets, bias, merge."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.trainer.conftest import make_spec
from tests.trainer.test_worker import run_worker
from trainer_service.checkpoints import list_checkpoints, publish_checkpoint
from tuneyard.adapter_store import AdapterStore, BaseQuantization

pytestmark = pytest.mark.slow


def _ok(code, workdir):
    assert code == 0, (workdir / "worker.log").read_text()[-3000:]


def _metrics(events):
    return [e["metrics"] for e in events if e["type"] == "metrics"]


def test_sft_packing_eval_steps_and_checkpoints(settings, tiny_llama, email_jsonl):
    spec = make_spec(
        tiny_llama,
        email_jsonl,
        recipe="sft",
        data={"eval_fraction": 0.25},
        training={"max_steps": 4, "eval_steps": 2, "save_steps": 2, "packing": True},
    )
    code, events, workdir = run_worker(settings, spec)
    _ok(code, workdir)
    evals = [m["step"] for m in _metrics(events) if "eval_loss" in m]
    assert evals == [2, 4]  # every 2 steps, not once per epoch
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2, 4]

    version = AdapterStore(settings.resolved_adapters_dir).resolve("emails")
    manifest = version.manifest()
    assert manifest.recipe == "sft" and manifest.hyperparameters["training"]["packing"] is True
    assert manifest.metrics["steps"] == 4 and manifest.metrics["eval_loss"] > 0

    checkpoints = list_checkpoints(workdir, "ftjob-test")
    assert [c.step for c in checkpoints] == [2, 4]
    assert checkpoints[0].metrics["loss"] > 0 and checkpoints[0].metrics["eval_loss"] > 0
    # Each checkpoint is a model of its own, which takes no version of the job's adapter.
    assert [c.model for c in checkpoints] == [
        "ftjob-test-ckpt-step-2@1",
        "ftjob-test-ckpt-step-4@1",
    ]
    own = AdapterStore(settings.resolved_adapters_dir).resolve("ftjob-test-ckpt-step-2")
    assert own.manifest().metrics["checkpoint_step"] == 2 and own.manifest().job_id == "ftjob-test"
    assert own.manifest().template_sha256 == manifest.template_sha256
    assert not list(own.path.glob("tuneyard_*")) and not (own.path / "optimizer.pt").exists()
    assert [v.id for v in AdapterStore(settings.resolved_adapters_dir).versions("emails")] == [
        "emails@1"
    ]
    published, _ = publish_checkpoint(
        AdapterStore(settings.resolved_adapters_dir), workdir, "ftjob-test", 2
    )
    assert published.published_as == "emails@2"
    again, _ = publish_checkpoint(
        AdapterStore(settings.resolved_adapters_dir), workdir, "ftjob-test", 2
    )
    assert again.published_as == "emails@2"  # once only
    ckpt = AdapterStore(settings.resolved_adapters_dir).resolve("emails@2")
    assert ckpt.manifest().metrics["checkpoint_step"] == 2
    assert not (ckpt.path / "optimizer.pt").exists()
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), ckpt.path)


def _sft_batch(tiny_llama, email_jsonl, tmp_path, **training):
    """The training batches the sft recipe's SFTTrainer builds, in this process."""
    import threading

    from trainer_service.validation import validate
    from trainer_service.worker.model import lora_model
    from trainer_service.worker.progress import ProgressCallback
    from trainer_service.worker.recipes import RecipeContext, sft
    from tuneyard.modeling import load_tokenizer

    spec = make_spec(tiny_llama, email_jsonl, recipe="sft", training=training)
    report = validate(spec, tmp_path)
    tokenizer = load_tokenizer(report.base_model)
    ctx = RecipeContext(
        spec=spec,
        model=lora_model(spec, report.base_model, "cpu", torch.float32),
        tokenizer=tokenizer,
        template=spec.template.build(tokenizer),
        train_rows=report.train,
        eval_rows=[],
        output_dir=tmp_path / "out",
        device="cpu",
        dtype=torch.float32,
        progress=ProgressCallback(None, threading.Event(), "cpu"),
    )
    trainer = sft.SFTTrainer(
        model=ctx.model,
        args=sft.config(ctx),
        train_dataset=sft.prompt_completion(ctx, ctx.train_rows),
        processing_class=tokenizer,
    )
    return list(trainer.get_train_dataloader()), ctx


def test_sft_completion_only_loss_masks_the_prompt(tiny_llama, email_jsonl, tmp_path):
    [batch, *_], ctx = _sft_batch(tiny_llama, email_jsonl, tmp_path, completion_only_loss=True)
    prompt = ctx.template.render_prompt(ctx.train_rows[0].fields)
    n_prompt = len(ctx.tokenizer(prompt)["input_ids"])
    labels, mask = batch["labels"][0], batch["attention_mask"][0]
    assert (labels[:n_prompt] == -100).all()
    assert (labels[n_prompt : int(mask.sum())] != -100).all()

    [batch, *_], _ = _sft_batch(tiny_llama, email_jsonl, tmp_path, completion_only_loss=False)
    labels, mask = batch["labels"][0], batch["attention_mask"][0]
    assert (labels[: int(mask.sum())] != -100).all()  # the whole text


def test_sft_packing_fills_rows_without_padding(tiny_llama, tmp_path):
    varied = tmp_path / "varied.jsonl"
    rows = [
        {"product": f"P{i}", "description": "word " * (1 + 7 * i), "email": "Buy it. " * (i + 1)}
        for i in range(8)
    ]
    varied.write_text("".join(json.dumps(r) + "\n" for r in rows))
    padded, _ = _sft_batch(tiny_llama, varied, tmp_path, packing=False, batch_size=4)
    packed, ctx = _sft_batch(tiny_llama, varied, tmp_path, packing=True, batch_size=1)
    kept = len(ctx.train_rows)  # the length filter dropped rows over 128 tokens
    assert 3 <= kept < len(rows)
    assert any((b["attention_mask"] == 0).any() for b in padded)  # varied lengths, padded
    # bfd packs several rows into one sequence, told apart by restarting position ids.
    starts = sum(int((b["position_ids"][0] == 0).sum()) for b in packed)
    assert starts == kept and len(packed) < kept
    assert all("attention_mask" not in b or b["attention_mask"].all() for b in packed)


def test_bloom_8bit_all_linear_bias_and_merge(settings, tiny_bloom, email_jsonl):
    spec = make_spec(
        tiny_bloom,
        email_jsonl,
        quantization="8bit",
        merge=True,
        lora={"target_modules": ["all-linear"], "bias": "lora_only"},
    )
    code, events, workdir = run_worker(settings, spec)
    _ok(code, workdir)
    version = AdapterStore(settings.resolved_adapters_dir).resolve("emails")
    config = json.loads((version.path / "adapter_config.json").read_text())
    targets = {name.split(".")[-1] for name in config["target_modules"]}
    assert targets >= {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    assert config["bias"] == "lora_only"
    assert version.manifest().hyperparameters["quantization"] == "8bit"
    assert 0 <= version.manifest().metrics["merge_max_logit_diff"] <= 1e-3

    # The merged weights are a plain model equal to base + adapter.
    merged = AutoModelForCausalLM.from_pretrained(version.path / "merged")
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_bloom), version.path
    )
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, tuned(ids).logits, atol=1e-3)
    assert str(version.path / "merged") in events[-1]["result_files"]


CHAT = {"builtin": "chat", "prompt": "", "response": ""}  # over make_spec's email template
TOOL_CALL = {"id": "c1", "type": "function", "function": {"name": "order", "arguments": "{}"}}
TOOL_ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Order {i} lamps"},
            {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "ordered"},
            {"role": "assistant", "content": [{"type": "text", "text": f"{i} lamps ordered."}]},
        ],
        "tools": [{"type": "function", "function": {"name": "order", "parameters": {}}}],
    }
    for i in range(6)
]


def test_sft_trains_on_openai_function_calling_rows(settings, tiny_llama, tmp_path):
    """Assistant tool-call turns are trained on, as OpenAI's function-calling fine-tuning;
    on a model whose chat template drops tool calls, the row is refused before compute."""
    from trainer_service.validation import JobValidationError, validate
    from tuneyard.modeling import load_tokenizer, resolve_base_model

    path = tmp_path / "calls.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in TOOL_ROWS))
    # The tiny tokenizer spends many tokens on the tools' JSON.
    spec = make_spec(
        tiny_llama, path, recipe="sft", template=CHAT, training={"max_seq_length": 512}
    )
    code, events, workdir = run_worker(settings, spec)
    _ok(code, workdir)
    assert "on 6 rows" in next(e["message"] for e in events if "LoRA r=" in e.get("message", ""))
    assert _metrics(events)[-1]["loss"] > 0

    no_calls = tmp_path / "no-calls-model"
    tokenizer = load_tokenizer(resolve_base_model(str(tiny_llama)))
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    AutoModelForCausalLM.from_pretrained(tiny_llama).save_pretrained(no_calls)
    tokenizer.save_pretrained(no_calls)
    with pytest.raises(JobValidationError) as caught:
        validate(make_spec(no_calls, path, recipe="sft", template=CHAT), tmp_path)
    assert caught.value.line == 1 and caught.value.param == "template.builtin"
    assert "does not write an assistant message's tool_calls" in caught.value.message


@pytest.mark.parametrize(
    "recipe, quantization, dora",
    [
        ("causal_lm", "none", True),
        ("sft", "none", True),
        ("dpo", "none", True),
        ("causal_lm", "8bit", False),  # DoRA on 8-bit trains on GPUs only (next test)
        ("sft", "4bit", True),
        ("dpo", "4bit", True),
    ],
)
def test_dora_and_rslora_jobs_are_trained_and_served(
    settings, tiny_llama, email_jsonl, tmp_path, recipe, quantization, dora
):
    """`lora.use_dora` and `lora.use_rslora` reach PEFT in every recipe and quantization
    mode; the published adapter is a DoRA / rsLoRA one, and the native engine serves it
    with PEFT's greedy tokens."""
    from tests.inference.test_engine import greedy, peft_greedy
    from tests.support.engines import make_engine
    from tests.trainer.test_dpo import PAIRS, dpo_spec
    from tests.trainer.test_gateway_training import jsonl

    knobs = {"lora": {"r": 4, "alpha": 8, "use_dora": dora, "use_rslora": True}}
    if recipe == "dpo":
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_bytes(jsonl(*PAIRS))
        spec = dpo_spec(
            tiny_llama, pairs, quantization=quantization, training={"max_steps": 2}, **knobs
        )
    else:
        spec = make_spec(tiny_llama, email_jsonl, recipe=recipe, quantization=quantization, **knobs)
    code, events, workdir = run_worker(settings, spec)
    _ok(code, workdir)
    version = AdapterStore(settings.resolved_adapters_dir).resolve(spec.adapter_name)
    config = json.loads((version.path / "adapter_config.json").read_text())
    assert config["use_dora"] is dora and config["use_rslora"] is True
    lora = version.manifest().hyperparameters["lora"]
    assert lora["use_dora"] is dora and lora["use_rslora"] is True
    # How the base was held while it trained (the CPU's auto dtype is float32).
    assert version.manifest().trained_on == BaseQuantization.of(
        quantization, "nf4", True, "float32"
    )

    engine = make_engine(tiny_llama, settings.resolved_adapters_dir)
    try:
        prompt = "Hi there, our new product"
        got = greedy(engine, prompt, spec.adapter_name)
        assert got == peft_greedy(tiny_llama, version, prompt, 8)
        adapter = engine.adapters.acquire(spec.adapter_name)
        assert adapter.weights.dora is dora and adapter.weights.scaling == 8 / 4**0.5
        engine.adapters.release(adapter)
    finally:
        engine.stop()


def test_dora_on_an_8bit_base_is_refused_on_a_cpu(tiny_llama, email_jsonl):
    """PEFT's DoRA re-reads the int8 weights every step, which on a CPU drops their scales
    (the next forward fails deep in bitsandbytes): the job says so before loading."""
    from trainer_service.worker.model import lora_model
    from tuneyard.modeling import resolve_base_model

    spec = make_spec(tiny_llama, email_jsonl, quantization="8bit", lora={"use_dora": True})
    with pytest.raises(ValueError, match="use_dora on an 8-bit base does not train on a CPU"):
        lora_model(spec, resolve_base_model(str(tiny_llama)), "cpu", torch.float32)


def test_tokens_added_inside_a_padded_vocabulary_are_refused(tiny_llama, email_jsonl):
    """Ids below the embedding's rows (a base padded past its tokenizer) would need the
    engines to replace base rows: the job says so before training."""
    from trainer_service.worker.model import lora_model
    from tuneyard.modeling import resolve_base_model

    spec = make_spec(tiny_llama, email_jsonl, added_tokens=["<email>"])
    with pytest.raises(ValueError, match="a padded vocabulary"):
        lora_model(spec, resolve_base_model(str(tiny_llama)), "cpu", torch.float32, [399])


def test_qlora_merged_against_its_dequantized_base_serves_what_was_trained(
    settings, tiny_llama, email_jsonl
):
    """`merge_dequantized`: the 4-bit weights the adapter trained on, dequantized, are what
    it is merged into; served from those merged weights on a 16-bit engine, the tokens are
    the quantized base + adapter's, and the adapter counts as faithful."""
    from tests.inference.test_engine import greedy
    from tests.support.engines import make_engine
    from tuneyard.modeling import load_model, resolve_base_model

    spec = make_spec(
        tiny_llama,
        email_jsonl,
        quantization="4bit",
        merge=True,
        merge_dequantized=True,
        training={"learning_rate": 1e-2},
    )
    code, events, workdir = run_worker(settings, spec)
    _ok(code, workdir)
    version = AdapterStore(settings.resolved_adapters_dir).resolve("emails")
    manifest = version.manifest()
    nf4 = BaseQuantization.of("4bit", "nf4", True, "float32")
    assert manifest.trained_on == manifest.merged_on == nf4
    assert manifest.hyperparameters["merge_dequantized"] is True
    assert manifest.metrics["merge_max_logit_diff"] <= 1e-3
    assert manifest.metrics["merge_quantized_max_logit_diff"] <= 1e-3

    ref = resolve_base_model(str(tiny_llama))
    quantized = load_model(
        ref, device="cpu", dtype=torch.float32, quantization="4bit", compute_dtype=torch.float32
    )
    as_trained = PeftModel.from_pretrained(quantized, version.path).eval()
    on_original = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama), version.path
    ).eval()
    merged = AutoModelForCausalLM.from_pretrained(version.path / "merged")
    ids = torch.tensor([[1, 5, 9, 12, 40, 7]])
    with torch.no_grad():
        trained_logits = as_trained(ids).logits
        assert torch.allclose(merged(ids).logits, trained_logits, atol=1e-3)
        # What the usual merge (the original weights) would have served instead.
        assert (on_original(ids).logits - trained_logits).abs().max() > 0.05

    prompt = "Hi there, our new product"
    prompt_ids = AutoTokenizer.from_pretrained(tiny_llama)(prompt, return_tensors="pt")
    expected = as_trained.generate(**prompt_ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[
        0, prompt_ids["input_ids"].shape[1] :
    ].tolist()
    engine = make_engine(
        tiny_llama,
        settings.resolved_adapters_dir,
        merged_adapter="emails",
        dtype="float32",
        adapter_quant_mismatch="refuse",
    )
    try:
        assert engine.merged.faithful is True
        assert greedy(engine, prompt, "emails") == expected
    finally:
        engine.stop()


@pytest.mark.parametrize("quantization", ["none", "4bit", "8bit"])
def test_a_job_that_adds_tokens_trains_their_rows_and_publishes_its_tokenizer(
    settings, tiny_llama, email_jsonl, quantization
):
    """`added_tokens`: the tokenizer gets them after the base's ids, PEFT's trainable
    tokens train only their rows (the tied output layer follows), the adapter is published
    with its tokenizer and the manifest says which tokens it added; PEFT loads it on the
    base resized to its tokenizer, and the native engine serves its greedy tokens."""
    from tests.inference.test_added_tokens import peft_added_greedy
    from tests.inference.test_engine import greedy
    from tests.support.engines import make_engine

    added = ["<email>", "</email>"]
    spec = make_spec(
        tiny_llama,
        email_jsonl,
        added_tokens=added,
        template={"response": "<email>{{ email }}</email>"},
        quantization=quantization,
    )
    code, _, workdir = run_worker(settings, spec)
    _ok(code, workdir)
    version = AdapterStore(settings.resolved_adapters_dir).resolve(spec.adapter_name)
    assert version.manifest().added_tokens == added

    base_tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(version.path)
    ids = tokenizer.convert_tokens_to_ids(added)
    assert ids == [len(base_tokenizer), len(base_tokenizer) + 1]
    assert {t: i for t, i in tokenizer.get_vocab().items() if t not in added} == (
        base_tokenizer.get_vocab()
    )
    encoded = tokenizer("<email>y</email>", add_special_tokens=False)["input_ids"]
    assert encoded[0] == ids[0] and encoded[-1] == ids[1]  # each one id, not split
    config = json.loads((version.path / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {"embed_tokens": ids}
    tensors = load_file(version.path / "adapter_model.safetensors")
    assert not [k for k in tensors if "base_layer" in k]  # not the whole resized embedding

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    before = base.get_input_embeddings().weight.detach().clone()
    base.resize_token_embeddings(len(tokenizer))
    tuned = PeftModel.from_pretrained(base, version.path).eval()
    with torch.no_grad():
        rows = tuned.get_input_embeddings()(torch.arange(len(tokenizer)))
    assert torch.equal(rows[: len(base_tokenizer)], before)  # only the new rows changed

    engine = make_engine(tiny_llama, settings.resolved_adapters_dir)
    try:
        prompt = "### Product\nA lamp\n\n### Email\n<email>"
        expected = peft_added_greedy(tiny_llama, version, prompt, 8)
        assert greedy(engine, prompt, spec.adapter_name) == expected
    finally:
        engine.stop()
