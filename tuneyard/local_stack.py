"""The embedded deployment: the three services as child processes on loopback.

`make demo`, `tuneyard serve` and the integration tests all start the stack this way, so
what they exercise is what a laptop user runs. Its gRPC ports are locked like a cluster's
(tuneyard.service_auth): with no TUNEYARD_SERVICE_TOKENS(_FILE) configured, each start
makes a random token and gives it to all three services."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tuneyard.config import split_tokens


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    name: str
    module: str
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class LocalStack:
    """Start with `with LocalStack(home=...) as stack:`; ports default to free ones."""

    home: Path
    base_model: str = ""
    gateway_port: int = field(default_factory=free_port)
    trainer_port: int = field(default_factory=free_port)
    inference_port: int = field(default_factory=free_port)
    trainer_metrics_port: int = field(default_factory=free_port)
    inference_metrics_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 300.0

    def __post_init__(self):
        self.home = Path(self.home)
        self.services = [
            Service("inference", "inference_service"),
            Service("trainer", "trainer_service"),
            Service("gateway", "gateway"),
        ]
        self._token = secrets.token_urlsafe(32)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def inference_addr(self) -> str:
        return f"127.0.0.1:{self.inference_port}"

    @property
    def trainer_addr(self) -> str:
        return f"127.0.0.1:{self.trainer_port}"

    @property
    def service_tokens(self) -> list[str]:
        """The tokens the three services accept: the configured ones, else this start's.
        A test or benchmark calling them over gRPC sends the first:
        `tuneyard.service_auth.client_channel(stack.inference_addr, stack.service_tokens)`."""
        env = self.env()
        if configured := split_tokens(env.get("TUNEYARD_SERVICE_TOKENS", "")):
            return configured
        return split_tokens(Path(env["TUNEYARD_SERVICE_TOKENS_FILE"]).read_text())

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TUNEYARD_HOME=str(self.home),
            TUNEYARD_GATEWAY_PORT=str(self.gateway_port),
            TUNEYARD_TRAINER_PORT=str(self.trainer_port),
            TUNEYARD_INFERENCE_PORT=str(self.inference_port),
            TUNEYARD_TRAINER_METRICS_PORT=str(self.trainer_metrics_port),
            TUNEYARD_INFERENCE_METRICS_PORT=str(self.inference_metrics_port),
            TUNEYARD_INFERENCE_ADDR=self.inference_addr,
            TUNEYARD_TRAINER_ADDR=self.trainer_addr,
            PYTHONUNBUFFERED="1",
        )
        if self.base_model:
            env["TUNEYARD_BASE_MODEL"] = self.base_model
        env.update(self.extra_env)
        configured = (
            split_tokens(env.get("TUNEYARD_SERVICE_TOKENS", ""))
            or env.get("TUNEYARD_SERVICE_TOKENS_FILE", "").strip()
        )
        if not configured:
            env["TUNEYARD_SERVICE_TOKENS"] = self._token
        return env

    def start(self) -> "LocalStack":
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self._token = secrets.token_urlsafe(32)  # a new one each start (unless configured)
        env = self.env()
        for service in self.services:
            service.log_path = logs / f"{service.name}.log"
            with open(service.log_path, "ab") as log:
                service.process = subprocess.Popen(
                    [sys.executable, "-m", service.module],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    # Own process group: Ctrl-C in a terminal reaches us, and we stop them.
                    start_new_session=True,
                )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        checks = [
            ("trainer", lambda: _grpc_serving(self.trainer_addr)),
            ("inference", lambda: _grpc_serving(self.inference_addr)),
            ("gateway", lambda: _http_ok(f"{self.gateway_url}/health")),
        ]
        for name, ready in checks:
            service = next(s for s in self.services if s.name == name)
            while not ready():
                if service.process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with status {service.process.returncode}; "
                        f"last lines of {service.log_path}:\n{service.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{name} not ready after {self.startup_timeout_s:.0f}s; "
                        f"last lines of {service.log_path}:\n{service.log_tail()}"
                    )
                time.sleep(0.25)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM each service (gateway first), then SIGKILL what is still there."""
        running = [s for s in reversed(self.services) if s.process and s.process.poll() is None]
        for service in running:
            os.killpg(service.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for service in running:
            try:
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _grpc_serving(addr: str) -> bool:
    with grpc.insecure_channel(addr) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
