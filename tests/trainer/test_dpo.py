"""Preference tuning (recipe dpo, OpenAI's `method: dpo`): the preference format checked
before compute with row numbers, a DPO job by the real worker that makes the adapter prefer
the preferred answers, and the method through the real `openai` client and gateway."""

import copy
import json
import time
from pathlib import Path

import openai
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.trainer.conftest import make_spec
from tests.trainer.test_gateway_training import jsonl, refused
from tests.trainer.test_worker import run_worker
from trainer_service.checkpoints import list_checkpoints
from trainer_service.dataset import check_file
from trainer_service.preference import parse
from trainer_service.validation import JobValidationError, check_data, validate
from tuneyard.adapter_store import AdapterStore
from tuneyard.errors import InvalidArgument
from tuneyard.jobspec import JobSpec

NO_FILES = Path("/nonexistent-tuneyard-files")


def pair(i: int) -> dict:
    return {
        "input": {"messages": [{"role": "user", "content": f"Order {i} is late."}]},
        "preferred_output": [
            {"role": "assistant", "content": "Thank you. Best regards, The Team."}
        ],
        "non_preferred_output": [{"role": "assistant", "content": f"No {i}. Lazy dog!"}],
    }


PAIRS = [pair(i) for i in range(8)]
DPO = {
    "recipe": "dpo",
    "template": {"builtin": "chat"},
    "training": {"max_steps": 6, "batch_size": 4, "learning_rate": 5e-3, "max_seq_length": 128},
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    "dpo": {"beta": 0.1},
}


@pytest.fixture
def pairs_jsonl(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl(*PAIRS))
    return path


def dpo_spec(model, path, **overrides) -> JobSpec:
    spec = {
        "base_model": str(model),
        "adapter_name": "polite",
        "data": {"path": str(path)},
        **copy.deepcopy(DPO),
        # No trainer runs the worker here to compare with a server (test_parity_gate.py).
        "parity_gate": {"prompts": 0},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return JobSpec.parse(spec)


# --- the format ----------------------------------------------------------------------------
def broken(mutate) -> dict:
    row = copy.deepcopy(PAIRS[0])
    mutate(row)
    return row


BAD_ROWS = [
    (lambda r: r.pop("input"), "input", "no 'input'"),
    (lambda r: r["input"].pop("messages"), "input.messages", "no 'input.messages'"),
    (lambda r: r["input"].update(messages=[]), "input.messages", "input.messages is empty"),
    (lambda r: r.update(preferred_output=[]), "preferred_output", "preferred_output is empty"),
    (
        lambda r: r["non_preferred_output"][0].update(role="user"),
        "non_preferred_output",
        "non_preferred_output[0] is a 'user' message; it must be the assistant's",
    ),
    (
        lambda r: r["preferred_output"][0].update(content=[{"type": "text"}]),
        "preferred_output",
        "preferred_output[0] needs string 'content'",
    ),
    (lambda r: r.pop("non_preferred_output"), "non_preferred_output", "no 'non_preferred_output'"),
    (
        lambda r: r.update(non_preferred_output=r["preferred_output"]),
        "non_preferred_output",
        "are the same",
    ),
    (lambda r: r["input"].update(tools="x"), "input.tools", "input.tools must be a list"),
]


@pytest.mark.parametrize(("mutate", "param", "words"), BAD_ROWS)
def test_bad_preference_rows_are_refused_with_line_and_field(tmp_path, mutate, param, words):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl(PAIRS[0], PAIRS[1], broken(mutate)))
    spec = dpo_spec("unused-model", path)
    with pytest.raises(JobValidationError) as err:
        check_data(spec, NO_FILES)
    assert err.value.reason == "invalid_preference"
    assert err.value.param == param and err.value.line == 3
    assert err.value.message.startswith("line 3: ") and words in err.value.message

    # The upload check refuses it the same way, naming the file and the line.
    with pytest.raises(InvalidArgument) as upload_err:
        check_file(path, max_row_bytes=0)
    assert upload_err.value.param == "file" and upload_err.value.line == 3
    assert upload_err.value.message.startswith("bad.jsonl line 3: ")


def test_upload_check_accepts_preference_rows_and_keeps_other_inputs(pairs_jsonl, tmp_path):
    assert check_file(pairs_jsonl, max_row_bytes=0) == len(PAIRS)
    alpaca = tmp_path / "alpaca.jsonl"  # an alpaca row's `input` is text: not a preference row
    alpaca.write_bytes(jsonl({"instruction": "a", "input": "b", "output": "c"}))
    assert check_file(alpaca, max_row_bytes=0) == 1


def test_parse_keeps_tools_and_drops_other_message_keys():
    row = {**PAIRS[0], "input": {**PAIRS[0]["input"], "tools": [{"type": "function"}]}}
    row["preferred_output"] = [{"role": "assistant", "content": "Hi.", "weight": 1}]
    parsed = parse(row, 1)
    assert parsed.tools == [{"type": "function"}]
    assert parsed.chosen == [{"role": "assistant", "content": "Hi."}]
    assert json.loads(parsed.example()["tools"]) == [{"type": "function"}]


def test_dpo_needs_the_chat_template():
    with pytest.raises(InvalidArgument) as err:
        make_spec("m", "d.jsonl", recipe="dpo")
    assert err.value.param == "template" and "recipe 'dpo' needs template.builtin 'chat'" in str(
        err.value.message
    )


def test_dpo_evaluation_needs_a_file_of_chat_rows(pairs_jsonl):
    with pytest.raises(InvalidArgument) as err:
        dpo_spec("m", pairs_jsonl, evaluation={})
    assert err.value.param == "evaluation" and "evaluation.eval_file" in err.value.message
    assert dpo_spec("m", pairs_jsonl, evaluation={"eval_file": "chat.jsonl"}).evaluation


def test_validation_counts_prompt_plus_each_answer(tiny_llama, tmp_path):
    long = broken(lambda r: r["preferred_output"][0].update(content="Thank you! " * 20))
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl(*PAIRS, long))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)

    def tokens(row, answer):
        conversation = row["input"]["messages"] + row[answer]
        return len(tokenizer.apply_chat_template(conversation, return_dict=True)["input_ids"])

    short_pair = max(tokens(PAIRS[0], a) for a in ("preferred_output", "non_preferred_output"))
    report = validate(dpo_spec(tiny_llama, path, training={"max_seq_length": 1024}), NO_FILES)
    assert report.rows == len(PAIRS) + 1
    assert report.tokens.min == short_pair and report.tokens.max == tokens(long, "preferred_output")

    # A pair over max_seq_length is dropped (with a warning naming its line), not truncated.
    limit = {"max_seq_length": report.tokens.max - 1}
    report = validate(dpo_spec(tiny_llama, path, training=limit), NO_FILES)
    assert report.too_long == 1 and report.too_long_lines == [len(PAIRS) + 1]
    assert "will be dropped" in report.warnings[0] and report.rows == len(PAIRS)


# --- training ------------------------------------------------------------------------------
def margins(model, tokenizer, rows) -> torch.Tensor:
    """Per pair: log p(chosen) - log p(rejected), summed over the completion's tokens."""

    def logp(prompt: list, answer: list) -> float:
        head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        full = tokenizer.apply_chat_template(prompt + answer, tokenize=True)
        head, full = list(_ids(head)), list(_ids(full))
        assert full[: len(head)] == head
        ids = torch.tensor([full])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].log_softmax(-1)
        targets = ids[0, 1:]
        token_logps = logits.gather(-1, targets[:, None])[:, 0]
        return float(token_logps[len(head) - 1 :].sum())

    return torch.tensor(
        [
            logp(r["input"]["messages"], r["preferred_output"])
            - logp(r["input"]["messages"], r["non_preferred_output"])
            for r in rows
        ]
    )


def _ids(encoded):
    return encoded["input_ids"] if hasattr(encoded, "keys") else encoded


@pytest.mark.slow
def test_dpo_job_makes_the_adapter_prefer_the_preferred_answers(settings, tiny_llama, pairs_jsonl):
    spec = dpo_spec(tiny_llama, pairs_jsonl, training={"save_steps": 3})
    code, events, workdir = run_worker(settings, spec)
    assert code == 0, (workdir / "worker.log").read_text()[-3000:]
    steps = [e["metrics"] for e in events if e["type"] == "metrics" and "loss" in e["metrics"]]
    assert [m["step"] for m in steps] == [1, 2, 3, 4, 5, 6]
    assert all(m["loss"] > 0 for m in steps) and steps[-1]["loss"] < steps[0]["loss"]
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [3, 6]
    # TRL's implicit rewards reach the events: the margin is chosen - rejected, and grows.
    for m in steps:
        assert m["rewards_margin"] == pytest.approx(m["rewards_chosen"] - m["rewards_rejected"])
        assert 0 <= m["rewards_accuracy"] <= 1
    assert steps[-1]["rewards_margin"] > steps[0]["rewards_margin"]
    checkpoint = list_checkpoints(workdir, "ftjob-test")[-1]
    assert checkpoint.metrics["rewards_margin"] == steps[-1]["rewards_margin"]

    version = AdapterStore(settings.resolved_adapters_dir).resolve("polite")
    manifest = version.manifest()
    assert manifest.recipe == "dpo" and manifest.metrics["steps"] == 6
    assert not (version.path / "ref").exists()  # only the trained adapter is published
    config = json.loads((version.path / "adapter_config.json").read_text())
    assert config["r"] == 8

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    before = margins(base, tokenizer, PAIRS)
    tuned = PeftModel.from_pretrained(base, version.path).eval()
    after = margins(tuned, tokenizer, PAIRS)
    assert (after > before).all(), (before, after)
    assert after.mean() - before.mean() > 1.0, (before, after)


@pytest.mark.slow
def test_dpo_job_resumes_from_its_checkpoint(settings, tiny_llama, pairs_jsonl):
    """A worker that finds a checkpoint in the job folder (the trainer restarted mid-job)
    resumes from it, as for the other recipes."""
    spec = dpo_spec(tiny_llama, pairs_jsonl, training={"max_steps": 2, "save_steps": 1})
    code, events, workdir = run_worker(settings, spec)
    assert code == 0, (workdir / "worker.log").read_text()[-3000:]
    (workdir / "events.jsonl").unlink(missing_ok=True)
    longer = spec.model_copy(update={"training": spec.training.model_copy(update={"max_steps": 3})})
    (workdir / "spec.json").write_text(longer.model_dump_json())
    from trainer_service.executors.local import LocalExecutor

    handle = LocalExecutor(settings).start("ftjob-test", workdir)
    resumed = list(handle.events())
    assert handle.wait() == 0, (workdir / "worker.log").read_text()[-3000:]
    assert any("resuming from checkpoint-2" in e.get("message", "") for e in resumed)
    steps = [e["metrics"]["step"] for e in resumed if e["type"] == "metrics"]
    assert steps == [3]


# --- through the gateway -------------------------------------------------------------------
def test_unknown_method_type_is_refused_naming_method_type(oai, http, tiny_llama, pairs_jsonl):
    before = http.get("/v1/fine_tuning/jobs").json()["data"]
    with pytest.raises(openai.BadRequestError) as err:
        oai.fine_tuning.jobs.create(
            model=str(tiny_llama),
            training_file=str(pairs_jsonl),
            suffix="x",
            method={"type": "reinforcement", "reinforcement": {"grader": {"type": "x"}}},
        )
    assert err.value.status_code == 400
    assert err.value.body["param"] == "method.type", err.value.body
    assert "'supervised' or 'dpo'" in err.value.body["message"]
    assert http.get("/v1/fine_tuning/jobs").json()["data"] == before


def test_a_malformed_preference_upload_is_refused_with_its_line(http):
    bad = broken(lambda r: r.update(preferred_output=[]))
    message = refused(http, "prefs.jsonl", jsonl(PAIRS[0], bad))
    assert message.startswith("prefs.jsonl line 2: preferred_output is empty"), message


def test_a_dpo_job_on_bad_rows_is_refused_naming_the_field(oai, http, tiny_llama, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl(PAIRS[0], broken(lambda r: r["input"].pop("messages"))))
    with pytest.raises(openai.BadRequestError) as err:
        oai.fine_tuning.jobs.create(
            model=str(tiny_llama),
            training_file=str(path),
            suffix="bad",
            method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
        )
    assert err.value.body["param"] == "input.messages", err.value.body
    assert err.value.body["message"].startswith("line 2: no 'input.messages'")


@pytest.mark.slow
def test_dpo_job_through_the_openai_client(oai, tiny_llama, pairs_jsonl):
    uploaded = oai.files.create(file=pairs_jsonl.open("rb"), purpose="fine-tune")
    job = oai.fine_tuning.jobs.create(
        model=str(tiny_llama),
        training_file=uploaded.id,
        suffix="polite",
        method={
            "type": "dpo",
            "dpo": {
                "hyperparameters": {
                    "beta": 0.2,
                    "n_epochs": "auto",
                    "batch_size": 4,
                    "learning_rate_multiplier": "auto",
                }
            },
        },
        # No template: dpo renders with the model's chat template.
        extra_body={"tuneyard": {"lora": {"r": 4, "alpha": 8}, "training": {"max_steps": 2}}},
    )
    assert job.method.type == "dpo"
    assert job.method.dpo.hyperparameters.beta == 0.2
    assert job.method.dpo.hyperparameters.batch_size == 4
    spec = job.model_extra["tuneyard"]["spec"]
    assert spec["recipe"] == "dpo" and spec["template"]["builtin"] == "chat"
    deadline = time.monotonic() + 120
    while (job := oai.fine_tuning.jobs.retrieve(job.id)).status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == "polite@1"


def test_supervised_method_maps_to_the_spec_as_before(http, tiny_llama, tmp_path):
    from tests.conftest import EMAIL_ROWS, EMAIL_TEMPLATE

    path = tmp_path / "emails.jsonl"
    path.write_bytes(jsonl(*EMAIL_ROWS))
    body = {
        "model": str(tiny_llama),
        "training_file": str(path),
        "suffix": "emails",
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "learning_rate_multiplier": 0.5}},
        },
        "tuneyard": {"template": EMAIL_TEMPLATE, "training": {"max_seq_length": 128}},
    }
    report = http.post("/v1/fine_tuning/jobs/validate", json=body).json()
    assert report["ok"], report
    conflict = http.post(
        "/v1/fine_tuning/jobs/validate",
        json={**body, "hyperparameters": {"n_epochs": 3}},
    )
    assert conflict.status_code == 400
    assert conflict.json()["error"]["param"] == "method.supervised.hyperparameters.n_epochs"


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_dpo_on_quantized_lora(settings, tiny_llama, pairs_jsonl, quantization):
    """QLoRA and 8-bit LoRA under DPO: the same worker path, one step on the tiny model."""
    spec = dpo_spec(tiny_llama, pairs_jsonl, quantization=quantization, training={"max_steps": 1})
    code, events, workdir = run_worker(settings, spec)
    assert code == 0, (workdir / "worker.log").read_text()[-3000:]
    manifest = AdapterStore(settings.resolved_adapters_dir).resolve("polite").manifest()
    assert manifest.recipe == "dpo" and manifest.hyperparameters["quantization"] == quantization
