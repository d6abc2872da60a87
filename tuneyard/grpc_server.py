"""What every tuneyard gRPC server has: the service token check (tuneyard.service_auth),
health, reflection, error mapping, clean stop; and how its clients read a failed call back
(call_error)."""

import functools
import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tuneyard import service_auth
from tuneyard.errors import (
    INTERNAL_ERROR,
    TuneyardError,
    error_with_code,
    internal_error_message,
    redact_paths,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def build_server(max_workers: int = 16, service_tokens: service_auth.Tokens = ()) -> grpc.Server:
    """A server whose calls need one of `service_tokens` (see tuneyard.service_auth; health
    and reflection stay open); with none, it takes every call and logs a warning saying so."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=service_auth.server_interceptors(service_tokens),
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ],
    )


def add_health_and_reflection(server: grpc.Server, service_names: list[str]):
    """Register grpc.health.v1 (each service and "" SERVING) and server reflection."""
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return health_servicer


# Trailing metadata that carries a TuneyardError's `param` and `line` with its status, so a
# client (see call_error) can name the field that was wrong, as the error had it.
PARAM_KEY = "tuneyard-param"
LINE_KEY = "tuneyard-line"


def maps_errors(method: Callable) -> Callable:
    """Turn a TuneyardError raised by plain code into the matching gRPC status, and any
    other exception into INTERNAL with a request id (the traceback goes to the log)."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except TuneyardError as err:
            _abort(context, err)
        except Exception:
            _abort_unexpected(context, method.__name__)

    return wrapper


def maps_stream_errors(method: Callable) -> Callable:
    """`maps_errors` for server-streaming methods."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            yield from method(self, request, context)
        except TuneyardError as err:
            _abort(context, err)
        except Exception:
            _abort_unexpected(context, method.__name__)

    return wrapper


def _abort_unexpected(context, rpc: str) -> None:
    if context.code() is not None:  # the method aborted the call itself
        raise
    request_id, message = internal_error_message()
    log.exception("%s failed; request id %s", rpc, request_id)
    context.abort(grpc.StatusCode.INTERNAL, message)


def _abort(context, err: TuneyardError) -> None:
    metadata = []
    if err.param and err.param.isascii() and err.param.isprintable():  # what metadata takes
        metadata.append((PARAM_KEY, err.param))
    if err.line:
        metadata.append((LINE_KEY, str(err.line)))
    if metadata:
        context.set_trailing_metadata(metadata)
    # Server paths stay in the log; the client gets their last part.
    message = redact_paths(err.message)
    if message != err.message:
        log.info("%s: %s", err.code, err.message)
    context.abort(getattr(grpc.StatusCode, err.code), message)


def call_error(service: str, err: grpc.RpcError) -> TuneyardError:
    """A failed call to one of our services as a TuneyardError of its code, with the
    `param` and `line` it carries (see maps_errors): the one reading of a failed call for
    all their clients. The service's own message is passed on only where it is its answer
    to the request; gRPC's words (addresses, "recvmsg:...") and crashes are logged and
    named instead."""
    code = err.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        log.warning("%s service: %s: %s", service, code.name, err.details())
        return error_with_code(code.name, f"{service} service unavailable")
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        log.error("%s service: %s: %s", service, code.name, err.details())
        details = err.details() or ""
        # Our servers say only a request id (_abort_unexpected); anything else is gRPC's.
        ours = details.startswith(INTERNAL_ERROR)
        return error_with_code(
            "INTERNAL", details if ours else f"internal error in the {service} service"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED and err.details() == service_auth.REFUSED:
        # Our service token, not the end user's key: a deployment's mistake, not a 401.
        log.error("%s service: %s", service, err.details())
        return error_with_code(
            "INTERNAL", f"the {service} service refused its caller's service token"
        )
    metadata = dict(err.trailing_metadata() or ())
    line = str(metadata.get(LINE_KEY, ""))
    return error_with_code(
        code.name,
        err.details() or code.name,
        param=str(metadata.get(PARAM_KEY, "")),
        line=int(line) if line.isdigit() else 0,
    )


def run_until_signal(serve: Callable[[], T], stop: Callable[[T], None]) -> None:
    """Serve until SIGTERM/SIGINT, then stop. The handlers go in before `serve` logs
    "ready", so a supervisor that signals right after seeing it still gets a clean stop."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    running = serve()
    stopping.wait()
    log.info("stopping")
    stop(running)
