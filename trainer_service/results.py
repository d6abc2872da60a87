"""A succeeded job's result files as OpenAI's: file ids (purpose `fine-tune-results`) that
`GET /v1/files/{id}/content` returns, never server paths. The first is a CSV of its step
metrics; then its loss curve and its evaluation's reports."""

import csv
import io
from collections.abc import Iterable
from pathlib import Path

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
        project = self.store.get_job(job_id).project
        return self.files.put_results(f"{job_id}-results.csv", content, project).id


def store_result_files(files: FileStore, paths: Iterable[str], project: str) -> list[str]:
    """A copy of each output file (a loss curve, an evaluation's reports) in the FileStore;
    their ids. A folder (merged weights: the adapter's version holds them) is not a file."""
    return [
        files.put_results(path.name, path.read_bytes(), project).id
        for path in map(Path, paths)
        if path.is_file()
    ]
