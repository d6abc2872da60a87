"""The one writer of a job's state: its status (along TRANSITIONS only), its progress and
result fields, and its events. Each write is stored first and then wakes every watcher,
whoever made it (the scheduler, the worker's events, an evaluation of the job's output).

    validating_files -> queued | failed | cancelled
    queued           -> running | paused | cancelled
    running          -> succeeded | failed | cancelled | paused
                        | queued (to resume from a checkpoint after a restart or a death)
    paused           -> queued (resumed) | cancelled

A job is *settled* when it is terminal and no follow-up work on it (an evaluation of its
adapter) is still to report: a watch ends there, so it sees the follow-up's events too.
"""

import threading
import time

from trainer_service.job_store import Event, Job, JobError, JobStore
from trainer_service.metrics import TrainerMetrics
from tuneyard.statuses import (
    CANCELLED,
    FAILED,
    PAUSED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    VALIDATING_FILES,
)

TRANSITIONS = {
    VALIDATING_FILES: frozenset({QUEUED, FAILED, CANCELLED}),
    QUEUED: frozenset({RUNNING, PAUSED, CANCELLED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, PAUSED, QUEUED}),
    PAUSED: frozenset({QUEUED, CANCELLED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}
# Fields that are not the status: progress, results, and the resume count.
_PROGRESS = frozenset({"trained_tokens", "estimated_finish", "resumes", "fine_tuned_model"})


class IllegalTransition(RuntimeError):
    """A status change TRANSITIONS does not allow: a bug in the caller, never user input."""


class StatusChanged(IllegalTransition):
    """Another writer changed the job's status between the caller's read and its write."""


class JobJournal:
    def __init__(self, store: JobStore, metrics: TrainerMetrics | None = None):
        self.store = store
        self.metrics = metrics
        self._changed = threading.Condition()
        self._version = 0  # bumped on every write; see wait_for_change
        self._following: dict[str, int] = {}  # job id -> follow-ups still to report

    # --- writes --------------------------------------------------------------------------
    def event(
        self, job_id: str, message: str, level: str = "info", metrics: dict | None = None
    ) -> Event:
        event = self.store.add_event(job_id, message, level, metrics)
        self._bump()
        return event

    def progress(self, job_id: str, **fields) -> Job:
        """Progress and result fields; never the status (that is `transition`)."""
        if unknown := set(fields) - _PROGRESS:
            raise ValueError(f"not progress fields: {sorted(unknown)}")
        job = self.store.update(job_id, **fields)
        self._bump()
        return job

    def add_result_files(self, job_id: str, files: list[str]) -> Job:
        files = [*self.store.get_job(job_id).result_files, *files]
        job = self.store.update(job_id, result_files=files)
        self._bump()
        return job

    def transition(
        self,
        job_id: str,
        status: str,
        message: str,
        level: str = "",
        error: JobError | None = None,
        expected: str | None = None,
        **fields,
    ) -> Job | None:
        """Move the job to `status` with an event saying why (level: error for a failure,
        info otherwise, unless given), both in one write: a watcher that sees the new
        status has every event up to it. A compare and set: from `expected`, or None and
        nothing written when the job is no longer there; without it, from the status
        read now, and StatusChanged when another writer came between."""
        current = expected or self.store.get_job(job_id).status
        if status not in TRANSITIONS[current]:
            raise IllegalTransition(f"job {job_id}: {current} -> {status}")
        if unknown := set(fields) - _PROGRESS:
            raise ValueError(f"not progress fields: {sorted(unknown)}")
        if status == RUNNING:
            fields["started_at"] = time.time()
        if status != RUNNING:
            fields["estimated_finish"] = 0
        if not TRANSITIONS[status]:
            fields["finished_at"] = time.time()
        if status == FAILED:
            fields["error"] = error or JobError("failed", message)
        event = (message, level or ("error" if status == FAILED else "info"))
        job = self.store.set_status(job_id, current, status, event, **fields)
        if job is None:
            if expected:
                return None
            raise StatusChanged(f"job {job_id}: no longer {current}, not moved to {status}")
        if self.metrics and job.terminal:
            self.metrics.job_finished(job_id, status)
        self._bump()
        return job

    # --- follow-up work ------------------------------------------------------------------
    def follow(self, job_id: str) -> None:
        """Work on a job's output has started that will report into its events."""
        with self._changed:
            self._following[job_id] = self._following.get(job_id, 0) + 1

    def followed(self, job_id: str) -> None:
        """That work has reported (or will not)."""
        with self._changed:
            left = self._following.get(job_id, 0) - 1
            if left > 0:
                self._following[job_id] = left
            else:
                self._following.pop(job_id, None)
        self._bump()

    def settled(self, job: Job) -> bool:
        with self._changed:
            return job.terminal and job.id not in self._following

    # --- watching ------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self._version

    def wait_for_change(self, seen_version: int, timeout: float) -> int:
        """Block until something was written after `seen_version` (or timeout)."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen_version, timeout)
            return self._version

    def _bump(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()
