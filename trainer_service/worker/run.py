"""One job from spec to published adapter. SIGTERM stops it at the next step boundary;
it then publishes nothing and exits CANCELLED_EXIT. A job folder that already holds a
checkpoint (the trainer restarted mid-job) resumes from the newest one."""

import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from trainer_service.checkpoints import (
    CHECKPOINTS,
    MANIFEST_DRAFT,
    last_checkpoint,
    publish_checkpoint_models,
)
from trainer_service.dataset import Split, save_split
from trainer_service.executors.base import CANCELLED_EXIT
from trainer_service.files import files_dir
from trainer_service.validation import validate
from trainer_service.worker.events import EventWriter
from trainer_service.worker.settings import WorkerSettings
from tuneyard.adapter_store import LOSS_CURVE, MERGED, AdapterStore, Manifest
from tuneyard.jobspec import JobSpec
from tuneyard.modeling import add_tokens, load_tokenizer, pick_device, pick_dtype

log = logging.getLogger("trainer_service.worker")


class TrainingCancelled(Exception):
    pass


def main(job_id: str, workdir: Path, events: EventWriter) -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = WorkerSettings()
    if settings.worker_parent_pid:
        threading.Thread(
            target=stop_when_orphaned, args=(settings.worker_parent_pid, stop), daemon=True
        ).start()
    try:
        run(job_id, Path(workdir), events, stop, settings)
    except TrainingCancelled:
        events.message("cancelled: stopped without publishing")
        return CANCELLED_EXIT
    except Exception as err:
        traceback.print_exc()
        events.message(f"{type(err).__name__}: {err}", level="error")
        return 1
    return 0


def stop_when_orphaned(parent_pid: int, stop: threading.Event, every_s: float = 0.5) -> None:
    """A trainer killed outright (SIGKILL, OOM) cannot cancel its local worker, and the
    next trainer resumes the job from its checkpoint: stop as a cancel does, at the next
    step, rather than train on beside the resumed worker in the same folder."""
    while not stop.wait(every_s):
        if os.getppid() != parent_pid:
            log.warning("the trainer (pid %d) is gone; stopping without publishing", parent_pid)
            stop.set()


def run(
    job_id: str, workdir: Path, events: EventWriter, stop: threading.Event, settings: WorkerSettings
) -> None:
    def check_stop():
        if stop.is_set():
            raise TrainingCancelled

    # Spec, data and tokenizer first: a bad one fails before seconds of heavy imports.
    spec = JobSpec.model_validate_json((workdir / "spec.json").read_text())
    if not spec.base_model:
        spec = spec.model_copy(update={"base_model": settings.resolved_base_model})
    report = validate(spec, files_dir(settings))
    ref = report.base_model
    save_split(
        workdir,
        Split(report.train, report.eval, report.data_source),
        report.data_sha256,
        report.eval_sha256,
    )

    # torch, transformers, peft: imported only once the cheap checks passed.
    from trainer_service.worker.gate import gate_probes
    from trainer_service.worker.model import base_quantization, lora_model, target_modules
    from trainer_service.worker.progress import ProgressCallback
    from trainer_service.worker.publish import publish, write_loss_curve
    from trainer_service.worker.recipes import RecipeContext, get_recipe

    recipe = get_recipe(spec.recipe)
    device = pick_device(settings.trainer_device)
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # one process per GPU (torchrun)
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    dtype = pick_dtype("auto", device)
    events.message(f"loading {ref.id} on {device} ({spec.quantization} quantization)")

    tokenizer = load_tokenizer(ref)
    new_token_ids = add_tokens(tokenizer, spec.added_tokens)
    template = spec.template.build(tokenizer)
    model = lora_model(spec, ref, device, dtype, new_token_ids)
    trainable, total = model.get_nb_trainable_parameters()
    events.message(
        f"training {spec.recipe} on {len(report.train)} rows ({len(report.eval)} eval); "
        f"LoRA r={spec.lora.r}: {trainable:,} of {total:,} parameters trainable"
    )
    manifest = Manifest(
        name=spec.adapter_name,
        base_model=ref.id,
        base_model_revision=ref.revision,
        recipe=spec.recipe,
        template_prompt=template.prompt,
        template_response=template.response,
        template_sha256=template.sha256,
        eos_token=tokenizer.eos_token or "",
        stop=[tokenizer.eos_token] if tokenizer.eos_token else [],
        dataset_path=report.data_source,
        dataset_sha256=report.data_sha256,
        rows={"total": report.rows, "train": len(report.train), "eval": len(report.eval)},
        hyperparameters={
            "quantization": spec.quantization,
            "quantization_options": spec.quantization_options.model_dump(),
            "lora": {**spec.lora.model_dump(), "target_modules": target_modules(spec, ref)},
            "training": spec.training.model_dump(),
            "merge": spec.merge,
            "merge_dequantized": spec.merge_dequantized,
        },
        job_id=job_id,
        trained_on=base_quantization(spec, device, dtype),
        added_tokens=spec.added_tokens,
    )
    (workdir / MANIFEST_DRAFT).write_text(manifest.model_dump_json(indent=2))
    resume_from = last_checkpoint(workdir)
    if resume_from is not None:
        events.message(f"resuming from {resume_from.name}")
    check_stop()

    progress = ProgressCallback(events, stop, device)
    metrics = recipe.train(
        RecipeContext(
            spec=spec,
            model=model,
            tokenizer=tokenizer,
            template=template,
            train_rows=report.train,
            eval_rows=report.eval,
            output_dir=workdir / CHECKPOINTS,
            device=device,
            dtype=dtype,
            progress=progress,
            resume_from=str(resume_from) if resume_from else None,
        )
    )
    check_stop()

    if not is_main_process():
        return  # rank 0 writes the curve and publishes; the others only trained
    metrics["trained_tokens"] = progress.last.get("trained_tokens", 0)
    loss_curve = write_loss_curve(
        workdir / LOSS_CURVE,
        progress.losses,
        progress.eval_losses,
        f"{spec.adapter_name} ({job_id})",
    )
    manifest.metrics = metrics
    manifest.gate = gate_probes(spec, model, tokenizer, template, report.eval, report.train)
    if manifest.gate.probes:
        events.message(
            f"parity gate: the trained model generated {len(manifest.gate.probes)} held-out "
            "prompts for the inference service to match"
        )
    check_stop()
    merge_with = None
    if spec.merge:
        dequantized = manifest.trained_on if spec.merge_dequantized else None
        events.message(
            "merging the adapter into the base as it trained, dequantized"
            if dequantized
            else "merging the adapter into an unquantized copy of the base"
        )
        merge_with = (ref, device, dequantized)
    store = AdapterStore(settings.resolved_adapters_dir, settings.adapters_mode)
    version = publish(
        store,
        model,
        tokenizer,
        manifest,
        loss_curve,
        merge_with=merge_with,
    )
    events.message(f"published {version.id} to {version.path}")
    if checkpoint_models := publish_checkpoint_models(store, workdir, manifest):
        events.message(f"checkpoints served as models: {', '.join(checkpoint_models)}")
    files = [str(version.path / LOSS_CURVE)]
    if spec.merge:
        files.append(str(version.path / MERGED))
    events.result(version.id, files, metrics["trained_tokens"], version.manifest().metrics)


def is_main_process() -> bool:
    """Under torchrun every rank runs this worker; rank 0 speaks for the job."""
    return int(os.environ.get("RANK", "0")) == 0
