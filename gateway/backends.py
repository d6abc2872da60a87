"""gRPC clients of the inference and trainer services, shared by all requests.

Every call has a deadline and `wait_for_ready=False`: a backend that is down answers 503 at
once instead of holding the request. The channel options bound how long one connection
attempt may take and how long the channel waits between attempts, so the gateway finds a
backend again by itself, within about a second of it coming back.
"""

from collections.abc import AsyncIterator, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.auth import Caller, caller_of
from gateway.errors import from_rpc_error
from gateway.metrics import GatewayMetrics
from gateway.replicas import ReplicaPool
from gateway.settings import GatewaySettings
from tuneyard import projects
from tuneyard.service_auth import call_metadata
from tuneyard.v1 import (
    evaluation_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    projects_pb2_grpc,
    trainer_pb2_grpc,
)


class Backend:
    """One gRPC service behind one channel: unary calls, server streams, health."""

    def __init__(
        self,
        name: str,
        addr: str,
        service: str,
        stub_class,
        settings: GatewaySettings,
    ):
        self.name = name
        self.addr = addr
        self.service = service
        self.timeout_s = settings.request_timeout_s
        self.connect_timeout_s = settings.connect_timeout_s
        connect_ms = int(settings.connect_timeout_s * 1000)
        backoff_ms = int(settings.reconnect_backoff_max_s * 1000)
        # Every call carries the service token (tuneyard.service_auth), if one is set.
        self.metadata = call_metadata(settings.service_tokens)
        self.channel = grpc.aio.insecure_channel(
            addr,
            options=[
                # gRPC's connect deadline is max(min_reconnect_backoff, current backoff).
                ("grpc.min_reconnect_backoff_ms", connect_ms),
                ("grpc.initial_reconnect_backoff_ms", min(100, backoff_ms)),
                ("grpc.max_reconnect_backoff_ms", backoff_ms),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                # A plain `host:port` whose name resolves to several addresses spreads
                # requests over all of them; the same as pick_first for one address.
                ("grpc.lb_policy_name", "round_robin"),
            ],
        )
        self.stub = stub_class(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def call(
        self, method: str, request, timeout_s: float | None = None, metadata: tuple = ()
    ):
        try:
            return await getattr(self.stub, method)(
                request,
                timeout=timeout_s or self.timeout_s,
                wait_for_ready=False,
                metadata=(*self.metadata, *metadata) or None,
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(self.name, err) from None

    async def stream(
        self,
        method: str,
        request,
        timeout_s: float | None = None,
        on_done: Callable[[], None] | None = None,
        metadata: tuple = (),
    ) -> AsyncIterator:
        """Start a server stream and wait for its first message, so that an error coming at
        once (unknown adapter, bad parameter, backend down) is still an HTTP status rather
        than an event inside a 200 stream. Returns the iterator of all messages. `on_done`
        runs once the call has ended, however it ends (even if never read to the end)."""
        call = getattr(self.stub, method)(
            request,
            timeout=timeout_s or self.timeout_s,
            wait_for_ready=False,
            metadata=(*self.metadata, *metadata) or None,
        )
        if on_done is not None:
            call.add_done_callback(lambda _: on_done())
        try:
            first = await call.read()
        except BaseException as err:  # the HTTP client may go away while we wait, too
            call.cancel()
            if isinstance(err, grpc.aio.AioRpcError):
                raise from_rpc_error(self.name, err) from None
            raise
        return self._rest(call, first)

    async def _rest(self, call, first) -> AsyncIterator:
        try:
            message = first
            while message is not grpc.aio.EOF:
                yield message
                message = await call.read()
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(self.name, err) from None
        finally:
            # A client that went away stops costing the backend compute.
            call.cancel()

    async def serving(self) -> bool:
        """True when the backend's grpc.health.v1 says SERVING for its service."""
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=self.service),
                timeout=self.connect_timeout_s,
                wait_for_ready=False,
            )
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self.channel.close()


class ScopedBackend:
    """A trainer-side backend whose calls act for one project (None: every project), as
    the call metadata says (tuneyard.projects): the trainer answers another project's
    objects NOT_FOUND."""

    def __init__(self, backend: Backend, project: str | None):
        self.backend = backend
        self.metadata = projects.metadata(project)

    async def call(self, method: str, request, timeout_s: float | None = None):
        return await self.backend.call(method, request, timeout_s, self.metadata)

    async def stream(self, method: str, request, timeout_s: float | None = None):
        return await self.backend.stream(method, request, timeout_s, metadata=self.metadata)


class Backends:
    """The gateway's backends: the inference replicas and the trainer; created inside the
    event loop that uses them."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics | None = None):
        self.inference = ReplicaPool(
            settings,
            lambda addr: Backend(
                "inference",
                addr,
                "tuneyard.v1.InferenceService",
                inference_pb2_grpc.InferenceServiceStub,
                settings,
            ),
            metrics,
        )
        self.trainer = Backend(
            "trainer",
            settings.trainer_addr,
            "tuneyard.v1.TrainerService",
            trainer_pb2_grpc.TrainerServiceStub,
            settings,
        )
        # Evaluations run in the trainer process: its own service on the trainer's address.
        self.evaluations = Backend(
            "trainer",
            settings.trainer_addr,
            "tuneyard.v1.EvaluationService",
            evaluation_pb2_grpc.EvaluationServiceStub,
            settings,
        )
        # Projects, their keys and the audit log: the trainer owns them, too.
        self.projects = Backend(
            "trainer",
            settings.trainer_addr,
            "tuneyard.v1.ProjectService",
            projects_pb2_grpc.ProjectServiceStub,
            settings,
        )
        self.watch_timeout_s = settings.watch_timeout_s
        self._info: inference_pb2.InfoResponse | None = None

    def trainer_for(self, caller: Caller) -> ScopedBackend:
        return ScopedBackend(self.trainer, caller.project)

    def evaluations_for(self, caller: Caller) -> ScopedBackend:
        return ScopedBackend(self.evaluations, caller.project)

    async def start(self) -> None:
        await self.inference.start()

    async def info(self) -> inference_pb2.InfoResponse:
        """The served base model's info; it does not change while the backend runs."""
        if self._info is None:
            self._info = await self.inference.call("Info", inference_pb2.InfoRequest())
        return self._info

    async def close(self) -> None:
        await self.inference.close()
        await self.trainer.close()
        await self.evaluations.close()
        await self.projects.close()


def trainer_of(request) -> ScopedBackend:
    """The trainer, acting for the request's caller (see gateway.auth.require_key)."""
    return request.app.state.backends.trainer_for(caller_of(request))


def evaluations_of(request) -> ScopedBackend:
    """The evaluation service, acting for the request's caller."""
    return request.app.state.backends.evaluations_for(caller_of(request))
