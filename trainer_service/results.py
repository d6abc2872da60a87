"""A succeeded job's results file as OpenAI's: a CSV of its step metrics, stored in the
FileStore (purpose `fine-tune-results`) so `GET /v1/files/{id}/content` returns it."""

import csv
import io
from collections.abc import Iterable

from trainer_service.files import FileStore
from trainer_service.job_store import Event, JobStore

COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
# Column -> the metric the worker logs it as; accuracy is left empty where a recipe has none.
_METRIC = {
    "train_loss": "loss",
    "train_accuracy": "mean_token_accuracy",
    "valid_loss": "eval_loss",
    "valid_mean_token_accuracy": "eval_mean_token_accuracy",
}


def results_csv(events: Iterable[Event]) -> bytes:
    """One row per logged step, in step order: the train and eval logs of one step (the
    Trainer logs them apart) merge into its row; a value never logged is an empty cell."""
    steps: dict[int, dict] = {}
    for event in events:
        metrics = event.metrics or {}
        if metrics.get("step") is None:
            continue
        row = steps.setdefault(int(metrics["step"]), {})
        for column, name in _METRIC.items():
            if metrics.get(name) is not None:
                row[column] = metrics[name]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for step in sorted(steps):
        writer.writerow([step, *(steps[step].get(c, "") for c in COLUMNS[1:])])
    return out.getvalue().encode()


class ResultsFiles:
    """Writes a job's results CSV from its metrics events; returns the file's id."""

    def __init__(self, store: JobStore, files: FileStore):
        self.store = store
        self.files = files

    def __call__(self, job_id: str) -> str:
        content = results_csv(self.store.events(job_id))
        return self.files.put_results(f"{job_id}-results.csv", content).id
