"""A job's checkpoints, read from its folder: `<workdir>/trainer/checkpoint-<step>/`, each
a PEFT adapter plus the Trainer's state (what a resumed worker starts from). The folder is
the truth, so a checkpoint written after the trainer lost its worker still counts."""

import json
import time
from dataclasses import dataclass
from pathlib import Path

from tuneyard.adapter_store import AdapterStore, Manifest
from tuneyard.errors import FailedPrecondition, NotFound

CHECKPOINTS = "trainer"  # the Trainer's output_dir inside the job folder
MANIFEST_DRAFT = "manifest.json"  # written by the worker: the manifest without metrics
PUBLISHED = "tuneyard_published"  # inside a checkpoint: the adapter id it was published as
MODEL = "tuneyard_model"  # inside a checkpoint: the model it is served as
CHECKPOINT_MODELS = 3  # as OpenAI's: a succeeded job's last three checkpoints are models
_COMPLETE = ("trainer_state.json", "adapter_model.safetensors", "adapter_config.json")
# The Trainer's log keys that metrics events and checkpoints report, by their names in
# the Metrics message: TRL's SFTTrainer adds token accuracy, its DPOTrainer rewards.
LOGGED = {
    "loss": "loss",
    "eval_loss": "eval_loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "mean_token_accuracy": "mean_token_accuracy",
    "eval_mean_token_accuracy": "eval_mean_token_accuracy",
    "rewards/chosen": "rewards_chosen",
    "rewards/rejected": "rewards_rejected",
    "rewards/margins": "rewards_margin",
    "rewards/accuracies": "rewards_accuracy",
    "eval_rewards/margins": "eval_rewards_margin",
    "eval_rewards/accuracies": "eval_rewards_accuracy",
}


@dataclass(frozen=True)
class Checkpoint:
    job_id: str
    step: int
    created_at: float
    path: Path
    metrics: dict
    published_as: str = ""
    model: str = ""


def checkpoint_dirs(workdir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    folder = Path(workdir) / CHECKPOINTS
    found = [
        p
        for p in folder.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit()
        and all((p / f).is_file() for f in _COMPLETE)
    ]
    return sorted(found, key=checkpoint_step)


def last_checkpoint(workdir: Path) -> Path | None:
    found = checkpoint_dirs(workdir)
    return found[-1] if found else None


def list_checkpoints(workdir: Path, job_id: str) -> list[Checkpoint]:
    return [_read(job_id, p) for p in checkpoint_dirs(workdir)]


def get_checkpoint(workdir: Path, job_id: str, step: int) -> Checkpoint:
    for checkpoint in list_checkpoints(workdir, job_id):
        if checkpoint.step == step:
            return checkpoint
    raise NotFound(f"job {job_id} has no checkpoint at step {step}", param="step")


def publish_checkpoint(
    store: AdapterStore, workdir: Path, job_id: str, step: int
) -> tuple[Checkpoint, bool]:
    """Publish one checkpoint as the next version of the job's adapter, once: returns it
    and whether this call published it (again, it is the version it already is)."""
    from trainer_service.worker.publish import publish_checkpoint as publish_folder

    checkpoint = get_checkpoint(workdir, job_id, step)
    if checkpoint.published_as:
        return checkpoint, False
    draft = Path(workdir) / MANIFEST_DRAFT
    if not draft.is_file():
        raise FailedPrecondition(f"job {job_id} has no manifest draft to publish with")
    manifest = Manifest.model_validate_json(draft.read_text())
    manifest.metrics = {**checkpoint.metrics, "checkpoint_step": step}
    manifest.created_at = time.time()
    version = publish_folder(store, checkpoint.path, manifest)
    (checkpoint.path / PUBLISHED).write_text(version.id)
    return _read(job_id, checkpoint.path), True


def checkpoint_model_name(job_id: str, step: int) -> str:
    """A checkpoint's own model: named after its job, so that it never takes a version of
    the job's adapter (`name@N` stays the Nth job's) and never collides with another's."""
    return f"{job_id}-ckpt-step-{step}"


def publish_checkpoint_models(store: AdapterStore, workdir: Path, manifest: Manifest) -> list[str]:
    """Publish the job's last CHECKPOINT_MODELS checkpoints, each as the one version of its
    own model (`<job id>-ckpt-step-<n>`), as OpenAI makes a checkpoint usable as a `model`;
    a checkpoint published before (a worker resumed after publishing) is not again."""
    from trainer_service.worker.publish import publish_checkpoint as publish_folder

    models = []
    for path in checkpoint_dirs(workdir)[-CHECKPOINT_MODELS:]:
        checkpoint = _read(manifest.job_id, path)
        model = checkpoint.model
        if not model:
            own = manifest.model_copy(
                update={
                    "name": checkpoint_model_name(manifest.job_id, checkpoint.step),
                    "metrics": {**checkpoint.metrics, "checkpoint_step": checkpoint.step},
                    "created_at": time.time(),
                    "gate": None,  # its probes are the final model's: no gate, live
                }
            )
            model = publish_folder(store, path, own).id
            (path / MODEL).write_text(model)
        models.append(model)
    return models


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix("checkpoint-"))


def _read(job_id: str, path: Path) -> Checkpoint:
    state = json.loads((path / "trainer_state.json").read_text())
    step = checkpoint_step(path)
    metrics: dict = {"step": step}
    if state.get("epoch") is not None:
        metrics["epoch"] = state["epoch"]
    for entry in state.get("log_history", []):  # the latest value of each, up to this step
        for key, name in LOGGED.items():
            if key in entry:
                metrics[name] = entry[key]
    if state.get("num_input_tokens_seen"):
        metrics["trained_tokens"] = state["num_input_tokens_seen"]
    return Checkpoint(
        job_id,
        step,
        (path / "trainer_state.json").stat().st_mtime,
        path,
        metrics,
        _marker(path / PUBLISHED),
        _marker(path / MODEL),
    )


def _marker(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""
