"""Evaluations (an adapter against prompting its base model), backed by the trainer's
EvaluationService. The create body is the proto's EvaluationSpec as JSON."""

from fastapi import APIRouter, Depends, Query, Request, Response
from google.protobuf import json_format

from gateway.auth import require_admin, require_key
from tuneyard.errors import InvalidArgument
from tuneyard.v1 import evaluation_pb2 as pb

router = APIRouter(prefix="/v1/evaluations", dependencies=[Depends(require_key)])
routers = [router]

STATUS = {
    pb.EVALUATION_QUEUED: "queued",
    pb.EVALUATION_RUNNING: "running",
    pb.EVALUATION_SUCCEEDED: "succeeded",
    pb.EVALUATION_FAILED: "failed",
    pb.EVALUATION_CANCELLED: "cancelled",
}


def evaluation_json(evaluation: pb.Evaluation) -> dict:
    body = json_format.MessageToDict(
        evaluation, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    # Integers of 64 bits come out of MessageToDict as strings.
    for key in ("created_at", "started_at", "finished_at"):
        body[key] = int(body[key]) or None
    body["spec"]["seed"] = int(body["spec"]["seed"])
    return {"object": "evaluation", **body, "status": STATUS.get(evaluation.status, "queued")}


def spec_from_json(body: dict) -> pb.EvaluationSpec:
    try:
        return json_format.ParseDict(body, pb.EvaluationSpec())
    except json_format.ParseError as err:
        raise InvalidArgument(f"invalid evaluation spec: {err}", param="body") from err


@router.post("", dependencies=[Depends(require_admin)])
async def create_evaluation(request: Request, body: dict) -> dict:
    evaluation = await request.app.state.backends.evaluations.call(
        "CreateEvaluation", pb.CreateEvaluationRequest(spec=spec_from_json(body))
    )
    return evaluation_json(evaluation)


@router.get("")
async def list_evaluations(
    request: Request, limit: int = Query(20, ge=1, le=100), after: str = ""
) -> dict:
    reply = await request.app.state.backends.evaluations.call(
        "ListEvaluations", pb.ListEvaluationsRequest(limit=limit, after=after)
    )
    return {
        "object": "list",
        "data": [evaluation_json(e) for e in reply.evaluations],
        "has_more": reply.has_more,
    }


@router.get("/{evaluation_id}")
async def get_evaluation(request: Request, evaluation_id: str) -> dict:
    evaluation = await request.app.state.backends.evaluations.call(
        "GetEvaluation", pb.GetEvaluationRequest(evaluation_id=evaluation_id)
    )
    return evaluation_json(evaluation)


@router.post("/{evaluation_id}/cancel", dependencies=[Depends(require_admin)])
async def cancel_evaluation(request: Request, evaluation_id: str) -> dict:
    evaluation = await request.app.state.backends.evaluations.call(
        "CancelEvaluation", pb.CancelEvaluationRequest(evaluation_id=evaluation_id)
    )
    return evaluation_json(evaluation)


@router.get("/{evaluation_id}/report.{fmt}")
async def evaluation_report(request: Request, evaluation_id: str, fmt: str) -> Response:
    report = await request.app.state.backends.evaluations.call(
        "GetEvaluationReport",
        pb.GetEvaluationReportRequest(evaluation_id=evaluation_id, format=fmt),
    )
    return Response(report.content, media_type=report.content_type)
