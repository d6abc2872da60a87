"""Fine-tuning jobs in the shapes of OpenAI's fine-tuning API, backed by the trainer.

A create request takes OpenAI's fields (`model`, `training_file` and `validation_file` as
an uploaded file id "file-..." or a server-side path, `suffix` as the adapter name,
`hyperparameters`, `seed`, `metadata`, `method`: supervised, or dpo on preference rows)
plus a `tuneyard` object with any JobSpec fields (recipe, template, lora, training,
data.columns...), so a whole spec can be posted; an OpenAI field and the same field in
`tuneyard` must agree. Without `tuneyard` a request is read as OpenAI's would be: chat rows
(template builtin chat, recipe sft), the adapter named by `suffix` or else `ft-<random>`.
`/validate` takes the same body and answers the validation report.
"""

import contextlib
import copy
import math
import secrets
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from google.protobuf import json_format
from pydantic import ConfigDict, Field, WithJsonSchema

from gateway.auth import require_key, require_writer
from gateway.backends import trainer_of
from gateway.openapi import ADMIN, TEMPLATE_REFUSED, TRAINER_ERRORS, Body, event_stream
from gateway.sse import event_response
from tuneyard.errors import InvalidArgument, TuneyardError
from tuneyard.jobspec import JobSpec
from tuneyard.metadata import check_metadata
from tuneyard.protos import UINT32_MAX
from tuneyard.statuses import JOB_STATUSES
from tuneyard.v1 import trainer_pb2

router = APIRouter(
    prefix="/v1/fine_tuning/jobs", dependencies=[Depends(require_key)], responses=TRAINER_ERRORS
)

# OpenAI's learning_rate_multiplier is relative to this learning rate.
LEARNING_RATE_UNIT = 2e-4
EVENT_ID_PREFIX = "ftevent-"
CHECKPOINT_ID_PREFIX = "ftckpt-"
FILE_ID_PREFIX = "file-"
EVAL_FILE_PARAMS = ("data.eval_file_id", "data.eval_path")


class Hyperparameters(Body):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Annotated[float, Field(gt=0)] | Literal["auto"] | None = None
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None
    learning_rate_multiplier: Annotated[float, Field(gt=0)] | Literal["auto"] | None = None


class DpoHyperparameters(Hyperparameters):
    beta: Annotated[float, Field(gt=0, le=100)] | Literal["auto"] | None = None


class Supervised(Body):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class Dpo(Body):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: DpoHyperparameters | None = None


class Method(Body):
    """OpenAI's fine-tuning method: `supervised` (the spec's recipe, as without `method`)
    or `dpo` (recipe dpo on preference rows, template builtin chat unless `tuneyard` says)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo"]
    supervised: Supervised | None = None
    dpo: Dpo | None = None


def _inline(schema, defs: dict):
    """`schema` with each `$ref` into `defs` replaced by the definition."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {key: _inline(value, defs) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    return schema


def _tuneyard_schema() -> dict:
    """JobSpec's fields, as `tuneyard` takes them: none is required, since the OpenAI fields
    give base_model, data and adapter_name, and the template defaults to chat."""
    schema = JobSpec.model_json_schema()
    schema = _inline(
        {k: v for k, v in schema.items() if k not in ("$defs", "required")}, schema["$defs"]
    )
    return {**schema, "title": "Tuneyard"}


class CreateJobBody(Body):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    training_file: str | None = Field(None, description="An uploaded file id or a server path.")
    validation_file: str | None = Field(
        None,
        description="An uploaded file id or a server path: its rows are the eval split "
        "(eval loss in events and checkpoints) instead of a fraction of the training rows.",
    )
    suffix: str | None = Field(None, description="The adapter's name.")
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    seed: int | None = Field(None, ge=0, le=UINT32_MAX)
    metadata: dict | None = Field(
        None,
        description="Up to 16 string key/values (keys up to 64 characters, values up to "
        "512), stored with the job; `GET /v1/fine_tuning/jobs?metadata[k]=v` filters on them.",
    )
    tuneyard: Annotated[dict, WithJsonSchema(_tuneyard_schema())] = Field(default_factory=dict)


def _put(spec: dict, path: tuple[str, ...], value, source: str) -> None:
    """Set spec[path] from an OpenAI field, refusing a different value already there."""
    if value is None or value == "auto":
        return
    node = spec
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise InvalidArgument(f"tuneyard.{key} must be an object", param=f"tuneyard.{key}")
    existing = node.get(path[-1])
    same = (
        math.isclose(existing, value)
        if isinstance(existing, float | int) and isinstance(value, float | int)
        else existing == value
    )
    if existing is not None and not same:
        raise InvalidArgument(
            f"{source}={value!r} conflicts with tuneyard.{'.'.join(path)}={existing!r}",
            param=source,
        )
    node[path[-1]] = value


def spec_from_body(body: CreateJobBody) -> JobSpec:
    spec = copy.deepcopy(body.tuneyard)
    _put(spec, ("base_model",), body.model, "model")
    if body.training_file and body.training_file.startswith(FILE_ID_PREFIX):
        _put(spec, ("data", "file_id"), body.training_file, "training_file")
    else:
        _put(spec, ("data", "path"), body.training_file, "training_file")
    if body.validation_file and body.validation_file.startswith(FILE_ID_PREFIX):
        _put(spec, ("data", "eval_file_id"), body.validation_file, "validation_file")
    else:
        _put(spec, ("data", "eval_path"), body.validation_file, "validation_file")
    _put(spec, ("adapter_name",), body.suffix, "suffix")
    if "adapter_name" not in spec:  # OpenAI's suffix is optional; a name is not
        spec["adapter_name"] = "ft-" + secrets.token_hex(4)
    _put(spec, ("training", "seed"), body.seed, "seed")
    _put_hyperparameters(spec, body.hyperparameters, "hyperparameters")
    method = body.method
    if method is not None:
        if method.type == "dpo":
            _put(spec, ("recipe",), "dpo", "method.type")
        chosen = getattr(method, method.type)
        hp = chosen.hyperparameters if chosen else None
        _put_hyperparameters(spec, hp, f"method.{method.type}.hyperparameters")
        if isinstance(hp, DpoHyperparameters):
            _put(spec, ("dpo", "beta"), hp.beta, f"method.{method.type}.hyperparameters.beta")
    if "template" not in spec:  # OpenAI's training files are chat rows
        spec["template"] = {"builtin": "chat"}
        spec.setdefault("recipe", "sft")
    # Strict, as the request body: the JSON types the schema of `tuneyard` says.
    return JobSpec.parse(spec, strict=True)


def _put_hyperparameters(spec: dict, hp: Hyperparameters | None, source: str) -> None:
    """OpenAI's shared hyperparameters into the spec; "auto" leaves the spec's own."""
    if hp is None:
        return
    _put(spec, ("training", "epochs"), hp.n_epochs, f"{source}.n_epochs")
    _put(spec, ("training", "batch_size"), hp.batch_size, f"{source}.batch_size")
    if hp.learning_rate_multiplier not in (None, "auto"):
        _put(
            spec,
            ("training", "learning_rate"),
            hp.learning_rate_multiplier * LEARNING_RATE_UNIT,
            f"{source}.learning_rate_multiplier",
        )


def _optional(message, field: str):
    return getattr(message, field) if message.HasField(field) else None


def job_json(job: trainer_pb2.Job) -> dict:
    spec, training = job.spec, job.spec.training
    learning_rate = _optional(training, "learning_rate")
    hyperparameters = {
        "n_epochs": _optional(training, "epochs") or "auto",
        "batch_size": _optional(training, "batch_size") or "auto",
        "learning_rate_multiplier": (
            learning_rate / LEARNING_RATE_UNIT if learning_rate else "auto"
        ),
    }
    error = None
    if job.error.code or job.error.message:
        param = job.error.param
        error = {
            "code": job.error.code,
            "message": job.error.message,
            # The job object names its eval file `validation_file`: so does its error.
            "param": ("validation_file" if param in EVAL_FILE_PARAMS else param) or None,
        }
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "created_at": job.created_at,
        "finished_at": job.finished_at or None,
        "model": spec.base_model,
        "fine_tuned_model": job.fine_tuned_model or None,
        "organization_id": "tuneyard",
        "status": JOB_STATUSES.word(job.status),
        "error": error,
        "trained_tokens": job.trained_tokens or None,
        "estimated_finish": job.estimated_finish or None,
        "result_files": list(job.result_files),
        "hyperparameters": hyperparameters,
        "method": method_json(spec, hyperparameters),
        "training_file": spec.data.file_id or spec.data.path or spec.data.dataset,
        "validation_file": spec.data.eval_file_id or spec.data.eval_path or None,
        "seed": training.seed,  # the spec always has one (default 42)
        "suffix": spec.adapter_name or None,
        "integrations": [],
        "metadata": dict(job.metadata) or None,  # as OpenAI: null when none was given
        "tuneyard": {
            "spec": json_format.MessageToDict(spec, preserving_proto_field_name=True),
            "started_at": job.started_at or None,
        },
    }


def method_json(spec: trainer_pb2.JobSpec, hyperparameters: dict) -> dict:
    """The job's method as OpenAI writes it: its type and that type's hyperparameters."""
    if spec.recipe == "dpo":
        beta = _optional(spec.dpo, "beta") if spec.HasField("dpo") else None
        return {
            "type": "dpo",
            "dpo": {"hyperparameters": {**hyperparameters, "beta": beta or "auto"}},
        }
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}


def event_json(event: trainer_pb2.JobEvent) -> dict:
    metrics = event.HasField("metrics")
    return {
        "object": "fine_tuning.job.event",
        "id": f"{EVENT_ID_PREFIX}{event.seq}",
        "created_at": event.created_at,
        "level": event.level,
        "message": event.message,
        "data": (
            json_format.MessageToDict(event.metrics, preserving_proto_field_name=True)
            if metrics
            else {}
        ),
        "type": "metrics" if metrics else "message",
    }


def event_seq(event_id: str) -> int:
    seq = event_id.removeprefix(EVENT_ID_PREFIX)
    if not seq.isdigit():
        raise InvalidArgument(
            f"invalid event id {event_id!r}: expected {EVENT_ID_PREFIX}<n>", param="after"
        )
    return int(seq)


@router.post("", dependencies=[Depends(require_writer)], responses=ADMIN | TEMPLATE_REFUSED)
async def create_job(request: Request, body: CreateJobBody) -> dict:
    metadata = check_metadata(body.metadata)
    spec = spec_from_body(body)
    with _openai_params(body):
        job = await trainer_of(request).call(
            "CreateJob", trainer_pb2.CreateJobRequest(spec=spec.to_proto(), metadata=metadata)
        )
    return job_json(job)


@router.post("/validate", responses=TEMPLATE_REFUSED)
async def validate_job(request: Request, body: CreateJobBody) -> dict:
    """The validation a job would get, with token-length statistics, without a job."""
    spec = spec_from_body(body)
    with _openai_params(body):
        report = await trainer_of(request).call(
            "ValidateDataset", trainer_pb2.ValidateDatasetRequest(spec=spec.to_proto())
        )
    if body.validation_file and report.error.param in EVAL_FILE_PARAMS:
        report.error.param = "validation_file"
    return validation_json(report)


@contextlib.contextmanager
def _openai_params(body: CreateJobBody):
    """A trainer error about the eval file names the OpenAI field the client gave it as."""
    try:
        yield
    except TuneyardError as err:
        if body.validation_file and err.param in EVAL_FILE_PARAMS:
            err.param = "validation_file"
        raise


def validation_json(report: trainer_pb2.ValidationReport) -> dict:
    error = None
    if not report.ok:
        error = {
            "code": report.error.code,
            "message": report.error.message,
            "param": report.error.param or None,
            "line": report.error.line or None,
        }
    return {
        "object": "fine_tuning.validation",
        "ok": report.ok,
        "error": error,
        "base_model": report.base_model,
        "rows": report.rows,
        "train_rows": report.train_rows,
        "eval_rows": report.eval_rows,
        "too_long": report.too_long,
        "too_long_lines": list(report.too_long_lines),
        "tokens": json_format.MessageToDict(
            report.tokens,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        if report.ok
        else None,
        "warnings": list(report.warnings),
    }


@router.get("")
async def list_jobs(
    request: Request, limit: int = Query(20, ge=1, le=100), after: str = ""
) -> dict:
    """Newest first; `metadata[k]=v` (as OpenAI's client sends `metadata={"k": "v"}`), once
    per key, keeps the jobs that have all of them."""
    reply = await trainer_of(request).call(
        "ListJobs",
        trainer_pb2.ListJobsRequest(
            limit=limit, after=after, metadata=metadata_filter(request.query_params)
        ),
    )
    return {"object": "list", "data": [job_json(j) for j in reply.jobs], "has_more": reply.has_more}


def metadata_filter(params) -> dict[str, str]:
    """`metadata[k]=v` query parameters as {k: v}."""
    found = {}
    for name, value in params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            found[name[len("metadata[") : -1]] = value
        elif name == "metadata":
            raise InvalidArgument("filter with metadata[key]=value", param="metadata")
    return found


@router.get("/{job_id}")
async def get_job(request: Request, job_id: str) -> dict:
    job = await trainer_of(request).call("GetJob", trainer_pb2.GetJobRequest(job_id=job_id))
    return job_json(job)


@router.post("/{job_id}/cancel", dependencies=[Depends(require_writer)], responses=ADMIN)
async def cancel_job(request: Request, job_id: str) -> dict:
    job = await trainer_of(request).call("CancelJob", trainer_pb2.CancelJobRequest(job_id=job_id))
    return job_json(job)


@router.post("/{job_id}/pause", dependencies=[Depends(require_writer)], responses=ADMIN)
async def pause_job(request: Request, job_id: str) -> dict:
    """A queued or running job stops and frees its worker, keeping its checkpoints."""
    job = await trainer_of(request).call("PauseJob", trainer_pb2.PauseJobRequest(job_id=job_id))
    return job_json(job)


@router.post("/{job_id}/resume", dependencies=[Depends(require_writer)], responses=ADMIN)
async def resume_job(request: Request, job_id: str) -> dict:
    """A paused job is queued again and goes on from its latest checkpoint."""
    job = await trainer_of(request).call("ResumeJob", trainer_pb2.ResumeJobRequest(job_id=job_id))
    return job_json(job)


@router.get(
    "/{job_id}/events",
    responses={200: event_stream("With `stream=true`: the events, then `data: [DONE]`.")},
)
async def job_events(
    request: Request,
    job_id: str,
    limit: int = Query(20, ge=1, le=1000),
    after: str = "",
    stream: bool = False,
):
    """Newest first, as OpenAI lists them; `after` is an event id. With `stream=true`,
    server-sent events in order (after `after`, if given) until the job ends."""
    backends = request.app.state.backends
    after_seq = event_seq(after) if after else 0
    if stream:
        events = await trainer_of(request).stream(
            "WatchJob",
            trainer_pb2.WatchJobRequest(job_id=job_id, after_seq=after_seq),
            timeout_s=backends.watch_timeout_s,
        )
        return event_response(
            request.url.path, (event_json(e) async for e in events), done_marker=True
        )
    reply = await trainer_of(request).call(
        "ListJobEvents", trainer_pb2.ListJobEventsRequest(job_id=job_id)
    )
    newest_first = [e for e in reversed(reply.events) if not after_seq or e.seq < after_seq]
    return {
        "object": "list",
        "data": [event_json(e) for e in newest_first[:limit]],
        "has_more": len(newest_first) > limit,
    }


def checkpoint_json(checkpoint: trainer_pb2.Checkpoint) -> dict:
    metrics = json_format.MessageToDict(checkpoint.metrics, preserving_proto_field_name=True)
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": f"{CHECKPOINT_ID_PREFIX}{checkpoint.job_id.removeprefix('ftjob-')}-{checkpoint.step}",
        "created_at": checkpoint.created_at,
        "fine_tuned_model_checkpoint": checkpoint.model or checkpoint.published_as or None,
        "fine_tuning_job_id": checkpoint.job_id,
        "step_number": checkpoint.step,
        # OpenAI's names, then every metric the trainer has.
        "metrics": {
            "step": checkpoint.step,
            "train_loss": metrics.get("loss"),
            "train_mean_token_accuracy": metrics.get("mean_token_accuracy"),
            "valid_loss": metrics.get("eval_loss"),
            "valid_mean_token_accuracy": metrics.get("eval_mean_token_accuracy"),
            **metrics,
        },
        "tuneyard": {"published_as": checkpoint.published_as or None},
    }


@router.get("/{job_id}/checkpoints")
async def list_checkpoints(
    request: Request, job_id: str, limit: int = Query(10, ge=1, le=100)
) -> dict:
    """Newest first, as OpenAI lists them."""
    reply = await trainer_of(request).call(
        "ListCheckpoints", trainer_pb2.ListCheckpointsRequest(job_id=job_id)
    )
    newest_first = list(reversed(reply.checkpoints))
    return {
        "object": "list",
        "data": [checkpoint_json(c) for c in newest_first[:limit]],
        "has_more": len(newest_first) > limit,
    }


@router.post(
    "/{job_id}/checkpoints/{step}/publish", dependencies=[Depends(require_writer)], responses=ADMIN
)
async def publish_checkpoint(
    request: Request, job_id: str, step: Annotated[int, Path(ge=1, le=UINT32_MAX)]
) -> dict:
    """Publish one checkpoint as a new version of the job's adapter."""
    checkpoint = await trainer_of(request).call(
        "PublishCheckpoint", trainer_pb2.PublishCheckpointRequest(job_id=job_id, step=step)
    )
    return checkpoint_json(checkpoint)


routers = [router]
