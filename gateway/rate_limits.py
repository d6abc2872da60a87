"""A project's request and token limits on generation (OpenAI's per-model rate limits; an
adapter counts against its base model). The count is kept by the trainer's store, which
every gateway replica asks, so N replicas hold one limit, not N times it: one small call
per request of a project that has a limit, none for one that has not.

A request is admitted while the minute's window has requests and tokens left; its tokens
(prompt and generated) are added once it has ended, as they are only known then."""

import asyncio
import logging
import math
import time

from fastapi import Request

from gateway.auth import caller_of
from gateway.errors import RateLimited
from tuneyard.v1 import projects_pb2 as pb

log = logging.getLogger(__name__)
LIMITS_TTL_S = 1.0
_STATE_KEY = "rate_limited"  # request.state: (project, model) of an admitted request


def reset_text(seconds: float) -> str:
    """OpenAI's reset duration: "1s", "6m0s", "120ms"."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def headers_of(admission: pb.Admission) -> dict[str, str]:
    headers = {}
    for kind in ("requests", "tokens"):
        if admission.HasField(kind):
            state = getattr(admission, kind)
            headers[f"x-ratelimit-limit-{kind}"] = str(state.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(state.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = reset_text(state.reset_s)
    return headers


class RateLimits:
    def __init__(self, metrics):
        self.metrics = metrics
        self._limited: dict[str, tuple[bool, float]] = {}  # project -> (has a limit, until)
        self._pending: set[asyncio.Task] = set()

    async def admit(self, request: Request) -> None:
        """Raises RateLimited over a limit; otherwise counts the request."""
        project = caller_of(request).project
        if project is None:  # an admin key over every project: no project to count
            return
        backends = request.app.state.backends
        model = (await backends.info()).model_id
        self.metrics.project_requests.labels(self.metrics.project_label(project)).inc()
        if not await self._has_limit(backends, project, model):
            return
        admission = await backends.projects.call(
            "AdmitRequest", pb.AdmitRequestRequest(project_id=project, model=model)
        )
        headers = headers_of(admission)
        request.state.rate_limit_headers = headers
        if not admission.allowed:
            self.metrics.rate_limited.labels(self.metrics.project_label(project)).inc()
            resets = [s.reset_s for s in (admission.requests, admission.tokens) if s.limit]
            headers["retry-after"] = str(math.ceil(max(resets, default=1)))
            spent = admission.HasField("requests") and not admission.requests.remaining
            raise RateLimited(
                f"rate limit reached for {model} in project {project}: "
                f"{'requests' if spent else 'tokens'} per minute; retry after "
                f"{headers['retry-after']}s",
                headers,
            )
        setattr(request.state, _STATE_KEY, (project, model))

    def used(self, request: Request, tokens: int) -> None:
        """An admitted request's tokens, added to its window in the background."""
        project_model = getattr(request.state, _STATE_KEY, None)
        project = caller_of(request).project
        if project is not None:
            self.metrics.project_tokens.labels(self.metrics.project_label(project)).inc(tokens)
        if project_model is None or tokens <= 0:
            return
        project, model = project_model
        backends = request.app.state.backends
        task = asyncio.ensure_future(
            backends.projects.call(
                "RecordUsage", pb.RecordUsageRequest(project_id=project, model=model, tokens=tokens)
            )
        )
        self._pending.add(task)
        task.add_done_callback(self._recorded)

    def _recorded(self, task: asyncio.Task) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not count a request's tokens: %s", task.exception())

    async def _has_limit(self, backends, project: str, model: str) -> bool:
        now = time.monotonic()
        known = self._limited.get(project)
        if known is None or known[1] < now:
            reply = await backends.projects.call(
                "ListRateLimits", pb.ListRateLimitsRequest(project_id=project, models=[model])
            )
            limited = any(
                limit.HasField("max_requests_per_1_minute")
                or limit.HasField("max_tokens_per_1_minute")
                for limit in reply.rate_limits
                if limit.model == model
            )
            known = self._limited[project] = (limited, now + LIMITS_TTL_S)
        return known[0]

    def forget(self, project: str) -> None:
        self._limited.pop(project, None)


class RateLimitHeaders:
    """Pure ASGI middleware: an admitted request's answer carries the x-ratelimit-* headers
    too, as OpenAI's do, so a client can pace itself before it is refused."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = scope.get("state", {}).get("rate_limit_headers")
                if headers and message["status"] < 400:
                    message["headers"] = [
                        *message.get("headers", []),
                        *((k.encode(), v.encode()) for k, v in headers.items()),
                    ]
            await send(message)

        await self.app(scope, receive, with_headers)
