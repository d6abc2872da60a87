"""EvaluationService over gRPC: proto in, plain calls to the service, proto out."""

import grpc
from google.protobuf import json_format

from trainer_service.evaluation.service import EvaluationService
from trainer_service.evaluation.store import Evaluation
from tuneyard.errors import InvalidArgument, redact_paths
from tuneyard.grpc_server import maps_errors
from tuneyard.projects import scope
from tuneyard.statuses import EVALUATION_STATUSES
from tuneyard.v1 import evaluation_pb2 as pb
from tuneyard.v1 import evaluation_pb2_grpc

MAX_LIST = 100
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EvaluationService"].full_name


def evaluation_to_proto(evaluation: Evaluation) -> pb.Evaluation:
    message = pb.Evaluation(
        id=evaluation.id,
        status=EVALUATION_STATUSES.value(evaluation.status),
        created_at=int(evaluation.created_at),
        started_at=int(evaluation.started_at),
        finished_at=int(evaluation.finished_at),
        error=redact_paths(evaluation.error),
        adapter_id=evaluation.adapter_id,
        eval_source=redact_paths(evaluation.eval_source),
        rows=evaluation.rows,
        done_requests=evaluation.done_requests,
        total_requests=evaluation.total_requests,
        report_markdown=evaluation.report_markdown,
        report_html=evaluation.report_html,
        project=evaluation.project,
    )
    json_format.ParseDict(evaluation.spec, message.spec)
    # The result's dataclasses have the proto's field names.
    json_format.ParseDict(
        {
            "arms": evaluation.result.get("arms", []),
            "examples": evaluation.result.get("examples", []),
        },
        message,
    )
    return message


class EvaluationServicer(evaluation_pb2_grpc.EvaluationServiceServicer):
    def __init__(self, service: EvaluationService):
        self.service = service

    @maps_errors
    def CreateEvaluation(self, request, context):
        if not request.HasField("spec"):
            raise InvalidArgument("spec is required", param="spec")
        return evaluation_to_proto(self.service.create(request.spec, scope=scope(context)))

    @maps_errors
    def GetEvaluation(self, request, context):
        return evaluation_to_proto(self.service.get(request.evaluation_id, scope(context)))

    @maps_errors
    def ListEvaluations(self, request, context):
        limit = min(request.limit or 20, MAX_LIST)
        found, has_more = self.service.list_evaluations(limit, request.after, scope(context))
        return pb.ListEvaluationsResponse(
            evaluations=[evaluation_to_proto(e) for e in found], has_more=has_more
        )

    @maps_errors
    def CancelEvaluation(self, request, context):
        return evaluation_to_proto(self.service.cancel(request.evaluation_id, scope(context)))

    @maps_errors
    def GetEvaluationReport(self, request, context):
        content_type, content = self.service.report(
            request.evaluation_id, request.format, scope(context)
        )
        return pb.EvaluationReport(content_type=content_type, content=content)


def add_to_server(service: EvaluationService, server: grpc.Server) -> str:
    evaluation_pb2_grpc.add_EvaluationServiceServicer_to_server(EvaluationServicer(service), server)
    return SERVICE_NAME
