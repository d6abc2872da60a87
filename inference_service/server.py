"""Starting and stopping the inference service: engine, gRPC server, /metrics."""

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

from tuneyard.grpc_server import add_health_and_reflection, build_server, run_until_signal
from tuneyard.modeling import pick_device
from tuneyard.v1 import inference_pb2, inference_pb2_grpc

from .compute_threads import one_thread_by_default
from .engine import NativeEngine
from .engine_base import EngineBase
from .metrics import Metrics
from .servicer import InferenceServicer
from .settings import InferenceSettings
from .vllm_engine import VllmEngine
from .vllm_server import vllm_installed

log = logging.getLogger(__name__)

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


@dataclass
class RunningServer:
    server: grpc.Server
    health: object
    engine: EngineBase
    metrics: Metrics
    port: int
    metrics_server: object | None = None

    @property
    def metrics_port(self) -> int:
        return self.metrics_server.server_port if self.metrics_server else 0

    def stop(self, grace: float = 5) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.engine.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()


def engine_kind(settings: InferenceSettings) -> str:
    """auto: vLLM on a CUDA host where it is installed, the native engine elsewhere."""
    if settings.engine != "auto":
        return settings.engine
    if pick_device(settings.device).startswith("cuda"):
        if vllm_installed(settings):
            return "vllm"
        log.warning("vLLM is not installed: serving with the native engine on CUDA")
    return "native"


def serve(settings: InferenceSettings) -> RunningServer:
    """Load the model and start serving; returns at once (port 0 picks a free port). The
    health service says SERVING once the engine is ready (vLLM: when its server is)."""
    metrics = Metrics(settings.metrics_max_adapters)
    kind = engine_kind(settings)
    engine = (VllmEngine if kind == "vllm" else NativeEngine).load(settings, metrics)
    server = build_server(
        max_workers=max(16, settings.max_queue + settings.max_batch_size),
        service_tokens=settings.service_tokens,
    )
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(engine), server)
    health = add_health_and_reflection(server, [SERVICE_NAME])

    def readiness(ready: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            health.set(name, status)

    engine.watch_readiness(readiness)
    address = f"{settings.inference_host}:{settings.inference_port}"
    port = server.add_insecure_port(address)
    if port == 0:
        engine.stop()
        raise RuntimeError(f"cannot bind {address}")
    server.start()
    running = RunningServer(server, health, engine, metrics, port)
    if settings.inference_metrics_port:
        try:
            running.metrics_server = metrics.serve(
                settings.inference_metrics_port, settings.inference_host
            )
        except OSError:
            running.stop(grace=0)
            raise
    log.info("inference ready on %s:%d (%s engine)", settings.inference_host, port, kind)
    return running


def main() -> None:
    settings = InferenceSettings()
    cores = one_thread_by_default()  # before the model loads: see compute_threads
    settings = settings.model_copy(update={"engine_threads": settings.engine_threads or cores})
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # stop() reports NOT_SERVING, then lets in-flight requests finish (5 s grace).
    run_until_signal(lambda: serve(settings), lambda running: running.stop())
