"""The inference service and the real gateway (under uvicorn in a thread) in-process, on
free loopback ports."""

import threading
import time
from dataclasses import dataclass

import uvicorn

from gateway.app import create_app, uvicorn_config
from gateway.settings import GatewaySettings
from inference_service.server import serve
from inference_service.settings import InferenceSettings
from tuneyard.local_stack import free_port

# A JSON schema for grammar-constrained answers: {"ok": <boolean>}.
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


def serve_inference(tiny_llama, adapters_dir, port: int = 0, **overrides):
    """The inference service in-process on tiny_llama, on CPU in float32 (unless asked
    otherwise, whatever the CPU and TUNEYARD_DTYPE), answering in few tokens."""
    settings = dict(
        base_model=str(tiny_llama),
        adapters_dir=adapters_dir,
        device="cpu",
        dtype="float32",
        inference_port=port,
        inference_metrics_port=0,
        max_batch_wait_ms=5,
        default_max_new_tokens=8,
    )
    settings.update(overrides)
    return serve(InferenceSettings(**settings))


@dataclass
class RunningGateway:
    url: str
    server: uvicorn.Server
    thread: threading.Thread
    app: object

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_gateway(**overrides) -> RunningGateway:
    settings = GatewaySettings(gateway_port=free_port(), **overrides)
    app = create_app(settings)
    config = uvicorn_config(
        app, "warning", host="127.0.0.1", port=settings.gateway_port, lifespan="on"
    )
    server = uvicorn.Server(config)
    # Signal handlers can only be installed by the main thread.
    server.install_signal_handlers = lambda: None
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.02)
    return RunningGateway(f"http://127.0.0.1:{settings.gateway_port}", server, thread, app)


def gateway_before(inference_port: int) -> RunningGateway:
    """A gateway in front of an inference service on this port, with no trainer."""
    return start_gateway(
        inference_addr=f"127.0.0.1:{inference_port}", trainer_addr=f"127.0.0.1:{free_port()}"
    )
