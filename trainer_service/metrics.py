"""The trainer's Prometheus metrics, on a registry of their own per service instance."""

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily

from trainer_service.job_store import JobStore


class _JobsByStatus:
    """Read at scrape time from the store, so it is right after a restart too."""

    def __init__(self, store: JobStore):
        self._store = store

    def collect(self):
        family = GaugeMetricFamily("tuneyard_trainer_jobs", "Jobs by status.", labels=["status"])
        for status, count in self._store.count_by_status().items():
            family.add_metric([status], count)
        yield family


class TrainerMetrics:
    def __init__(self, store: JobStore):
        self.registry = CollectorRegistry()
        self.registry.register(_JobsByStatus(store))
        self.jobs_finished = Counter(
            "tuneyard_trainer_jobs_finished",
            "Jobs that ended, by final status.",
            ["status"],
            registry=self.registry,
        )
        self.tokens_per_second = Gauge(
            "tuneyard_trainer_tokens_per_second",
            "Training throughput (non-pad tokens/s) summed over running jobs.",
            registry=self.registry,
        )
        self._rates: dict[str, float] = {}
        self._lock = threading.Lock()

    def job_finished(self, job_id: str, status: str) -> None:
        self.jobs_finished.labels(status).inc()
        self._set_rate(job_id, None)

    def job_throughput(self, job_id: str, tokens_per_second: float) -> None:
        self._set_rate(job_id, tokens_per_second)

    def _set_rate(self, job_id: str, rate: float | None) -> None:
        with self._lock:
            if rate is None:
                self._rates.pop(job_id, None)
            else:
                self._rates[job_id] = rate
            self.tokens_per_second.set(sum(self._rates.values()))
