"""ProjectService over gRPC: proto in, plain calls to the project store and the audit log,
proto out."""

import grpc

from trainer_service import project_store as ps
from trainer_service.audit_log import AuditEvent, AuditLog
from tuneyard.grpc_server import maps_errors
from tuneyard.v1 import projects_pb2 as pb
from tuneyard.v1 import projects_pb2_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ProjectService"].full_name


def project_to_proto(project: ps.Project) -> pb.Project:
    return pb.Project(
        id=project.id,
        name=project.name,
        created_at=int(project.created_at),
        archived_at=int(project.archived_at),
        status=project.status,
    )


def key_to_proto(key: ps.ApiKey) -> pb.ApiKey:
    return pb.ApiKey(
        id=key.id,
        name=key.name,
        redacted_value=key.redacted_value,
        value=key.value,
        created_at=int(key.created_at),
        last_used_at=int(key.last_used_at),
        project_id=key.project_id,
        service_account_id=key.service_account_id,
        service_account_name=key.service_account_name,
    )


def account_to_proto(account: ps.ServiceAccount) -> pb.ServiceAccount:
    message = pb.ServiceAccount(
        id=account.id,
        name=account.name,
        role=account.role,
        created_at=int(account.created_at),
        project_id=account.project_id,
    )
    if account.api_key is not None:
        message.api_key.CopyFrom(key_to_proto(account.api_key))
    return message


def rate_limit_to_proto(limit: ps.RateLimit) -> pb.RateLimit:
    message = pb.RateLimit(id=limit.id, model=limit.model)
    for field in ps.LIMIT_FIELDS:
        value = getattr(limit, field)
        if value is not None:
            setattr(message, field, value)
    return message


def audit_to_proto(event: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        id=event.id,
        type=event.type,
        effective_at=int(event.effective_at),
        project_id=event.project_id,
        key_id=event.key_id,
        method=event.method,
        path=event.path,
        status_code=event.status_code,
        result=event.result,
    )


def _state(state: ps.LimitState | None) -> pb.LimitState | None:
    if state is None:
        return None
    return pb.LimitState(limit=state.limit, remaining=state.remaining, reset_s=state.reset_s)


class ProjectServicer(projects_pb2_grpc.ProjectServiceServicer):
    def __init__(self, store: ps.ProjectStore, audit: AuditLog):
        self.store = store
        self.audit = audit

    @maps_errors
    def CreateProject(self, request, context):
        return project_to_proto(self.store.create_project(request.name))

    @maps_errors
    def GetProject(self, request, context):
        return project_to_proto(self.store.get_project(request.project_id))

    @maps_errors
    def ListProjects(self, request, context):
        projects, more = self.store.list_projects(
            request.after, request.limit, request.include_archived
        )
        return pb.ListProjectsResponse(
            projects=[project_to_proto(p) for p in projects], has_more=more
        )

    @maps_errors
    def RenameProject(self, request, context):
        return project_to_proto(self.store.rename_project(request.project_id, request.name))

    @maps_errors
    def ArchiveProject(self, request, context):
        return project_to_proto(self.store.archive_project(request.project_id))

    @maps_errors
    def CreateServiceAccount(self, request, context):
        account = self.store.create_service_account(request.project_id, request.name)
        return account_to_proto(account)

    @maps_errors
    def GetServiceAccount(self, request, context):
        account = self.store.get_service_account(request.project_id, request.service_account_id)
        return account_to_proto(account)

    @maps_errors
    def ListServiceAccounts(self, request, context):
        accounts, more = self.store.list_service_accounts(
            request.project_id, request.after, request.limit
        )
        return pb.ListServiceAccountsResponse(
            service_accounts=[account_to_proto(a) for a in accounts], has_more=more
        )

    @maps_errors
    def DeleteServiceAccount(self, request, context):
        account = self.store.delete_service_account(request.project_id, request.service_account_id)
        return account_to_proto(account)

    @maps_errors
    def ListApiKeys(self, request, context):
        keys, more = self.store.list_api_keys(request.project_id, request.after, request.limit)
        return pb.ListApiKeysResponse(api_keys=[key_to_proto(k) for k in keys], has_more=more)

    @maps_errors
    def DeleteApiKey(self, request, context):
        return key_to_proto(self.store.delete_api_key(request.project_id, request.key_id))

    @maps_errors
    def Authenticate(self, request, context):
        key, project = self.store.authenticate(request.key)
        return pb.Identity(key_id=key.id, project_id=project.id, project_name=project.name)

    @maps_errors
    def ListRateLimits(self, request, context):
        limits = self.store.rate_limits(request.project_id, list(request.models))
        return pb.ListRateLimitsResponse(rate_limits=[rate_limit_to_proto(x) for x in limits])

    @maps_errors
    def UpdateRateLimit(self, request, context):
        changes = {
            field: getattr(request.rate_limit, field)
            for field in ps.LIMIT_FIELDS
            if request.rate_limit.HasField(field)
        }
        models = [request.rate_limit.model] if request.rate_limit.model else []
        limit = self.store.update_rate_limit(
            request.project_id, request.rate_limit.id, models, changes
        )
        return rate_limit_to_proto(limit)

    @maps_errors
    def AdmitRequest(self, request, context):
        admission = self.store.admit(request.project_id, request.model)
        return pb.Admission(
            allowed=admission.allowed,
            requests=_state(admission.requests),
            tokens=_state(admission.tokens),
        )

    @maps_errors
    def RecordUsage(self, request, context):
        self.store.record_usage(request.project_id, request.model, request.tokens)
        return pb.RecordUsageResponse()

    @maps_errors
    def RecordAudit(self, request, context):
        event = self.audit.record(
            request.type,
            request.project_id,
            request.key_id,
            request.method,
            request.path,
            request.status_code,
        )
        return audit_to_proto(event)

    @maps_errors
    def ListAuditEvents(self, request, context):
        events, more = self.audit.list(
            list(request.project_ids), list(request.types), request.after, request.limit
        )
        return pb.ListAuditEventsResponse(events=[audit_to_proto(e) for e in events], has_more=more)


def add_to_server(servicer: ProjectServicer, server: grpc.Server) -> str:
    projects_pb2_grpc.add_ProjectServiceServicer_to_server(servicer, server)
    return SERVICE_NAME
