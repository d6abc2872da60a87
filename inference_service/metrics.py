"""Prometheus metrics of one inference service instance, on its own registry.

Generation metrics carry the `adapter` label (the adapter's name; "(base)" for the base
model), capped at `max_adapter_values` distinct values, the rest counted as "other"."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tuneyard.metrics import AdapterLabels

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class Metrics:
    def __init__(self, max_adapter_values: int = 20):
        self.registry = CollectorRegistry()
        self.adapter_label = AdapterLabels(max_adapter_values)
        r, p = self.registry, "tuneyard_inference_"
        self.requests = Counter(
            p + "requests",
            "Generation requests by RPC, final status and adapter.",
            ["route", "status", "adapter"],
            registry=r,
        )
        self.generated_tokens = Counter(
            p + "generated_tokens", "Generated tokens.", ["adapter"], registry=r
        )
        self.prompt_tokens = Counter(
            p + "prompt_tokens", "Prompt tokens prefilled.", ["adapter"], registry=r
        )
        self.time_to_first_token = Histogram(
            p + "time_to_first_token_seconds",
            "From arrival to the first token.",
            ["adapter"],
            buckets=_LATENCY,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            p + "time_per_output_token_seconds",
            "Mean time between tokens of a request.",
            ["adapter"],
            buckets=_PER_TOKEN,
            registry=r,
        )
        self.request_duration = Histogram(
            p + "request_duration_seconds",
            "From arrival to the last token, by RPC.",
            ["route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_size = Histogram(
            p + "batch_size",
            "Rows in the running batch at each decode step.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.queue_size = Gauge(p + "queue_size", "Requests waiting to join the batch.", registry=r)
        self.running_requests = Gauge(
            p + "running_requests",
            "Requests in the running batch (the vllm engine; native: see batch_size).",
            registry=r,
        )
        self.kv_cache_usage = Gauge(
            p + "kv_cache_usage_ratio",
            "Share of the KV cache in use (the vllm engine's paged cache; 0 on native).",
            registry=r,
        )
        self.adapters_loaded = Gauge(p + "adapters_loaded", "Adapters in memory.", registry=r)
        self.adapter_load_duration = Histogram(
            p + "adapter_load_duration_seconds",
            "Reading, validating and installing one adapter version.",
            ["adapter"],
            buckets=_LATENCY,
            registry=r,
        )
        self.unfaithful_requests = Counter(
            p + "unfaithful_requests",
            "Requests served by an adapter on a base quantized otherwise than it was "
            "trained on (TUNEYARD_ADAPTER_QUANT_MISMATCH allow or warn).",
            ["adapter"],
            registry=r,
        )
        self.adapter_evictions = Counter(
            p + "adapter_evictions", "Adapters evicted by the LRU.", registry=r
        )

    def observe_load(self, adapter_id: str, seconds: float) -> None:
        self.adapter_load_duration.labels(self.adapter_label(adapter_id)).observe(seconds)

    def serve(self, port: int, host: str = "127.0.0.1"):
        """Start the /metrics HTTP server; returns it (call .shutdown() to stop)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
