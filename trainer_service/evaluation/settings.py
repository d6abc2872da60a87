"""Evaluation settings: the trainer's, plus TUNEYARD_EVAL_* for the runs themselves."""

from pathlib import Path

from pydantic import Field

from trainer_service.settings import TrainerSettings


class EvaluationSettings(TrainerSettings):
    evaluations_dir: Path | None = Field(
        None, description="Reports and the evaluations DB; default home/trainer/evaluations."
    )
    eval_request_timeout_s: float = Field(
        300.0, gt=0, description="Deadline of each call to the inference service."
    )
    eval_concurrency: int = Field(
        8, ge=1, le=64, description="Requests in flight at once (the service batches them)."
    )

    @classmethod
    def of(cls, trainer: TrainerSettings) -> "EvaluationSettings":
        """The trainer's values, with the evaluation's own read from the environment."""
        return cls(**trainer.model_dump(exclude_unset=True))

    @property
    def resolved_evaluations_dir(self) -> Path:
        return self.evaluations_dir or self.resolved_trainer_db.parent / "evaluations"
