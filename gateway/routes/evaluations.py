"""Evaluations (an adapter against prompting its base model), backed by the trainer's
EvaluationService. The create body is the proto's EvaluationSpec as JSON (its field names)."""

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from google.protobuf import json_format
from pydantic import ConfigDict, Field

from gateway.auth import require_key, require_writer
from gateway.backends import evaluations_of
from gateway.openapi import ADMIN, TRAINER_ERRORS, Body
from tuneyard.errors import InvalidArgument
from tuneyard.protos import UINT32_MAX
from tuneyard.statuses import EVALUATION_STATUSES
from tuneyard.v1 import evaluation_pb2 as pb

router = APIRouter(
    prefix="/v1/evaluations", dependencies=[Depends(require_key)], responses=TRAINER_ERRORS
)
routers = [router]

UINT64_MAX = 2**64 - 1
# The content types of the report formats (GetEvaluationReport), html and md.
REPORT_CONTENT_TYPES = ("text/html", "text/markdown")


def evaluation_json(evaluation: pb.Evaluation) -> dict:
    body = json_format.MessageToDict(
        evaluation, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    # Integers of 64 bits come out of MessageToDict as strings.
    for key in ("created_at", "started_at", "finished_at"):
        body[key] = int(body[key]) or None
    body["spec"]["seed"] = int(body["spec"]["seed"])
    return {"object": "evaluation", **body, "status": EVALUATION_STATUSES.word(evaluation.status)}


class Check(Body):
    """evaluation.proto's Check: one check run on every answer."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["exact_match", "contains", "regex", "json_schema", "rouge_l"]
    name: str = ""
    value: str = ""
    pattern: str = ""
    fullmatch: bool = False
    # The proto's name; another one here, as BaseModel has a `schema_json`.
    schema_text: str = Field("", alias="schema_json")


class EvaluationSpec(Body):
    """evaluation.proto's EvaluationSpec; what each field means is said there."""

    model_config = ConfigDict(extra="forbid")

    adapter_id: str = ""
    job_id: str = ""
    eval_file: str = ""
    eval_file_id: str = ""
    arms: list[Literal["zero_shot", "few_shot", "adapter"]] = []
    compare_adapters: list[str] = []
    few_shot_k: int = Field(0, ge=0, le=UINT32_MAX)
    few_shot_file: str = ""
    checks: list[Check] = []
    max_new_tokens: int = Field(0, ge=0, le=UINT32_MAX)
    do_sample: bool = False
    # As the inference service takes them.
    temperature: float | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int = Field(0, ge=0, le=UINT64_MAX)
    stop: list[str] = []
    limit: int = Field(0, ge=0, le=UINT32_MAX)


def spec_from_json(body: dict) -> pb.EvaluationSpec:
    try:
        return json_format.ParseDict(body, pb.EvaluationSpec())
    except json_format.ParseError as err:
        raise InvalidArgument(f"invalid evaluation spec: {err}", param="body") from err


@router.post("", dependencies=[Depends(require_writer)], responses=ADMIN)
async def create_evaluation(request: Request, body: EvaluationSpec) -> dict:
    spec = spec_from_json(body.model_dump(exclude_unset=True, by_alias=True))
    evaluation = await evaluations_of(request).call(
        "CreateEvaluation", pb.CreateEvaluationRequest(spec=spec)
    )
    return evaluation_json(evaluation)


@router.get("")
async def list_evaluations(
    request: Request, limit: int = Query(20, ge=1, le=100), after: str = ""
) -> dict:
    reply = await evaluations_of(request).call(
        "ListEvaluations", pb.ListEvaluationsRequest(limit=limit, after=after)
    )
    return {
        "object": "list",
        "data": [evaluation_json(e) for e in reply.evaluations],
        "has_more": reply.has_more,
    }


@router.get("/{evaluation_id}")
async def get_evaluation(request: Request, evaluation_id: str) -> dict:
    evaluation = await evaluations_of(request).call(
        "GetEvaluation", pb.GetEvaluationRequest(evaluation_id=evaluation_id)
    )
    return evaluation_json(evaluation)


@router.post("/{evaluation_id}/cancel", dependencies=[Depends(require_writer)], responses=ADMIN)
async def cancel_evaluation(request: Request, evaluation_id: str) -> dict:
    evaluation = await evaluations_of(request).call(
        "CancelEvaluation", pb.CancelEvaluationRequest(evaluation_id=evaluation_id)
    )
    return evaluation_json(evaluation)


@router.get(
    "/{evaluation_id}/report.{fmt}",
    response_class=Response,
    responses={
        200: {
            "description": "The report of a finished evaluation, in the format asked for.",
            "content": {t: {"schema": {"type": "string"}} for t in REPORT_CONTENT_TYPES},
        }
    },
)
async def evaluation_report(
    request: Request, evaluation_id: str, fmt: Literal["html", "md"]
) -> Response:
    report = await evaluations_of(request).call(
        "GetEvaluationReport",
        pb.GetEvaluationReportRequest(evaluation_id=evaluation_id, format=fmt),
    )
    return Response(report.content, media_type=report.content_type)
