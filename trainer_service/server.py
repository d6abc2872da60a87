"""Wiring: store, executor, scheduler, gRPC server with health and reflection, /metrics."""

import logging
import signal
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import start_http_server

from trainer_service.executors import make_executor
from trainer_service.job_store import JobStore
from trainer_service.metrics import TrainerMetrics
from trainer_service.notify import InferenceNotifier
from trainer_service.scheduler import Scheduler
from trainer_service.servicer import TrainerServicer, add_to_server
from trainer_service.settings import TrainerSettings
from tuneyard.errors import Unavailable
from tuneyard.grpc_server import add_health_and_reflection, build_server

log = logging.getLogger("trainer_service")


@dataclass
class RunningServer:
    server: grpc.Server
    health: object
    port: int
    scheduler: Scheduler
    store: JobStore
    metrics: TrainerMetrics
    metrics_server: WSGIServer | None = None
    notifier: InferenceNotifier | None = None

    def stop(self, grace: float = 5) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.scheduler.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        if self.notifier is not None:
            self.notifier.close()
        self.store.close()


def serve(settings: TrainerSettings) -> RunningServer:
    """Start everything and return at once; `.port` is the bound gRPC port."""
    store = JobStore(settings.resolved_trainer_db)
    metrics = TrainerMetrics(store)
    notifier = InferenceNotifier(settings.inference_addr) if settings.inference_addr else None
    scheduler = Scheduler(settings, store, make_executor(settings), metrics, notifier)
    scheduler.start()

    server = build_server()
    name = add_to_server(TrainerServicer(scheduler), server)
    health = add_health_and_reflection(server, [name])
    address = f"{settings.trainer_host}:{settings.trainer_port}"
    port = server.add_insecure_port(address)
    if port == 0:
        scheduler.close()
        store.close()
        raise Unavailable(f"cannot listen on {address}")
    server.start()

    metrics_server = None
    if settings.trainer_metrics_port:
        metrics_server, _ = start_http_server(
            settings.trainer_metrics_port, addr=settings.trainer_host, registry=metrics.registry
        )
    log.info("trainer ready on %s:%d", settings.trainer_host, port)
    return RunningServer(server, health, port, scheduler, store, metrics, metrics_server, notifier)


def main() -> None:
    """Serve until SIGTERM/SIGINT. The handlers go in before "ready" is logged, so a
    supervisor that signals right after seeing it still gets a clean stop."""
    settings = TrainerSettings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    running = serve(settings)
    stop.wait()
    log.info("stopping")
    running.stop()
