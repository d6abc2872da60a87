"""The worker end to end, run by the real LocalExecutor as a child process."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tests.trainer.conftest import make_spec
from trainer_service.executors.local import LocalExecutor
from tuneyard.adapter_store import AdapterStore


def run_worker(settings, spec, job_id="ftjob-test"):
    workdir = settings.resolved_trainer_workdir / job_id
    workdir.mkdir(parents=True)
    (workdir / "spec.json").write_text(spec.model_dump_json())
    handle = LocalExecutor(settings).start(job_id, workdir)
    events = list(handle.events())
    return handle.wait(), events, workdir


def check_published(settings, model_path, events, workdir, expected_targets):
    result = events[-1]
    assert result["type"] == "result", events
    store = AdapterStore(settings.resolved_adapters_dir)
    version = store.resolve(result["fine_tuned_model"])
    assert version.id == "emails@1"

    manifest = version.manifest()
    assert manifest.base_model == str(model_path) and manifest.base_model_revision
    assert manifest.recipe == "causal_lm" and manifest.job_id == "ftjob-test"
    assert (
        manifest.template_prompt.startswith("### Product") and len(manifest.template_sha256) == 64
    )
    assert manifest.eos_token == "<|endoftext|>" and manifest.stop == ["<|endoftext|>"]
    assert manifest.rows == {"total": 12, "train": 9, "eval": 3}
    assert len(manifest.dataset_sha256) == 64
    assert manifest.hyperparameters["lora"]["target_modules"] == expected_targets
    assert manifest.hyperparameters["training"]["max_steps"] == 2
    assert manifest.metrics["steps"] == 2 and manifest.metrics["eval_loss"] > 0
    assert manifest.metrics["trained_tokens"] == result["trained_tokens"] > 0

    for png in (workdir / "loss_curve.png", version.path / "loss_curve.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["result_files"] == [str(version.path / "loss_curve.png")]
    assert json.loads((version.path / "adapter_config.json").read_text())["r"] == 4
    assert (version.path / "adapter_model.safetensors").is_file()
    assert (version.path / "tokenizer.json").is_file()
    assert not [p for p in version.path.parent.iterdir() if p.name.startswith(".staging")]

    # A plain PEFT load of the published folder works and changes the output.
    base = AutoModelForCausalLM.from_pretrained(model_path)
    ids = torch.tensor([[1, 2, 3, 4]])
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, version.path)
    assert set(expected_targets) <= {n.split(".")[-1] for n, _ in tuned.named_modules()}
    assert tuned(ids).logits.shape == before.shape


def check_metrics_events(events):
    steps = [e["metrics"] for e in events if e["type"] == "metrics" and "loss" in e["metrics"]]
    assert [m["step"] for m in steps] == [1, 2]
    last = steps[-1]
    assert last["total_steps"] == 2 and last["eta_seconds"] == 0
    for key in (
        "loss",
        "learning_rate",
        "grad_norm",
        "tokens_per_second",
        "trained_tokens",
        "peak_memory_bytes",
        "epoch",
    ):
        assert last[key] > 0, key
    assert any("eval_loss" in e.get("metrics", {}) for e in events)


@pytest.mark.slow
def test_worker_llama_end_to_end(settings, tiny_llama, email_jsonl):
    settings = settings.model_copy(update={"adapters_mode": 0o750})  # shared with a group
    spec = make_spec(tiny_llama, email_jsonl, data={"eval_fraction": 0.25})
    code, events, workdir = run_worker(settings, spec)
    assert code == 0, (workdir / "worker.log").read_text()[-3000:]
    # stdout carried only events: every line parsed as a typed JSON object.
    assert all(e["type"] in ("message", "metrics", "result") for e in events)
    check_metrics_events(events)
    check_published(settings, tiny_llama, events, workdir, ["q_proj", "v_proj"])
    # The worker published with the trainer's mode, whatever its umask.
    version = AdapterStore(settings.resolved_adapters_dir).resolve("emails")
    found = {
        ("folder" if p.is_dir() else "file", oct(p.stat().st_mode & 0o777))
        for p in [version.path, *version.path.rglob("*")]
    }
    assert found == {("folder", "0o750"), ("file", "0o640")}


@pytest.mark.slow
def test_worker_bloom_end_to_end(settings, tiny_bloom, email_jsonl):
    spec = make_spec(tiny_bloom, email_jsonl, data={"eval_fraction": 0.25})
    code, events, workdir = run_worker(settings, spec)
    assert code == 0, (workdir / "worker.log").read_text()[-3000:]
    check_published(settings, tiny_bloom, events, workdir, ["query_key_value"])


@pytest.mark.slow
def test_worker_4bit_qlora(settings, tiny_llama, email_jsonl):
    """4-bit FP4 without double quantization (NF4 + double quant: test_example_specs.py),
    with gradient checkpointing, a cosine schedule and a paged 8-bit optimizer."""
    spec = make_spec(
        tiny_llama,
        email_jsonl,
        quantization="4bit",
        quantization_options={"quant_type": "fp4", "double_quant": False},
        data={"eval_fraction": 0.25},
        training={
            "gradient_checkpointing": True,
            "optimizer": "paged_adamw_8bit",
            "lr_scheduler": "cosine",
            "warmup_steps": 1,
        },
    )
    code, events, workdir = run_worker(settings, spec)
    assert code == 0, (workdir / "worker.log").read_text()[-3000:]
    version = AdapterStore(settings.resolved_adapters_dir).resolve("emails")
    hyperparameters = version.manifest().hyperparameters
    assert hyperparameters["quantization"] == "4bit"
    assert hyperparameters["quantization_options"] == {
        "quant_type": "fp4",
        "double_quant": False,
        "compute_dtype": "auto",
    }
    assert hyperparameters["training"]["optimizer"] == "paged_adamw_8bit"
    log = (workdir / "worker.log").read_text()
    assert "Paged optimizers are not supported on CPU" in log  # bitsandbytes' own optimizer ran
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), version.path)


def test_worker_error_is_reported_and_exits_1(settings, tiny_llama, email_jsonl):
    spec = make_spec(tiny_llama, email_jsonl)
    email_jsonl.unlink()  # gone between validation and the run
    code, events, workdir = run_worker(settings, spec)
    assert code == 1
    errors = [e for e in events if e.get("level") == "error"]
    assert len(errors) == 1 and "emails.jsonl does not exist" in errors[0]["message"]
    assert events[-1] == errors[0]  # nothing after the error, no result
    assert not settings.resolved_adapters_dir.exists()
    assert "Traceback" in (workdir / "worker.log").read_text()


@pytest.mark.slow
def test_only_rank_zero_reports_and_publishes(settings, tiny_llama, email_jsonl, monkeypatch):
    """Under torchrun each rank runs the worker; a non-zero rank trains but stays silent
    and publishes nothing (rank 0 does both)."""
    monkeypatch.setenv("RANK", "1")
    code, events, workdir = run_worker(settings, make_spec(tiny_llama, email_jsonl))
    assert code == 0, (workdir / "worker.log").read_text()[-3000:]
    assert events == []
    assert AdapterStore(settings.resolved_adapters_dir).all_versions() == []


def test_an_orphaned_worker_asks_itself_to_stop():
    import os
    import threading

    from trainer_service.worker.run import stop_when_orphaned

    watched = threading.Event()
    threading.Thread(
        target=stop_when_orphaned, args=(os.getppid(), watched, 0.05), daemon=True
    ).start()
    assert not watched.wait(0.3), "stopped while its parent is alive"
    watched.set()  # ends that watcher

    orphaned = threading.Event()
    stop_when_orphaned(os.getppid() + 1_000_000, orphaned, 0.05)  # not our parent: returns
    assert orphaned.is_set()
