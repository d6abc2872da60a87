"""Every mutating call through the gateway goes to the audit log (the trainer's, append-only):
who (the caller's project and key id, never the key), what (an event type, the method and
the route), when, and how it ended. Written before the answer leaves, so a client that has
its answer finds the event already there; a log that cannot be written is logged and
counted, and the call's own answer still goes out."""

import logging

from tuneyard.v1 import projects_pb2 as pb

log = logging.getLogger(__name__)

# OpenAI's audit log names events "<object>.<what happened>"; tuneyard's routes, so.
EVENT_TYPES = {
    ("POST", "/v1/files"): "file.created",
    ("DELETE", "/v1/files/{file_id}"): "file.deleted",
    ("POST", "/v1/fine_tuning/jobs"): "fine_tuning.job.created",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): "fine_tuning.job.cancelled",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/pause"): "fine_tuning.job.paused",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/resume"): "fine_tuning.job.resumed",
    (
        "POST",
        "/v1/fine_tuning/jobs/{job_id}/checkpoints/{step}/publish",
    ): "fine_tuning.checkpoint.published",
    ("DELETE", "/v1/models/{model:path}"): "model.deleted",
    ("POST", "/v1/adapters/{adapter_id}/load"): "adapter.loaded",
    ("POST", "/v1/adapters/{adapter_id}/unload"): "adapter.unloaded",
    ("POST", "/v1/adapters/{adapter_id}/promote"): "adapter.promoted",
    ("POST", "/v1/evaluations"): "evaluation.created",
    ("POST", "/v1/evaluations/{evaluation_id}/cancel"): "evaluation.cancelled",
    ("POST", "/v1/organization/projects"): "project.created",
    ("POST", "/v1/organization/projects/{project_id}"): "project.updated",
    ("POST", "/v1/organization/projects/{project_id}/archive"): "project.archived",
    (
        "POST",
        "/v1/organization/projects/{project_id}/service_accounts",
    ): "service_account.created",
    (
        "DELETE",
        "/v1/organization/projects/{project_id}/service_accounts/{service_account_id}",
    ): "service_account.deleted",
    ("DELETE", "/v1/organization/projects/{project_id}/api_keys/{key_id}"): "api_key.deleted",
    (
        "POST",
        "/v1/organization/projects/{project_id}/rate_limits/{rate_limit_id}",
    ): "rate_limit.updated",
}
# POSTs that change nothing: generation, tokenizing, a dry run of a job.
READS = frozenset(
    {
        "/",
        "/generate",
        "/generate_stream",
        "/tokenize",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/fine_tuning/jobs/validate",
    }
)
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def event_type(method: str, route: str | None) -> str | None:
    """The audit event of a call; None for one that changes nothing."""
    if method not in MUTATING_METHODS or route is None or route in READS:
        return None
    return EVENT_TYPES.get((method, route), f"api.{method.lower()}")


class AuditMiddleware:
    """Pure ASGI middleware around the routes: it sees the matched route, the caller that
    `require_key` found, and the status before the answer is sent."""

    def __init__(self, app, backends_of, metrics):
        self.app = app
        self.backends_of = backends_of  # the app's Backends, made in its lifespan
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        # Generation is a POST that changes nothing: its streams pass untouched.
        if (
            scope["type"] != "http"
            or scope["method"] not in MUTATING_METHODS
            or scope["path"] in READS
        ):
            return await self.app(scope, receive, send)

        async def audited(message):
            if message["type"] == "http.response.start":
                await self._record(scope, message["status"])
            await send(message)

        await self.app(scope, receive, audited)

    async def _record(self, scope, status: int) -> None:
        route = getattr(scope.get("route"), "path", None)
        kind = event_type(scope["method"], route)
        if kind is None:
            return
        caller = scope.get("state", {}).get("caller")
        project = caller.audit_project if caller else ""
        key_id = caller.key_id if caller else "unauthenticated"
        event = pb.AuditEvent(
            type=kind,
            project_id=project,
            key_id=key_id,
            method=scope["method"],
            path=scope["path"],
            status_code=status,
        )
        result = "success" if status < 400 else "failure"
        try:
            await self.backends_of().projects.call("RecordAudit", event)
        except Exception:
            log.exception("could not write the audit event %s %s", scope["method"], scope["path"])
            return
        self.metrics.audit_events.labels(
            self.metrics.project_label(project or "(all)"), result
        ).inc()
