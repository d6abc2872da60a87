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


class _RunningJobs:
    """Loss and step of each running job, labelled by job id: a finished job's series end
    with it, so the label takes at most max_concurrent_jobs values at a time."""

    def __init__(self, progress: dict[str, dict], lock: threading.Lock):
        self._progress = progress
        self._lock = lock

    def collect(self):
        loss = GaugeMetricFamily(
            "tuneyard_trainer_job_loss", "Latest training loss of a running job.", labels=["job"]
        )
        step = GaugeMetricFamily(
            "tuneyard_trainer_job_step", "Latest optimizer step of a running job.", labels=["job"]
        )
        with self._lock:
            for job_id, metrics in self._progress.items():
                if "loss" in metrics:
                    loss.add_metric([job_id], metrics["loss"])
                if "step" in metrics:
                    step.add_metric([job_id], metrics["step"])
        yield loss
        yield step


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
        self._progress: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.registry.register(_RunningJobs(self._progress, self._lock))

    def job_finished(self, job_id: str, status: str) -> None:
        self.jobs_finished.labels(status).inc()
        with self._lock:
            self._progress.pop(job_id, None)
            self._sum_rates()

    def job_progress(self, job_id: str, metrics: dict) -> None:
        """Take a worker's metrics event (loss, step, tokens_per_second, ...)."""
        with self._lock:
            latest = self._progress.setdefault(job_id, {})
            for key in ("loss", "step", "tokens_per_second"):
                if isinstance(metrics.get(key), int | float):
                    latest[key] = float(metrics[key])
            self._sum_rates()

    def _sum_rates(self) -> None:
        self.tokens_per_second.set(
            sum(m.get("tokens_per_second", 0.0) for m in self._progress.values())
        )
