"""A worker's event stream, read into the job's journal: metrics become progress fields and a
step event, checkpoints and messages become events; what the run came to is returned."""

import time
from collections.abc import Iterable
from dataclasses import dataclass

from trainer_service.journal import JobJournal


@dataclass(frozen=True)
class WorkerRun:
    """How one run of a job's worker ended."""

    code: int  # its exit status; negative: killed by that signal
    result: dict | None = None  # its "result" event: it published
    error: str = ""  # the last error it (or its executor about it) reported

    @property
    def died(self) -> bool:
        """Killed by a signal or gone without reporting an error (OOM killer, a lost node,
        an eviction): worth resuming from a checkpoint. A worker that reported an error
        failed for that reason (bad data, a bug in the recipe) and would fail again."""
        return self.code != 0 and not self.error and self.result is None


class WorkerEvents:
    def __init__(self, journal: JobJournal):
        self.journal = journal

    def read(self, job_id: str, events: Iterable[dict]) -> tuple[dict | None, str]:
        """Relay every event until the stream ends: (the result event if the worker
        published, the last error it reported)."""
        result, last_error = None, ""
        for event in events:
            kind = event.get("type")
            if kind == "metrics":
                self._metrics(job_id, event.get("metrics") or {})
            elif kind == "result":
                result = event
            elif kind == "checkpoint":
                self.journal.event(job_id, f"checkpoint saved at step {event.get('step')}")
            elif kind == "message":
                level = event.get("level", "info")
                if level == "error":
                    last_error = event.get("message", "")
                self.journal.event(job_id, str(event.get("message", "")), level=level)
        return result, last_error

    def _metrics(self, job_id: str, metrics: dict) -> None:
        fields = {}
        if "trained_tokens" in metrics:
            fields["trained_tokens"] = int(metrics["trained_tokens"])
        if "eta_seconds" in metrics:
            fields["estimated_finish"] = time.time() + float(metrics["eta_seconds"])
        if fields:
            self.journal.progress(job_id, **fields)
        if self.journal.metrics:
            self.journal.metrics.job_progress(job_id, metrics)
        parts = [f"{k}={metrics[k]:.4g}" for k in ("loss", "eval_loss") if k in metrics]
        step = f"step {metrics.get('step', '?')}/{metrics.get('total_steps', '?')}"
        self.journal.event(job_id, " ".join([step, *parts]), metrics=metrics)
