"""Prometheus metrics of one inference service instance, on its own registry."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r, p = self.registry, "tuneyard_inference_"
        self.requests = Counter(
            p + "requests", "Finished requests by status.", ["status"], registry=r
        )
        self.generated_tokens = Counter(p + "generated_tokens", "Generated tokens.", registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens prefilled.", registry=r)
        self.time_to_first_token = Histogram(
            p + "time_to_first_token_seconds",
            "From arrival to the first token.",
            buckets=_LATENCY,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            p + "time_per_output_token_seconds",
            "Mean time between tokens of a request.",
            buckets=_PER_TOKEN,
            registry=r,
        )
        self.request_duration = Histogram(
            p + "request_duration_seconds",
            "From arrival to the last token.",
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_size = Histogram(
            p + "batch_size",
            "Rows in each batch at prefill.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.queue_size = Gauge(p + "queue_size", "Requests waiting for a batch.", registry=r)
        self.adapters_loaded = Gauge(p + "adapters_loaded", "Adapters in memory.", registry=r)
        self.adapter_evictions = Counter(
            p + "adapter_evictions", "Adapters evicted by the LRU.", registry=r
        )

    def serve(self, port: int, host: str = "127.0.0.1"):
        """Start the /metrics HTTP server; returns it (call .shutdown() to stop)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
