"""Gateway test fixtures: the real gateway under uvicorn in a thread on a free loopback
port, in front of the real inference and trainer services started in-process."""

import threading
import time
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from gateway.app import create_app, uvicorn_config
from gateway.settings import GatewaySettings
from tuneyard.local_stack import free_port


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


@pytest.fixture
def make_gateway():
    """Start gateways with settings overrides; all stopped at the end of the test."""
    started: list[RunningGateway] = []

    def make(**overrides) -> RunningGateway:
        started.append(start_gateway(**overrides))
        return started[-1]

    yield make
    for gateway in started:
        gateway.stop()


@pytest.fixture
def down_gateway(make_gateway) -> RunningGateway:
    """A gateway whose backends are ports nothing listens on."""
    return make_gateway(
        inference_addr=f"127.0.0.1:{free_port()}", trainer_addr=f"127.0.0.1:{free_port()}"
    )


@pytest.fixture
def http(down_gateway):
    with httpx.Client(base_url=down_gateway.url, timeout=30) as client:
        yield client
