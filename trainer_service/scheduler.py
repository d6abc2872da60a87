"""The job lifecycle: validate, queue (FIFO), run through an executor, then the actions
the service injected for a published version and a succeeded job (preload it in the
inference service, evaluate it). Every write goes through the job's journal.

A job whose worker dies (killed by a signal, or gone without reporting an error) or whose
trainer restarts goes on from its last checkpoint, `max_resumes` times in all; a worker that
reports an error fails the job, which running it again would not change.
"""

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainer_service.checkpoints import checkpoint_step, last_checkpoint
from trainer_service.data_roots import DataRoots
from trainer_service.executors.base import CANCELLED_EXIT, ExecutionHandle, Executor
from trainer_service.files import FileStore, files_dir
from trainer_service.job_store import Job, JobError
from trainer_service.journal import JobJournal
from trainer_service.results import ResultsFiles, store_result_files
from trainer_service.settings import TrainerSettings
from trainer_service.validation import JobValidationError, validate
from trainer_service.worker_events import WorkerEvents, WorkerRun
from tuneyard.errors import FailedPrecondition
from tuneyard.jobspec import JobSpec
from tuneyard.modeling import public_name
from tuneyard.projects import DEFAULT_PROJECT
from tuneyard.statuses import (
    CANCELLED,
    FAILED,
    PAUSED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    VALIDATING_FILES,
)

log = logging.getLogger(__name__)
NO_CHECKPOINT = (
    "it has no checkpoint to resume from (training.save_steps is 0 or none was saved yet)"
)


@dataclass(eq=False)
class _Attempt:
    """One run of a job, from its dispatch to its end: its worker's handle once started,
    and why it is being stopped ("cancel" or "pause"; "" while it runs on). The
    scheduler's lock guards both."""

    job_id: str
    handle: ExecutionHandle | None = None
    stop: str = ""


class JobScheduler:
    def __init__(
        self,
        settings: TrainerSettings,
        journal: JobJournal,
        executor: Executor,
        on_published: Callable[[str, str], None] | None = None,
        after_success: Sequence[Callable[[Job], None]] = (),
    ):
        """`on_published(job_id, model)` runs when the job published its version, before
        the job is marked succeeded; `after_success` actions run after it is."""
        self.settings = settings
        self.journal = journal
        self.store = journal.store
        self.executor = executor
        self.on_published = on_published
        self.after_success = tuple(after_success)
        self.workdir = Path(settings.resolved_trainer_workdir)
        self.files_root = files_dir(settings)
        self.data_roots = DataRoots.of(settings)
        self.files = FileStore(self.files_root)
        self.results_files = ResultsFiles(self.store, self.files)
        self._lock = threading.RLock()  # the queue, the running attempts, status checks
        self._queue: deque[str] = deque()
        self._running: dict[str, _Attempt] = {}  # job id -> its attempt now
        self._threads: list[threading.Thread] = []
        self._closed = False

    # --- public --------------------------------------------------------------------------
    def start(self) -> None:
        """Recover what a previous trainer left: a running job lost its worker, and resumes
        from its last checkpoint (queued first) or fails saying why; validating and queued
        jobs start over in their original order."""
        for job in self.store.jobs_with_status(RUNNING):
            checkpoint = last_checkpoint(self.workdir / job.id)
            if reason := self._not_resumable(checkpoint, job.resumes):
                lost = "the trainer restarted while the job was running and its worker was lost"
                self._fail(job.id, f"{lost}; {reason}", "worker_lost", RUNNING)
                continue
            self.journal.transition(
                job.id,
                QUEUED,
                f"the trainer restarted while the job was running; it will resume from "
                f"{checkpoint.name}",
                level="warn",
                expected=RUNNING,
                resumes=job.resumes + 1,
            )
        for job in self.store.jobs_with_status(VALIDATING_FILES, QUEUED):
            self.journal.event(job.id, f"trainer restarted: job {job.status} again")
            if job.status == QUEUED:
                with self._lock:
                    self._queue.append(job.id)
            else:
                self._spawn(self._validate, job.id)
        self._dispatch()

    def resolve_spec(self, spec: JobSpec) -> JobSpec:
        """The service's base model for an empty one (or its served name); a relative local
        folder or data path made absolute, since the worker runs in its job folder."""
        default = self.settings.resolved_base_model
        # The default base model also answers to the name clients see it by (/v1/models).
        served = {self.settings.served_model_name, public_name(default)} - {""}
        base = default if not spec.base_model or spec.base_model in served else spec.base_model
        if Path(base).is_dir():
            base = str(Path(base).resolve())
        data = spec.data
        for name in ("path", "eval_path"):
            value = getattr(data, name)
            if value and Path(value).exists():
                data = data.model_copy(update={name: str(Path(value).resolve())})
        return spec.model_copy(update={"base_model": base, "data": data})

    def create(
        self, spec: JobSpec, metadata: dict | None = None, project: str = DEFAULT_PROJECT
    ) -> Job:
        """Store the job and validate it in the background; returns it validating_files."""
        job = self.store.create_job(self.resolve_spec(spec), metadata=metadata, project=project)
        self.journal.event(job.id, "job created; validating data")
        self._spawn(self._validate, job.id)
        return job

    def get(self, job_id: str) -> Job:
        return self.store.get_job(job_id)

    def cancel(self, job_id: str) -> Job:
        with self._lock:  # every transition happens under the lock: the status is current
            job = self.store.get_job(job_id)
            attempt = self._running.get(job.id)
            if job.status == PAUSED:
                self.journal.transition(
                    job.id, CANCELLED, "cancelled while paused", expected=PAUSED
                )
            elif job.status in (VALIDATING_FILES, QUEUED):
                if job.id in self._queue:
                    self._queue.remove(job.id)
                self.journal.transition(
                    job.id, CANCELLED, "cancelled before it ran", expected=job.status
                )
            elif job.status == RUNNING and attempt is not None and attempt.stop != "cancel":
                self.journal.event(job.id, "cancellation requested; stopping the worker")
                self._stop(attempt, "cancel")
        return self.store.get_job(job_id)

    def pause(self, job_id: str) -> Job:
        """Stop a queued or running job and free its worker; its checkpoints stay, and
        `resume` goes on from the latest. A job that saves none is refused: pausing it
        would throw its training away."""
        with self._lock:
            job = self.store.get_job(job_id)
            if job.status not in (QUEUED, RUNNING):
                raise FailedPrecondition(
                    f"job {job_id} is {job.status}; only a queued or running job can be paused",
                    param="job_id",
                )
            if not job.spec.training.save_steps:
                raise FailedPrecondition(
                    f"job {job_id} saves no checkpoints (training.save_steps is 0), so it "
                    "could not go on where it stopped; cancel it instead",
                    param="job_id",
                )
            attempt = self._running.get(job.id)
            if job.status == QUEUED:
                if job.id in self._queue:
                    self._queue.remove(job.id)
                self.journal.transition(job.id, PAUSED, "paused before it started", expected=QUEUED)
            elif attempt is not None and not attempt.stop:
                self.journal.event(job.id, "pause requested; stopping the worker")
                self._stop(attempt, "pause")
        return self.store.get_job(job_id)

    def resume(self, job_id: str) -> Job:
        """Queue a paused job again; its worker goes on from the latest checkpoint."""
        with self._lock:
            job = self.store.get_job(job_id)
            if job.status != PAUSED:
                raise FailedPrecondition(
                    f"job {job_id} is {job.status}; only a paused job can be resumed",
                    param="job_id",
                )
            self.journal.transition(job_id, QUEUED, "resumed; queued", expected=PAUSED)
            self._queue.append(job_id)
        self._dispatch()
        return self.store.get_job(job_id)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking work, stop running workers, and wait for their threads."""
        with self._lock:
            self._closed = True
            handles = [a.handle for a in self._running.values() if a.handle is not None]
        for handle in handles:
            handle.cancel()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    # --- lifecycle -----------------------------------------------------------------------
    def _validate(self, job_id: str) -> None:
        try:
            report = validate(self.store.get_job(job_id).spec, self.files_root)
        except JobValidationError as err:
            error = JobError(err.reason, err.message, err.param, err.line)
            self._fail_validation(job_id, error)
            return
        except Exception as err:  # a bug or an unreadable model must not strand the job
            log.exception("validation of %s crashed", job_id)
            self._fail_validation(job_id, JobError("validation_error", f"validation failed: {err}"))
            return
        for warning in report.warnings:
            self.journal.event(job_id, warning, level="warn")
        with self._lock:
            queued = self.journal.transition(
                job_id,
                QUEUED,
                f"validated {report.rows} rows ({report.train_rows} train, "
                f"{report.eval_rows} eval, longest {report.max_tokens} tokens); queued",
                expected=VALIDATING_FILES,
            )
            if queued is None:
                return  # cancelled meanwhile
            self._queue.append(job_id)
        self._dispatch()

    def _fail_validation(self, job_id: str, error: JobError) -> None:
        # Not when cancelled meanwhile.
        self.journal.transition(
            job_id, FAILED, error.message, error=error, expected=VALIDATING_FILES
        )

    def _dispatch(self) -> None:
        with self._lock:
            while (
                self._queue
                and not self._closed
                and len(self._running) < self.settings.max_concurrent_jobs
            ):
                job_id = self._queue.popleft()
                if self.journal.transition(job_id, RUNNING, "job started", expected=QUEUED):
                    attempt = self._running[job_id] = _Attempt(job_id)
                    self._spawn(self._run, attempt)

    def _run(self, attempt: _Attempt) -> None:
        job_id = attempt.job_id
        try:
            self._run_worker(attempt)
        except Exception as err:
            log.exception("job %s", job_id)
            message = f"the trainer could not run the job: {err}"
            self._fail(job_id, message, "internal", RUNNING)
        finally:
            with self._lock:
                # Its own entry only: a job paused and resumed meanwhile has a new attempt.
                if self._running.get(job_id) is attempt:
                    del self._running[job_id]
            self._dispatch()

    def _stop(self, attempt: _Attempt, reason: str) -> None:
        """Under the lock: stop the attempt's worker (once started), saying why."""
        attempt.stop = reason
        if attempt.handle is not None:
            attempt.handle.cancel()

    def _not_resumable(self, checkpoint: Path | None, resumes: int) -> str:
        """Why a job whose worker was lost cannot go on from `checkpoint`; "" when it can.
        Each resume counts against max_resumes, whatever lost the worker (its death, a
        trainer stop or restart)."""
        if checkpoint is None:
            return NO_CHECKPOINT
        limit = self.settings.max_resumes
        if resumes >= limit:
            return f"it was resumed {resumes} times already (max_resumes is {limit})"
        return ""

    def _run_worker(self, attempt: _Attempt) -> None:
        """Run the job's worker until it ends for good: a worker that died (killed by a
        signal, or gone without reporting an error) is started again from the job's last
        checkpoint, up to max_resumes times in all (trainer restarts included)."""
        job_id = attempt.job_id
        workdir = self.workdir / job_id
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "spec.json").write_text(self.store.get_job(job_id).spec.model_dump_json())
        while True:
            with self._lock:
                stopping = bool(attempt.stop) or self._closed
            # Cancelled or stopped before a (re)start: as if the worker had stopped at once.
            run = WorkerRun(CANCELLED_EXIT) if stopping else self._run_once(attempt, workdir)
            with self._lock:
                stop, closed = attempt.stop, self._closed
            if run.code == 0 and run.result is not None:
                self._succeed(job_id, run.result)
            elif stop == "cancel":
                self.journal.transition(
                    job_id, CANCELLED, "cancelled; nothing was published", expected=RUNNING
                )
            elif stop == "pause":
                self._paused(job_id, workdir)
            elif closed:
                self._interrupted(job_id)
            elif run.died:
                if self._resume_after_death(attempt, workdir, run.code):
                    continue
            else:
                self._fail_worker(job_id, run)
            return

    def _run_once(self, attempt: _Attempt, workdir: Path) -> WorkerRun:
        """Start the worker, relay its events, and wait for it to end."""
        handle = self.executor.start(attempt.job_id, workdir)
        with self._lock:
            attempt.handle = handle
            if attempt.stop or self._closed:
                handle.cancel()
        result, last_error = WorkerEvents(self.journal).read(attempt.job_id, handle.events())
        return WorkerRun(handle.wait(), result, last_error)

    def _resume_after_death(self, attempt: _Attempt, workdir: Path, code: int) -> bool:
        """A worker died under a running job: True to start it again from the job's last
        checkpoint (or to let the loop end a job stopped meanwhile), False once the job
        failed, saying why it was not resumed."""
        job_id = attempt.job_id
        died = f"the worker died ({_describe_exit(code)}) without reporting an error"
        checkpoint = last_checkpoint(workdir)
        with self._lock:
            if attempt.stop or self._closed:
                return True  # the loop ends it as cancelled, paused or interrupted
            resumes = self.store.get_job(job_id).resumes
            if reason := self._not_resumable(checkpoint, resumes):
                self._fail(job_id, f"{died}; {reason}", "worker_failed", RUNNING)
                return False
            self.journal.progress(job_id, resumes=resumes + 1, estimated_finish=0)
            self.journal.event(
                job_id,
                f"{died}; resuming from checkpoint step {checkpoint_step(checkpoint)} "
                f"(resume {resumes + 1} of {self.settings.max_resumes})",
                level="warn",
            )
            return True

    def _fail_worker(self, job_id: str, attempt: WorkerRun) -> None:
        """The worker failed for a reason it (or its executor) reported, or ended without a
        result: running it again would not help."""
        reason = attempt.error or (
            "the worker ended without publishing a result"
            if attempt.code == 0
            else "the worker crashed after publishing"
        )
        self._fail(job_id, f"{reason} ({_describe_exit(attempt.code)})", "worker_failed", RUNNING)

    def _paused(self, job_id: str, workdir: Path) -> None:
        checkpoint = last_checkpoint(workdir)
        since = (
            f"its checkpoint at step {checkpoint_step(checkpoint)}"
            if checkpoint is not None
            else "the start (no checkpoint was saved yet)"
        )
        message = f"paused; resuming goes on from {since}"
        self.journal.transition(job_id, PAUSED, message, expected=RUNNING)

    def _interrupted(self, job_id: str) -> None:
        """The trainer stopped under a running job: queue it to resume from its checkpoint
        at the next start, or fail it."""
        checkpoint = last_checkpoint(self.workdir / job_id)
        resumes = self.store.get_job(job_id).resumes
        if reason := self._not_resumable(checkpoint, resumes):
            message = f"the trainer service stopped during the job, and {reason}"
            self._fail(job_id, message, "interrupted", RUNNING)
            return
        self.journal.transition(
            job_id,
            QUEUED,
            f"the trainer service stopped during the job; it will resume from "
            f"{checkpoint.name} when the trainer starts again",
            level="warn",
            expected=RUNNING,
            resumes=resumes + 1,
        )

    def _succeed(self, job_id: str, result: dict) -> None:
        model = str(result.get("fine_tuned_model", ""))
        self.journal.progress(
            job_id, fine_tuned_model=model, trained_tokens=int(result.get("trained_tokens", 0))
        )
        # The results CSV first, as OpenAI lists it, and before the job reads succeeded: a
        # client that sees the status reads result_files[0] at once (after_success actions
        # run only after the transition).
        files = [self._results_file(job_id), *self._output_files(job_id, result)]
        self.journal.add_result_files(job_id, [f for f in files if f])
        if self.on_published is not None:
            self.on_published(job_id, model)
        self.journal.follow(job_id)  # a watch stays open for what the actions report
        try:
            message = f"succeeded: published {model}"
            job = self.journal.transition(job_id, SUCCEEDED, message, expected=RUNNING)
            for action in self.after_success if job is not None else ():
                action(job)
        finally:
            self.journal.followed(job_id)

    def _results_file(self, job_id: str) -> str:
        try:
            return self.results_files(job_id)
        except Exception as err:  # the job trained and published: do not fail it for this
            log.exception("results file of %s", job_id)
            self.journal.event(job_id, f"could not write the results file: {err}", level="warn")
            return ""

    def _output_files(self, job_id: str, result: dict) -> list[str]:
        try:
            project = self.store.get_job(job_id).project
            return store_result_files(self.files, result.get("result_files", []), project)
        except Exception as err:  # as for the results file: the job trained and published
            log.exception("result files of %s", job_id)
            self.journal.event(job_id, f"could not store the result files: {err}", level="warn")
            return []

    def _fail(self, job_id: str, message: str, code: str, expected: str) -> None:
        """From `expected` only: a job that another writer ended meanwhile stays ended."""
        error = JobError(code, message)
        self.journal.transition(job_id, FAILED, message, error=error, expected=expected)

    def _spawn(self, target, arg) -> None:
        name = getattr(arg, "job_id", arg)
        thread = threading.Thread(
            target=target, args=(arg,), name=f"{target.__name__}-{name}", daemon=True
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
