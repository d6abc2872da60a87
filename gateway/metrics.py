"""The gateway's Prometheus metrics, in a registry of their own per app (tests start many
apps in one process). Requests are counted by route template, never by raw path, and the
`adapter` label takes at most `max_adapter_values` distinct values. The engine's own
metrics (queue, batch size, adapters loaded, evictions) are on the inference service's
/metrics; Prometheus scrapes both."""

import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from tuneyard.metrics import AdapterLabels, BoundedLabels

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class GatewayMetrics:
    """With several gateway workers (PROMETHEUS_MULTIPROC_DIR set before they start), each
    worker writes its values to that folder and /metrics, answered by any one of them,
    sums them all: counters and histograms over every worker, live or gone; gauges over
    the live ones (in flight) or their largest (replicas, which each worker tracks)."""

    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self, max_adapter_values: int, max_project_values: int = 20):
        self.registry = CollectorRegistry()
        self.adapter_label = AdapterLabels(max_adapter_values)
        self.project_label = BoundedLabels(max_project_values)
        prefix = "tuneyard_gateway_"
        self.requests = Counter(
            prefix + "requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            prefix + "request_duration_seconds",
            "Time to the end of the HTTP response.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            prefix + "time_to_first_token_seconds",
            "Streaming requests: time to the first token.",
            ["adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_per_output_token = Histogram(
            prefix + "time_per_output_token_seconds",
            "Streaming requests: time between tokens after the first.",
            ["adapter"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.generations = Counter(
            prefix + "generations",
            "Answered generations (each prompt and choice of a request).",
            ["adapter"],
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            prefix + "generated_tokens",
            "Tokens generated for answered requests.",
            ["adapter"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            prefix + "prompt_tokens",
            "Prompt tokens of answered requests.",
            ["adapter"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            prefix + "requests_in_flight",
            "HTTP requests being served now (waiting or generating).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.adapter_load_duration = Histogram(
            prefix + "adapter_load_duration_seconds",
            "Adapter load requests through the adapters API, end to end.",
            ["adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.replicas_known = Gauge(
            prefix + "inference_replicas",
            "Inference replicas the gateway knows of.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.replicas_up = Gauge(
            prefix + "inference_replicas_up",
            "Inference replicas not marked down.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        # Labelled by replica address: bounded by the replica count (gone ones are removed).
        self.replica_requests = Counter(
            prefix + "inference_replica_requests",
            "Calls sent to each inference replica.",
            ["replica"],
            registry=self.registry,
        )

        # By project (bounded, as adapters are): what each team asks for and is refused.
        self.project_requests = Counter(
            prefix + "project_requests",
            "Generation requests by the caller's project (admin keys over every project "
            "are not counted).",
            ["project"],
            registry=self.registry,
        )
        self.project_tokens = Counter(
            prefix + "project_tokens",
            "Prompt and generated tokens of answered requests by the caller's project.",
            ["project"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            prefix + "rate_limited",
            "Requests refused with 429 for being over their project's rate limit.",
            ["project"],
            registry=self.registry,
        )
        self.audit_events = Counter(
            prefix + "audit_events",
            "Mutating calls written to the audit log, by project and result.",
            ["project", "result"],
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_duration.labels(route).observe(seconds)

    def observe_generation(
        self,
        adapter_id: str,
        generated_tokens: int,
        prompt_tokens: int,
        first_token_s: float | None = None,
        total_s: float | None = None,
    ):
        """One finished generation; the timings are given for streams only."""
        adapter = self.adapter_label(adapter_id)
        self.generations.labels(adapter).inc()
        self.generated_tokens.labels(adapter).inc(generated_tokens)
        self.prompt_tokens.labels(adapter).inc(prompt_tokens)
        if first_token_s is not None:
            self.time_to_first_token.labels(adapter).observe(first_token_s)
            if total_s is not None and generated_tokens > 1:
                per_token = (total_s - first_token_s) / (generated_tokens - 1)
                self.time_per_output_token.labels(adapter).observe(per_token)

    def exposition(self) -> bytes:
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not folder:
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker, path=folder)
        return generate_latest(every_worker)


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): counts each
    HTTP request once its response has ended, streams included."""

    def __init__(self, app, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_with_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(
                route, scope["method"], status, time.perf_counter() - start
            )
