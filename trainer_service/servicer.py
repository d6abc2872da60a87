"""TrainerService over gRPC: proto in, plain calls to the scheduler and store, proto out."""

import contextlib
import threading
import time
from dataclasses import asdict

import grpc

from trainer_service import checkpoints, job_store
from trainer_service.dataset import check_file
from trainer_service.files import FileInfo, FileStore
from trainer_service.project_store import FINE_TUNING_LIMIT, ProjectStore
from trainer_service.scheduler import JobScheduler
from trainer_service.validation import (
    JobValidationError,
    ValidationReport,
    check_data,
    validate,
)
from tuneyard import projects
from tuneyard.adapter_store import AdapterStore
from tuneyard.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    redact_paths,
)
from tuneyard.grpc_server import maps_errors, maps_stream_errors
from tuneyard.jobspec import JobSpec
from tuneyard.metadata import check_metadata
from tuneyard.modeling import public_name
from tuneyard.projects import DEFAULT_PROJECT
from tuneyard.statuses import JOB_STATUSES
from tuneyard.v1 import trainer_pb2, trainer_pb2_grpc

MAX_LIST = 100
DAY_S = 24 * 3600
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
        project=job.project,
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
        project=info.project,
    )


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """Every call is scoped to the caller's project (tuneyard.projects.scope): another
    project's job, file or adapter is NOT_FOUND, and what a call creates is its project's."""

    def __init__(self, scheduler: JobScheduler, projects: ProjectStore):
        self.scheduler = scheduler
        self.project_store = projects
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
        scope = projects.scope(context)
        project = self.project_store.get_project(scope or DEFAULT_PROJECT).id
        spec = self._spec(request.spec, scope)
        metadata = check_metadata(request.metadata)
        self._check_training_limits(project)
        uses_file = bool(spec.data.file_id or spec.data.eval_file_id)
        with self._files_lock if uses_file else contextlib.nullcontext():
            check_data(spec, self.scheduler.files_root)
            return job_to_proto(self.scheduler.create(spec, metadata, project))

    def _check_training_limits(self, project: str) -> None:
        limit = self.project_store.rate_limit(project, FINE_TUNING_LIMIT)
        most = limit.max_concurrent_jobs
        if most is not None and (unended := self.store.unended_count(project)) >= most:
            raise ResourceExhausted(
                f"the project has {unended} fine-tuning jobs that have not ended; its limit "
                f"is {most} ({FINE_TUNING_LIMIT} max_concurrent_jobs): wait for one to end",
                param="model",
            )
        most = limit.max_trained_tokens_per_1_day
        if most is not None:
            trained = self.store.trained_tokens_since(project, time.time() - DAY_S)
            if trained >= most:
                raise ResourceExhausted(
                    f"the project's jobs trained {trained} tokens in the last 24 hours; its "
                    f"limit is {most} ({FINE_TUNING_LIMIT} max_trained_tokens_per_1_day)",
                    param="model",
                )

    @maps_errors
    def GetJob(self, request, context):
        return job_to_proto(self._job(request.job_id, context))

    @maps_errors
    def ListJobs(self, request, context):
        limit = min(request.limit or 20, MAX_LIST)
        jobs, has_more = self.store.list_jobs(
            limit=limit,
            after=request.after,
            metadata=dict(request.metadata),
            project=projects.scope(context),
        )
        return trainer_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs], has_more=has_more)

    @maps_errors
    def CancelJob(self, request, context):
        return job_to_proto(self.scheduler.cancel(self._job(request.job_id, context).id))

    @maps_errors
    def PauseJob(self, request, context):
        return job_to_proto(self.scheduler.pause(self._job(request.job_id, context).id))

    @maps_errors
    def ResumeJob(self, request, context):
        return job_to_proto(self.scheduler.resume(self._job(request.job_id, context).id))

    def _job(self, job_id: str, context) -> job_store.Job:
        return self.store.get_job(job_id, projects.scope(context))

    @maps_stream_errors
    def WatchJob(self, request, context):
        seq = request.after_seq
        self._job(request.job_id, context)  # NOT_FOUND before streaming anything
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
        self._job(request.job_id, context)
        events = self.store.events(request.job_id, after_seq=request.after_seq, limit=request.limit)
        return trainer_pb2.ListJobEventsResponse(events=[event_to_proto(e) for e in events])

    def _spec(self, message: trainer_pb2.JobSpec, scope: str | None) -> JobSpec:
        """A client's spec, its server paths checked against the data folders and its files
        against the caller's project first; its adapter named as its project's."""
        spec = JobSpec.from_proto(message)
        self.scheduler.data_roots.check_spec(spec, scoped=scope is not None)
        for param, file_id in _file_fields(spec):
            try:
                self.files.get(file_id, scope)
            except NotFound as err:
                raise NotFound(err.message, param=param) from None
        project = scope or DEFAULT_PROJECT
        name = projects.qualified(project, spec.adapter_name)
        if projects.owner_of(name) != project:
            raise InvalidArgument(
                f"adapter_name {spec.adapter_name!r} names another project's adapter",
                param="adapter_name",
            )
        return self.scheduler.resolve_spec(spec.model_copy(update={"adapter_name": name}))

    @maps_errors
    def ValidateDataset(self, request, context):
        if not request.HasField("spec"):
            raise InvalidArgument("spec is required", param="spec")
        spec = self._spec(request.spec, projects.scope(context))
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
        self._job(request.job_id, context)
        found = checkpoints.list_checkpoints(self._workdir(request.job_id), request.job_id)
        return trainer_pb2.ListCheckpointsResponse(
            checkpoints=[checkpoint_to_proto(c) for c in found]
        )

    @maps_errors
    def PublishCheckpoint(self, request, context):
        self._job(request.job_id, context)
        checkpoint, published = checkpoints.publish_checkpoint(
            self.adapters, self._workdir(request.job_id), request.job_id, request.step
        )
        if published and self.scheduler.on_published is not None:
            self.scheduler.on_published(request.job_id, checkpoint.published_as)
        return checkpoint_to_proto(checkpoint)

    @maps_errors
    def UploadFile(self, request, context):
        project = self.project_store.get_project(projects.scope(context) or DEFAULT_PROJECT).id
        info = self.files.put(request.filename, request.purpose, request.content, project)
        return file_to_proto(info)

    @maps_errors
    def GetFile(self, request, context):
        return file_to_proto(self.files.get(request.file_id, projects.scope(context)))

    @maps_errors
    def ListFiles(self, request, context):
        found = self.files.list(projects.scope(context))
        return trainer_pb2.ListFilesResponse(files=[file_to_proto(f) for f in found])

    @maps_stream_errors
    def GetFileContent(self, request, context):
        info = self.files.get(request.file_id, projects.scope(context))
        chunks = self.files.read_chunks(request.file_id)
        yield trainer_pb2.FileChunk(file=file_to_proto(info), data=next(chunks, b""))
        for data in chunks:
            yield trainer_pb2.FileChunk(data=data)

    @maps_errors
    def DeleteFile(self, request, context):
        with self._files_lock:
            info = self.files.get(request.file_id, projects.scope(context))
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
        deleted = self.adapters.delete(_adapter_id(request.adapter_id, context))
        return trainer_pb2.DeleteAdapterResponse(deleted=[v.id for v in deleted])

    @maps_errors
    def PromoteAdapter(self, request, context):
        """The volume only: the caller tells the inference replicas to load it."""
        version = self.adapters.promote(_adapter_id(request.adapter_id, context))
        return trainer_pb2.PromoteAdapterResponse(promoted=version.id)

    def _unended_jobs(self) -> list[job_store.Job]:
        return self.store.jobs_with_status(
            job_store.VALIDATING_FILES, job_store.QUEUED, job_store.RUNNING
        )

    def _workdir(self, job_id: str):
        return self.scheduler.workdir / job_id


def _adapter_id(adapter_id: str, context) -> str:
    return projects.resolve_adapter(projects.scope(context), adapter_id)


def _file_fields(spec: JobSpec) -> list[tuple[str, str]]:
    """(field, file id) of each uploaded file the spec names."""
    evaluation = spec.evaluation or {}
    found = [
        ("data.file_id", spec.data.file_id),
        ("data.eval_file_id", spec.data.eval_file_id),
        ("evaluation.eval_file_id", evaluation.get("eval_file_id")),
    ]
    return [(param, file_id) for param, file_id in found if file_id]


def _uses_file(spec: JobSpec, file_id: str) -> bool:
    """As its training data, its validation file (the eval split), or as the eval rows of
    the evaluation that follows it."""
    return file_id in (found for _, found in _file_fields(spec))


def add_to_server(servicer: TrainerServicer, server: grpc.Server) -> str:
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server)
    return trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
