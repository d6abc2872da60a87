"""Wiring: store, executor, scheduler, gRPC server with health and reflection, /metrics."""

import logging
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import start_http_server

from trainer_service import projects_servicer
from trainer_service.audit_log import AuditLog
from trainer_service.evaluation import servicer as evaluation_servicer
from trainer_service.evaluation.service import EvaluationService
from trainer_service.evaluation.settings import EvaluationSettings
from trainer_service.executors import make_executor
from trainer_service.gate import ParityGateCheck
from trainer_service.job_store import JobStore
from trainer_service.journal import JobJournal
from trainer_service.metrics import TrainerMetrics
from trainer_service.notify import AdapterPreloader, InferenceNotifier
from trainer_service.project_store import ProjectStore, key_secret
from trainer_service.scheduler import JobScheduler
from trainer_service.servicer import TrainerServicer, add_to_server
from trainer_service.settings import TrainerSettings
from tuneyard.adapter_store import AdapterStore
from tuneyard.errors import Unavailable
from tuneyard.grpc_server import add_health_and_reflection, build_server, run_until_signal

log = logging.getLogger("trainer_service")


@dataclass
class RunningServer:
    server: grpc.Server
    health: object
    port: int
    scheduler: JobScheduler
    store: JobStore
    projects: ProjectStore
    audit: AuditLog
    metrics: TrainerMetrics
    metrics_server: WSGIServer | None = None
    notifier: InferenceNotifier | None = None
    evaluations: EvaluationService | None = None

    def stop(self, grace: float = 5) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.scheduler.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        if self.notifier is not None:
            self.notifier.close()
        if self.evaluations is not None:
            self.evaluations.close()
        self.store.close()
        self.projects.close()
        self.audit.close()


def serve(settings: TrainerSettings) -> RunningServer:
    """Start everything and return at once; `.port` is the bound gRPC port."""
    store = JobStore(settings.resolved_trainer_db)
    projects = ProjectStore(
        settings.resolved_projects_db,
        key_secret(settings.resolved_key_hash_secret_file),
        settings.rate_limit_window_s,
    )
    audit = AuditLog(settings.resolved_audit_db)
    metrics = TrainerMetrics(store)
    journal = JobJournal(store, metrics)
    notifier = (
        InferenceNotifier(settings.inference_addr, tokens=settings.service_tokens)
        if settings.inference_addr
        else None
    )
    evaluations = EvaluationService(EvaluationSettings.of(settings), journal)
    evaluations.start()
    preload = AdapterPreloader(notifier, journal) if notifier else None
    gate = ParityGateCheck(
        AdapterStore(settings.resolved_adapters_dir, settings.adapters_mode),
        journal,
        settings.inference_addr,
        settings.service_tokens,
    )

    def on_published(job_id: str, model: str) -> None:
        """Preload the new version on every replica, then run its parity gate."""
        if preload is not None:
            preload(job_id, model)
        gate(job_id, model)

    scheduler = JobScheduler(
        settings,
        journal,
        make_executor(settings),
        on_published=on_published,
        after_success=[evaluations.evaluate_job],
    )
    scheduler.start()

    server = build_server(service_tokens=settings.service_tokens)
    names = [
        add_to_server(TrainerServicer(scheduler, projects), server),
        evaluation_servicer.add_to_server(evaluations, server),
        projects_servicer.add_to_server(projects_servicer.ProjectServicer(projects, audit), server),
    ]
    health = add_health_and_reflection(server, names)
    address = f"{settings.trainer_host}:{settings.trainer_port}"
    port = server.add_insecure_port(address)
    if port == 0:
        scheduler.close()
        evaluations.close()
        store.close()
        projects.close()
        audit.close()
        raise Unavailable(f"cannot listen on {address}")
    server.start()

    metrics_server = None
    if settings.trainer_metrics_port:
        metrics_server, _ = start_http_server(
            settings.trainer_metrics_port, addr=settings.trainer_host, registry=metrics.registry
        )
    log.info("trainer ready on %s:%d", settings.trainer_host, port)
    return RunningServer(
        server,
        health,
        port,
        scheduler,
        store,
        projects,
        audit,
        metrics,
        metrics_server,
        notifier,
        evaluations,
    )


def main() -> None:
    settings = TrainerSettings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_until_signal(lambda: serve(settings), lambda running: running.stop())
