"""TrainerService over gRPC: proto in, plain calls to the scheduler and store, proto out."""

import contextlib
import threading
from dataclasses import asdict

import grpc

from trainer_service import checkpoints, job_store
from trainer_service.dataset import check_file
from trainer_service.files import FileInfo, FileStore
from trainer_service.scheduler import JobScheduler
from trainer_service.validation import (
    JobValidationError,
    ValidationReport,
    check_data,
    validate,
)
from tuneyard.adapter_store import AdapterStore
from tuneyard.errors import FailedPrecondition, InvalidArgument, redact_paths
from tuneyard.grpc_server import maps_errors, maps_stream_errors
from tuneyard.jobspec import JobSpec
from tuneyard.metadata import check_metadata
from tuneyard.modeling import public_name
from tuneyard.statuses import JOB_STATUSES
from tuneyard.v1 import trainer_pb2, trainer_pb2_grpc

MAX_LIST = 100
WATCH_WAIT_S = 1.0  # how often a watch re-checks that its client is still there


def job_to_proto(job: job_store.Job) -> trainer_pb2.Job:
    spec = job.spec
    message = trainer_pb2.Job(
        id=job.id,
        status=JOB_STATUSES.value(job.status),
        spec=spec.model_copy(update={"base_model": public_name(spec.base_model)}).to_proto(),
        created_at=int(job.created_at),
        started_at=int(job.started_at),
        finished_at=int(job.finished_at),
        fine_tuned_model=job.fine_tuned_model,
        trained_tokens=job.trained_tokens,
        estimated_finish=int(job.estimated_finish),
        result_files=job.result_files,
        metadata=job.metadata,
    )
    if job.error:
        message.error.CopyFrom(
            trainer_pb2.JobError(
                code=job.error.code,
                message=redact_paths(job.error.message),
                param=job.error.param,
                line=job.error.line,
            )
        )
    return message


def event_to_proto(event: job_store.Event) -> trainer_pb2.JobEvent:
    message = trainer_pb2.JobEvent(
        seq=event.seq,
        job_id=event.job_id,
        created_at=int(event.created_at),
        level=event.level,
        message=redact_paths(event.message),
    )
    if event.metrics:
        message.metrics.CopyFrom(metrics_to_proto(event.metrics))
    return message


def metrics_to_proto(metrics: dict) -> trainer_pb2.Metrics:
    """Known keys only, each cast to its proto field's type (JSON has one number type)."""
    message = trainer_pb2.Metrics()
    for name, field in trainer_pb2.Metrics.DESCRIPTOR.fields_by_name.items():
        value = metrics.get(name)
        if value is not None:
            is_float = field.cpp_type == field.CPPTYPE_DOUBLE
            setattr(message, name, float(value) if is_float else max(int(value), 0))
    return message


def report_to_proto(report: ValidationReport) -> trainer_pb2.ValidationReport:
    return trainer_pb2.ValidationReport(
        ok=True,
        base_model=public_name(report.base_model.id),
        rows=report.rows,
        train_rows=report.train_rows,
        eval_rows=report.eval_rows,
        too_long=report.too_long,
        too_long_lines=report.too_long_lines,
        tokens=trainer_pb2.TokenStats(**asdict(report.tokens)) if report.tokens else None,
        warnings=report.warnings,
    )


def checkpoint_to_proto(checkpoint: checkpoints.Checkpoint) -> trainer_pb2.Checkpoint:
    return trainer_pb2.Checkpoint(
        job_id=checkpoint.job_id,
        step=checkpoint.step,
        created_at=int(checkpoint.created_at),
        metrics=metrics_to_proto(checkpoint.metrics),
        published_as=checkpoint.published_as,
        model=checkpoint.model,
    )


def file_to_proto(info: FileInfo) -> trainer_pb2.File:
    return trainer_pb2.File(
        id=info.id,
        bytes=info.bytes,
        created_at=int(info.created_at),
        filename=info.filename,
        purpose=info.purpose,
    )


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, scheduler: JobScheduler):
        self.scheduler = scheduler
        self.journal = scheduler.journal
        self.store = scheduler.store
        max_row_bytes = scheduler.settings.max_row_bytes
        self.files = FileStore(
            scheduler.files_root, check=lambda path: check_file(path, max_row_bytes)
        )
        settings = scheduler.settings
        self.adapters = AdapterStore(settings.resolved_adapters_dir, settings.adapters_mode)
        # Held by CreateJob on an uploaded file and by DeleteFile, so a file cannot go
        # between a new job's check of it and the job being stored.
        self._files_lock = threading.Lock()

    @maps_errors
    def CreateJob(self, request, context):
        """Refuses (INVALID_ARGUMENT, naming the field and line, as ValidateDataset would)
        a job whose data does not read or does not fit its template, before it is stored;
        the rest of validation (base model, token lengths, split) runs in the background."""
        if not request.HasField("spec"):
            raise InvalidArgument("spec is required", param="spec")
        spec = self._spec(request.spec)
        metadata = check_metadata(request.metadata)
        uses_file = bool(spec.data.file_id or spec.data.eval_file_id)
        with self._files_lock if uses_file else contextlib.nullcontext():
            check_data(spec, self.scheduler.files_root)
            return job_to_proto(self.scheduler.create(spec, metadata))

    @maps_errors
    def GetJob(self, request, context):
        return job_to_proto(self.store.get_job(request.job_id))

    @maps_errors
    def ListJobs(self, request, context):
        limit = min(request.limit or 20, MAX_LIST)
        jobs, has_more = self.store.list_jobs(
            limit=limit, after=request.after, metadata=dict(request.metadata)
        )
        return trainer_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs], has_more=has_more)

    @maps_errors
    def CancelJob(self, request, context):
        return job_to_proto(self.scheduler.cancel(request.job_id))

    @maps_errors
    def PauseJob(self, request, context):
        return job_to_proto(self.scheduler.pause(request.job_id))

    @maps_errors
    def ResumeJob(self, request, context):
        return job_to_proto(self.scheduler.resume(request.job_id))

    @maps_stream_errors
    def WatchJob(self, request, context):
        seq = request.after_seq
        self.store.get_job(request.job_id)  # NOT_FOUND before streaming anything
        while context.is_active():
            version = self.journal.version
            job = self.store.get_job(request.job_id)
            settled = self.journal.settled(job)
            # Status first, then events: the final event is stored before the final status.
            for event in self.store.events(request.job_id, after_seq=seq):
                seq = event.seq
                yield event_to_proto(event)
            if settled:  # ended, and what runs after it (an evaluation) has reported
                return
            self.journal.wait_for_change(version, timeout=WATCH_WAIT_S)

    @maps_errors
    def ListJobEvents(self, request, context):
        self.store.get_job(request.job_id)
        events = self.store.events(request.job_id, after_seq=request.after_seq, limit=request.limit)
        return trainer_pb2.ListJobEventsResponse(events=[event_to_proto(e) for e in events])

    def _spec(self, message: trainer_pb2.JobSpec) -> JobSpec:
        """A client's spec, its server paths checked against the data folders first."""
        spec = JobSpec.from_proto(message)
        self.scheduler.data_roots.check_spec(spec)
        return self.scheduler.resolve_spec(spec)

    @maps_errors
    def ValidateDataset(self, request, context):
        if not request.HasField("spec"):
            raise InvalidArgument("spec is required", param="spec")
        spec = self._spec(request.spec)
        try:
            return report_to_proto(validate(spec, self.scheduler.files_root))
        except JobValidationError as err:
            return trainer_pb2.ValidationReport(
                ok=False,
                base_model=public_name(spec.base_model),
                error=trainer_pb2.JobError(
                    code=err.reason,
                    message=redact_paths(err.message),
                    param=err.param,
                    line=err.line,
                ),
            )

    @maps_errors
    def ListCheckpoints(self, request, context):
        self.store.get_job(request.job_id)
        found = checkpoints.list_checkpoints(self._workdir(request.job_id), request.job_id)
        return trainer_pb2.ListCheckpointsResponse(
            checkpoints=[checkpoint_to_proto(c) for c in found]
        )

    @maps_errors
    def PublishCheckpoint(self, request, context):
        self.store.get_job(request.job_id)
        checkpoint, published = checkpoints.publish_checkpoint(
            self.adapters, self._workdir(request.job_id), request.job_id, request.step
        )
        if published and self.scheduler.on_published is not None:
            self.scheduler.on_published(request.job_id, checkpoint.published_as)
        return checkpoint_to_proto(checkpoint)

    @maps_errors
    def UploadFile(self, request, context):
        return file_to_proto(self.files.put(request.filename, request.purpose, request.content))

    @maps_errors
    def GetFile(self, request, context):
        return file_to_proto(self.files.get(request.file_id))

    @maps_errors
    def ListFiles(self, request, context):
        return trainer_pb2.ListFilesResponse(files=[file_to_proto(f) for f in self.files.list()])

    @maps_stream_errors
    def GetFileContent(self, request, context):
        info = self.files.get(request.file_id)
        chunks = self.files.read_chunks(request.file_id)
        yield trainer_pb2.FileChunk(file=file_to_proto(info), data=next(chunks, b""))
        for data in chunks:
            yield trainer_pb2.FileChunk(data=data)

    @maps_errors
    def DeleteFile(self, request, context):
        with self._files_lock:
            info = self.files.get(request.file_id)
            users = [job.id for job in self._unended_jobs() if _uses_file(job.spec, info.id)]
            if users:
                raise FailedPrecondition(
                    f"file {info.id!r} is the data of job {', '.join(users)}, which has not "
                    "ended; cancel it or wait for it to end first",
                    param="file_id",
                )
            return file_to_proto(self.files.delete(info.id))

    @maps_errors
    def DeleteAdapter(self, request, context):
        """The volume only: the caller tells the inference replicas to unload what went
        (they never load it again, as it no longer resolves)."""
        deleted = self.adapters.delete(request.adapter_id)
        return trainer_pb2.DeleteAdapterResponse(deleted=[v.id for v in deleted])

    @maps_errors
    def PromoteAdapter(self, request, context):
        """The volume only: the caller tells the inference replicas to load it."""
        version = self.adapters.promote(request.adapter_id)
        return trainer_pb2.PromoteAdapterResponse(promoted=version.id)

    def _unended_jobs(self) -> list[job_store.Job]:
        return self.store.jobs_with_status(
            job_store.VALIDATING_FILES, job_store.QUEUED, job_store.RUNNING
        )

    def _workdir(self, job_id: str):
        return self.scheduler.workdir / job_id


def _uses_file(spec: JobSpec, file_id: str) -> bool:
    """As its training data, its validation file (the eval split), or as the eval rows of
    the evaluation that follows it."""
    evaluation = spec.evaluation or {}
    return file_id in (
        spec.data.file_id,
        spec.data.eval_file_id,
        evaluation.get("eval_file_id"),
        evaluation.get("evalFileId"),
    )


def add_to_server(servicer: TrainerServicer, server: grpc.Server) -> str:
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server)
    return trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
