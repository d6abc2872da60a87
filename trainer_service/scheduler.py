"""The job lifecycle: validate, queue (FIFO), run through an executor, record events.

    validating_files -> queued -> running -> succeeded | failed | cancelled
    (validation can fail; cancel works in every state; a finished job stays as it is)

A job whose worker dies (killed by a signal, or gone without reporting an error) or whose
trainer restarts goes on from its last checkpoint, `max_resumes` times in all; a worker that
reports an error fails the job, which running it again would not change.

Every change is written to the store first and then announced through `changed`, which
watchers wait on instead of polling.
"""

import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from trainer_service.checkpoints import checkpoint_step, last_checkpoint
from trainer_service.data_roots import DataRoots
from trainer_service.evaluation.service import EvaluationService, evaluate_job_output
from trainer_service.executors.base import CANCELLED_EXIT, ExecutionHandle, Executor
from trainer_service.files import files_dir
from trainer_service.job_store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    VALIDATING_FILES,
    Event,
    Job,
    JobError,
    JobStore,
)
from trainer_service.metrics import TrainerMetrics
from trainer_service.notify import InferenceNotifier
from trainer_service.settings import TrainerSettings
from trainer_service.validation import JobValidationError, validate
from tuneyard.errors import TuneyardError
from tuneyard.jobspec import JobSpec
from tuneyard.modeling import public_name

log = logging.getLogger(__name__)
_TRANSPORT_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"})


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


class Scheduler:
    def __init__(
        self,
        settings: TrainerSettings,
        store: JobStore,
        executor: Executor,
        metrics: TrainerMetrics | None = None,
        notifier: InferenceNotifier | None = None,
        evaluations: EvaluationService | None = None,
    ):
        self.settings = settings
        self.store = store
        self.executor = executor
        self.metrics = metrics
        self.notifier = notifier
        self.evaluations = evaluations
        self.workdir = Path(settings.resolved_trainer_workdir)
        self.files_root = files_dir(settings)
        self.data_roots = DataRoots.of(settings)
        self._lock = threading.Condition()
        self._version = 0  # bumped on every change; see wait_for_change
        self._queue: deque[str] = deque()
        self._running: dict[str, ExecutionHandle | None] = {}
        self._cancelling: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False

    # --- public --------------------------------------------------------------------------
    def start(self) -> None:
        """Recover what a previous trainer left: a running job lost its worker, and resumes
        from its last checkpoint (queued first) or fails saying why; validating and queued
        jobs start over in their original order."""
        for job in self.store.jobs_with_status(RUNNING):
            checkpoint = last_checkpoint(self.workdir / job.id)
            if checkpoint is None:
                reason = "it has no checkpoint to resume from (training.save_steps is 0 or "
                reason += "none was saved yet)"
            elif job.resumes >= self.settings.max_resumes:
                reason = f"it was resumed {job.resumes} times already (max_resumes)"
            else:
                self.store.update(job.id, status=QUEUED, resumes=job.resumes + 1)
                self._event(
                    job.id,
                    f"the trainer restarted while the job was running; it will resume from "
                    f"{checkpoint.name}",
                    level="warn",
                )
                continue
            self._finish(
                job.id,
                FAILED,
                f"the trainer restarted while the job was running and its worker was lost; "
                f"{reason}",
                code="worker_lost",
            )
        for job in self.store.jobs_with_status(VALIDATING_FILES, QUEUED):
            self._event(job.id, f"trainer restarted: job {job.status} again")
            if job.status == QUEUED:
                with self._lock:
                    self._queue.append(job.id)
            else:
                self._spawn(self._validate, job.id)
        self._dispatch()

    def with_default_base(self, spec: JobSpec) -> JobSpec:
        """The service's base model for an empty one (or its served name); a relative local
        folder or data path made absolute, since the worker runs in its job folder."""
        default = self.settings.resolved_base_model
        # The default base model also answers to the name clients see it by (/v1/models).
        served = {self.settings.served_model_name, public_name(default)} - {""}
        base = default if not spec.base_model or spec.base_model in served else spec.base_model
        if Path(base).is_dir():
            base = str(Path(base).resolve())
        data = spec.data
        if data.path and Path(data.path).exists():
            data = data.model_copy(update={"path": str(Path(data.path).resolve())})
        return spec.model_copy(update={"base_model": base, "data": data})

    def create(self, spec: JobSpec) -> Job:
        """Store the job and validate it in the background; returns it validating_files."""
        spec = self.with_default_base(spec)
        job = self.store.create_job(spec.model_dump())
        self._event(job.id, "job created; validating data")
        self._spawn(self._validate, job.id)
        return job

    def get(self, job_id: str) -> Job:
        return self.store.get_job(job_id)

    def cancel(self, job_id: str) -> Job:
        with self._lock:  # every transition happens under the lock: the status is current
            job = self.store.get_job(job_id)
            if job.status in (VALIDATING_FILES, QUEUED):
                if job.id in self._queue:
                    self._queue.remove(job.id)
                self._finish_locked(job.id, CANCELLED, "cancelled before it ran")
            elif job.status == RUNNING and job.id not in self._cancelling:
                self._cancelling.add(job.id)
                handle = self._running.get(job.id)
                self._event(job.id, "cancellation requested; stopping the worker")
                if handle is not None:
                    handle.cancel()
        return self.store.get_job(job_id)

    @property
    def version(self) -> int:
        return self._version

    def wait_for_change(self, seen_version: int, timeout: float) -> int:
        """Block until something changed after `seen_version` (or timeout)."""
        with self._lock:
            self._lock.wait_for(lambda: self._version != seen_version, timeout)
            return self._version

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking work, stop running workers, and wait for their threads."""
        with self._lock:
            self._closed = True
            handles = [h for h in self._running.values() if h is not None]
        for handle in handles:
            handle.cancel()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    # --- lifecycle -----------------------------------------------------------------------
    def _validate(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        try:
            report = validate(JobSpec.model_validate(job.spec), self.files_root)
        except JobValidationError as err:
            with self._lock:
                if self.store.get_job(job_id).status == VALIDATING_FILES:
                    self._finish_locked(
                        job_id, FAILED, err.message, code=err.reason, param=err.param, line=err.line
                    )
            return
        except Exception as err:  # a bug or an unreadable model must not strand the job
            log.exception("validation of %s crashed", job_id)
            with self._lock:
                if self.store.get_job(job_id).status == VALIDATING_FILES:
                    self._finish_locked(
                        job_id, FAILED, f"validation failed: {err}", code="validation_error"
                    )
            return
        for warning in report.warnings:
            self._event(job_id, warning, level="warn")
        with self._lock:
            if self.store.get_job(job_id).status != VALIDATING_FILES:
                return  # cancelled meanwhile
            self.store.update(job_id, status=QUEUED)
            self._queue.append(job_id)
            self._event(
                job_id,
                f"validated {report.rows} rows ({report.train_rows} train, "
                f"{report.eval_rows} eval, longest {report.max_tokens} tokens); queued",
            )
        self._dispatch()

    def _dispatch(self) -> None:
        with self._lock:
            while (
                self._queue
                and not self._closed
                and len(self._running) < self.settings.max_concurrent_jobs
            ):
                job_id = self._queue.popleft()
                self._running[job_id] = None
                self.store.update(job_id, status=RUNNING, started_at=time.time())
                self._event(job_id, "job started")
                self._spawn(self._run, job_id)

    def _run(self, job_id: str) -> None:
        try:
            self._run_worker(job_id)
        except Exception as err:
            log.exception("job %s", job_id)
            self._finish(
                job_id, FAILED, f"the trainer could not run the job: {err}", code="internal"
            )
        finally:
            with self._lock:
                self._running.pop(job_id, None)
                self._cancelling.discard(job_id)
            self._dispatch()

    def _run_worker(self, job_id: str) -> None:
        """Run the job's worker until it ends for good: a worker that died (killed by a
        signal, or gone without reporting an error) is started again from the job's last
        checkpoint, up to max_resumes times in all (trainer restarts included)."""
        job = self.store.get_job(job_id)
        workdir = self.workdir / job_id
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "spec.json").write_text(JobSpec.model_validate(job.spec).model_dump_json())
        while True:
            with self._lock:
                stopping = job_id in self._cancelling or self._closed
            # Cancelled or stopped before a (re)start: as if the worker had stopped at once.
            attempt = WorkerRun(CANCELLED_EXIT) if stopping else self._run_once(job_id, workdir)
            with self._lock:
                cancelled, closed = job_id in self._cancelling, self._closed
            if attempt.code == 0 and attempt.result is not None:
                self._succeed(job_id, attempt.result)
            elif cancelled:
                self._finish(job_id, CANCELLED, "cancelled; nothing was published")
            elif closed:
                self._interrupted(job_id)
            elif attempt.died:
                if self._resume_after_death(job_id, workdir, attempt.code):
                    continue
            else:
                self._fail_worker(job_id, attempt)
            return

    def _run_once(self, job_id: str, workdir: Path) -> "WorkerRun":
        """Start the worker, relay its events, and wait for it to end."""
        handle = self.executor.start(job_id, workdir)
        with self._lock:
            self._running[job_id] = handle
            if job_id in self._cancelling or self._closed:
                handle.cancel()

        result, last_error = None, ""
        for event in handle.events():
            kind = event.get("type")
            if kind == "metrics":
                self._on_metrics(job_id, event.get("metrics") or {})
            elif kind == "result":
                result = event
            elif kind == "checkpoint":
                self._event(job_id, f"checkpoint saved at step {event.get('step')}")
            elif kind == "message":
                level = event.get("level", "info")
                if level == "error":
                    last_error = event.get("message", "")
                self._event(job_id, str(event.get("message", "")), level=level)
        return WorkerRun(handle.wait(), result, last_error)

    def _resume_after_death(self, job_id: str, workdir: Path, code: int) -> bool:
        """A worker died under a running job: True to start it again from the job's last
        checkpoint (or to let the loop end a job cancelled meanwhile), False once the job
        failed, saying why it was not resumed."""
        died = f"the worker died ({_describe_exit(code)}) without reporting an error"
        checkpoint = last_checkpoint(workdir)
        limit = self.settings.max_resumes
        with self._lock:
            if job_id in self._cancelling or self._closed:
                return True  # the loop ends it as cancelled or interrupted
            resumes = self.store.get_job(job_id).resumes
            if checkpoint is None:
                reason = "it has no checkpoint to resume from (training.save_steps is 0 or "
                reason += "none was saved yet)"
            elif resumes >= limit:
                reason = f"it was resumed {resumes} times already (max_resumes is {limit})"
            else:
                self.store.update(job_id, resumes=resumes + 1, estimated_finish=0)
                self._event(
                    job_id,
                    f"{died}; resuming from checkpoint step {checkpoint_step(checkpoint)} "
                    f"(resume {resumes + 1} of {limit})",
                    level="warn",
                )
                return True
            self._finish_locked(job_id, FAILED, f"{died}; {reason}", code="worker_failed")
            return False

    def _fail_worker(self, job_id: str, attempt: "WorkerRun") -> None:
        """The worker failed for a reason it (or its executor) reported, or ended without a
        result: running it again would not help."""
        reason = attempt.error or (
            "the worker ended without publishing a result"
            if attempt.code == 0
            else "the worker crashed after publishing"
        )
        self._finish(
            job_id, FAILED, f"{reason} ({_describe_exit(attempt.code)})", code="worker_failed"
        )

    def _interrupted(self, job_id: str) -> None:
        """The trainer stopped under a running job: queue it to resume from its checkpoint
        at the next start, or fail it."""
        checkpoint = last_checkpoint(self.workdir / job_id)
        if checkpoint is None:
            self._finish(
                job_id,
                FAILED,
                "the trainer service stopped during the job, which had no checkpoint",
                code="interrupted",
            )
            return
        with self._lock:
            resumes = self.store.get_job(job_id).resumes + 1
            self.store.update(job_id, status=QUEUED, estimated_finish=0, resumes=resumes)
            self._event(
                job_id,
                f"the trainer service stopped during the job; it will resume from "
                f"{checkpoint.name} when the trainer starts again",
                level="warn",
            )

    def _on_metrics(self, job_id: str, metrics: dict) -> None:
        fields = {}
        if "trained_tokens" in metrics:
            fields["trained_tokens"] = int(metrics["trained_tokens"])
        if "eta_seconds" in metrics:
            fields["estimated_finish"] = time.time() + float(metrics["eta_seconds"])
        if fields:
            self.store.update(job_id, **fields)
        if self.metrics:
            self.metrics.job_progress(job_id, metrics)
        parts = [f"{k}={metrics[k]:.4g}" for k in ("loss", "eval_loss") if k in metrics]
        step = f"step {metrics.get('step', '?')}/{metrics.get('total_steps', '?')}"
        self._event(job_id, " ".join([step, *parts]), metrics=metrics)

    def _succeed(self, job_id: str, result: dict) -> None:
        model = str(result.get("fine_tuned_model", ""))
        self.store.update(
            job_id,
            fine_tuned_model=model,
            result_files=[str(f) for f in result.get("result_files", [])],
            trained_tokens=int(result.get("trained_tokens", 0)),
        )
        self.announce(job_id, model)
        self._finish(job_id, SUCCEEDED, f"succeeded: published {model}")
        # After SUCCEEDED: only a succeeded job's adapter can be evaluated.
        evaluation = JobSpec.model_validate(self.store.get_job(job_id).spec).evaluation
        if evaluation is not None and self.evaluations is not None:
            evaluate_job_output(self.store.get_job(job_id), self.evaluations, evaluation)

    def announce(self, job_id: str, model: str) -> None:
        """Tell the inference service to load a version this job published, so its first
        request does not pay for the load; the job's events say how that went."""
        if self.notifier is None:
            return
        try:
            self.notifier.load_adapter(model)
            self._event(job_id, f"the inference service loaded {model}")
        except Exception as err:  # a TuneyardError mostly; serving can still load it later
            failed = err if isinstance(err, TuneyardError) else TuneyardError(str(err))
            detail, code = failed.message, failed.code
            log.warning(
                "%s: LoadAdapter %s at %s: %s", job_id, model, self.notifier.address, detail
            )
            # The service's own answer (a base model mismatch...) helps; gRPC's transport
            # words (addresses, "recvmsg:...") and crashes are for the log only.
            said = "" if code in _TRANSPORT_CODES else f": {detail}"
            self._event(
                job_id,
                f"could not tell the inference service to load {model} ({code}){said}; "
                "it is loaded on first use",
                level="warn",
            )

    # --- helpers -------------------------------------------------------------------------
    def _finish(self, job_id: str, status: str, message: str, **error) -> None:
        with self._lock:
            self._finish_locked(job_id, status, message, **error)

    def _finish_locked(
        self, job_id: str, status: str, message: str, code: str = "", param: str = "", line: int = 0
    ) -> None:
        # The event goes first: a watcher that sees the terminal status has every event.
        self._event(job_id, message, level="error" if status == FAILED else "info")
        fields = {"status": status, "finished_at": time.time(), "estimated_finish": 0}
        if status == FAILED:
            fields["error"] = JobError(code or "failed", message, param, line)
        self.store.update(job_id, **fields)
        if self.metrics:
            self.metrics.job_finished(job_id, status)
        self._bump()

    def _event(
        self, job_id: str, message: str, level: str = "info", metrics: dict | None = None
    ) -> Event:
        event = self.store.add_event(job_id, message, level, metrics)
        self._bump()
        return event

    def _bump(self) -> None:
        with self._lock:
            self._version += 1
            self._lock.notify_all()

    def _spawn(self, target, job_id: str) -> None:
        thread = threading.Thread(
            target=target, args=(job_id,), name=f"{target.__name__}-{job_id}", daemon=True
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {_signal_name(-code)}"
    if code == CANCELLED_EXIT:
        return f"exit code {code}: stopped by SIGTERM"
    if 128 < code <= 128 + 64:  # how a shell or a container runtime reports a signal
        return f"exit code {code}: killed by {_signal_name(code - 128)}"
    return f"exit code {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
