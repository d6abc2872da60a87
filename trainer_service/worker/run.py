"""One job from spec to published adapter. SIGTERM stops it at the next step boundary;
it then publishes nothing and exits CANCELLED_EXIT."""

import logging
import signal
import sys
import threading
import traceback
from pathlib import Path

from trainer_service.dataset import file_sha256, read_rows, split_rows
from trainer_service.executors.base import CANCELLED_EXIT
from trainer_service.worker.events import EventWriter
from trainer_service.worker.settings import WorkerSettings
from tuneyard.adapter_store import AdapterStore, Manifest
from tuneyard.jobspec import JobSpec
from tuneyard.modeling import load_tokenizer, pick_device, pick_dtype, resolve_base_model

log = logging.getLogger("trainer_service.worker")


class Cancelled(Exception):
    pass


def main(job_id: str, workdir: Path, events: EventWriter) -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run(job_id, Path(workdir), events, stop, WorkerSettings())
    except Cancelled:
        events.message("cancelled: stopped without publishing")
        return CANCELLED_EXIT
    except Exception as err:
        traceback.print_exc()
        events.message(f"{type(err).__name__}: {err}", level="error")
        return 1
    return 0


def run(
    job_id: str, workdir: Path, events: EventWriter, stop: threading.Event, settings: WorkerSettings
) -> None:
    def check_stop():
        if stop.is_set():
            raise Cancelled

    # Spec and data first: a bad one fails before seconds of heavy imports.
    spec = JobSpec.model_validate_json((workdir / "spec.json").read_text())
    rows = read_rows(spec.data.path, spec.data.columns)
    train_rows, eval_rows = split_rows(rows, spec.data.eval_fraction, spec.training.seed)
    ref = resolve_base_model(spec.base_model or settings.resolved_base_model)

    # torch, transformers, peft: imported only once the cheap checks passed.
    from trainer_service.worker.model import lora_model, target_modules
    from trainer_service.worker.progress import ProgressCallback
    from trainer_service.worker.publish import LOSS_CURVE, publish, write_loss_curve
    from trainer_service.worker.recipes import RecipeContext, get_recipe

    recipe = get_recipe(spec.recipe)
    device = pick_device(settings.trainer_device)
    dtype = pick_dtype("auto", device)
    events.message(f"loading {ref.id} on {device} ({spec.quantization} quantization)")

    tokenizer = load_tokenizer(ref)
    model = lora_model(spec, ref, device, dtype)
    trainable, total = model.get_nb_trainable_parameters()
    events.message(
        f"training {spec.recipe} on {len(train_rows)} rows ({len(eval_rows)} eval); "
        f"LoRA r={spec.lora.r}: {trainable:,} of {total:,} parameters trainable"
    )
    check_stop()

    progress = ProgressCallback(events, stop, device)
    metrics = recipe.train(
        RecipeContext(
            spec=spec,
            model=model,
            tokenizer=tokenizer,
            train_rows=train_rows,
            eval_rows=eval_rows,
            output_dir=workdir / "trainer",
            device=device,
            dtype=dtype,
            progress=progress,
        )
    )
    check_stop()

    metrics["trained_tokens"] = progress.last.get("trained_tokens", 0)
    loss_curve = write_loss_curve(
        workdir / LOSS_CURVE,
        progress.losses,
        progress.eval_losses,
        f"{spec.adapter_name} ({job_id})",
    )
    template = spec.template.build()
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
        dataset_path=str(Path(spec.data.path).resolve()),
        dataset_sha256=file_sha256(spec.data.path),
        rows={"total": len(rows), "train": len(train_rows), "eval": len(eval_rows)},
        hyperparameters={
            "quantization": spec.quantization,
            "lora": {**spec.lora.model_dump(), "target_modules": target_modules(spec, ref)},
            "training": spec.training.model_dump(),
        },
        metrics=metrics,
        job_id=job_id,
    )
    check_stop()
    version = publish(
        AdapterStore(settings.resolved_adapters_dir), model, tokenizer, manifest, loss_curve
    )
    events.message(f"published {version.id} to {version.path}")
    events.result(
        version.id,
        [str(loss_curve), str(version.path / LOSS_CURVE)],
        metrics["trained_tokens"],
        metrics,
    )
