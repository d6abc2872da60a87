"""The example specs: the GPU ones reproduce the seed recipes and are validated and dry-run
(one step of one micro-batch, every other setting as shipped) against tiny local stand-ins for the
hub model and dataset; the CPU ones validate on a tiny model as they are."""

import json
from pathlib import Path

import pytest

from tests.trainer.test_worker import run_worker
from trainer_service.preference import parse
from trainer_service.validation import validate
from tuneyard.adapter_store import AdapterStore
from tuneyard.jobspec import JobSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DOLLY_MINI = EXAMPLES / "data" / "dolly_mini"
POLITE = EXAMPLES / "data" / "polite_replies" / "train.jsonl"
NO_FILES = Path("/nonexistent-tuneyard-files")


def load(name: str, **update) -> JobSpec:
    spec = JobSpec.from_yaml(EXAMPLES / name)
    assert JobSpec.from_proto(spec.to_proto()) == spec
    return spec.model_copy(update=update)


def stand_in(spec: JobSpec, base: Path, data: dict | None = None, **training) -> JobSpec:
    """The spec with a tiny local base (and data) and the given training changes."""
    return JobSpec.parse(
        {
            **spec.model_dump(),
            "base_model": str(base),
            "data": {**spec.data.model_dump(), **(data or {})},
            "training": {**spec.training.model_dump(), "logging_steps": 1, **training},
        }
    )


def test_dolly_mini_has_the_dolly_layout():
    rows = [json.loads(line) for line in (DOLLY_MINI / "train.jsonl").read_text().splitlines()]
    assert 30 <= len(rows) <= 60
    assert all(set(r) == {"instruction", "context", "response", "category"} for r in rows)
    with_context = sum(bool(r["context"]) for r in rows)
    assert 5 <= with_context < len(rows)  # both alpaca variants are exercised


def test_openllama_spec_is_the_seed_recipe():
    spec = load("dolly_openllama_qlora.yaml")
    assert spec.base_model == "openlm-research/open_llama_7b_700bt_preview"
    assert spec.data.dataset == "databricks/databricks-dolly-15k" and spec.data.eval_fraction == 0.1
    assert spec.recipe == "sft" and spec.template.builtin == "alpaca"
    assert spec.quantization == "4bit"
    q = spec.quantization_options
    assert (q.quant_type, q.double_quant, q.compute_dtype) == ("nf4", True, "bfloat16")
    assert spec.lora.r == 16 and spec.lora.target_modules == ["q_proj", "v_proj"]
    t = spec.training
    assert t.optimizer.startswith("paged_adamw") and t.packing and t.eval_steps > 0


def test_cpu_specs_validate_on_a_tiny_model(tiny_llama):
    # The tiny tokenizer has 400 tokens, so rows take more tokens than with a real one.
    spec = stand_in(load("dolly_sft_cpu.yaml"), tiny_llama, max_seq_length=1024)
    report = validate(spec, NO_FILES)
    assert (report.rows, report.train_rows, report.eval_rows) == (36, 32, 4)
    cpu = load("marketing_email_cpu.yaml")
    assert validate(stand_in(cpu, tiny_llama, max_seq_length=1024), NO_FILES).rows == 41


def test_polite_pairs_are_whole_preference_rows():
    rows = [json.loads(line) for line in POLITE.read_text().splitlines()]
    assert 20 <= len(rows) <= 40
    pairs = [parse(row, number) for number, row in enumerate(rows, start=1)]
    assert len({p.messages[-1]["content"] for p in pairs}) == len(pairs)  # no repeated prompt


def test_dpo_spec_validates_on_a_tiny_model(tiny_llama):
    spec = load("polite_dpo_cpu.yaml")
    assert spec.recipe == "dpo" and spec.template.builtin == "chat" and spec.base_model == ""
    report = validate(stand_in(spec, tiny_llama, max_seq_length=1024), NO_FILES)
    assert (report.rows, report.train_rows, report.eval_rows) == (30, 27, 3)


@pytest.mark.slow
def test_dpo_spec_dry_runs_on_a_stand_in(settings, tiny_llama):
    spec = stand_in(
        load("polite_dpo_cpu.yaml"),
        tiny_llama,
        max_steps=1,
        eval_steps=1,
        save_steps=1,
        max_seq_length=1024,
    )
    code, events, workdir = run_worker(settings, spec)
    assert code == 0, (workdir / "worker.log").read_text()[-3000:]
    manifest = (
        AdapterStore(settings.resolved_adapters_dir)
        .resolve(events[-1]["fine_tuned_model"])
        .manifest()
    )
    assert manifest.recipe == "dpo" and manifest.rows == {"total": 30, "train": 27, "eval": 3}
    assert manifest.metrics["eval_loss"] > 0
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [1]


@pytest.mark.slow
def test_openllama_qlora_spec_dry_runs_on_stand_ins(settings, tiny_llama):
    # DOLLY_MINI stands in for the hub dataset through the same load_dataset code path.
    spec = stand_in(
        load("dolly_openllama_qlora.yaml"),
        tiny_llama,
        data={"dataset": str(DOLLY_MINI)},
        max_steps=1,
        eval_steps=1,
        gradient_accumulation_steps=1,
        save_steps=0,
    )
    code, events, workdir = run_worker(settings, spec)
    assert code == 0, (workdir / "worker.log").read_text()[-3000:]
    manifest = (
        AdapterStore(settings.resolved_adapters_dir)
        .resolve(events[-1]["fine_tuned_model"])
        .manifest()
    )
    assert manifest.recipe == "sft" and manifest.hyperparameters["quantization"] == "4bit"
    assert manifest.dataset_path == f"dataset:{DOLLY_MINI}:train"
    assert manifest.template_prompt.startswith("Below is an instruction")
    assert manifest.metrics["eval_loss"] > 0


@pytest.mark.slow
def test_bloomz_8bit_spec_dry_runs_on_a_stand_in(settings, tiny_bloom):
    spec = stand_in(
        load("marketing_email_bloomz_8bit.yaml"),
        tiny_bloom,
        max_steps=1,
        gradient_accumulation_steps=1,
    )
    code, events, workdir = run_worker(settings, spec)
    assert code == 0, (workdir / "worker.log").read_text()[-3000:]
    version = AdapterStore(settings.resolved_adapters_dir).resolve(events[-1]["fine_tuned_model"])
    assert version.manifest().hyperparameters["quantization"] == "8bit"
    assert json.loads((version.path / "adapter_config.json").read_text())["r"] == 16
