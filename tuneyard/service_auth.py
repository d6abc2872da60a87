"""Service-to-service authentication of the trainer's and the inference service's gRPC
ports: every call carries `authorization: Bearer <token>` in its metadata, with a token
from TUNEYARD_SERVICE_TOKENS (or TUNEYARD_SERVICE_TOKENS_FILE; see tuneyard.config).

Servers accept every configured token and clients send the first, so a token is rotated by
adding the new one to every server's list, rolling the clients, then dropping the old one.
Health (grpc.health.v1) and reflection stay open: probes and grpcurl's listing need no
token. With no token configured, servers take every call (and say so once at start) and
clients send none."""

import hmac
import logging
from collections.abc import Iterable

import grpc
from pydantic import SecretStr

log = logging.getLogger(__name__)

METADATA_KEY = "authorization"
SCHEME = "bearer"
# Services every caller may use without a token: probes (kubelet, compose healthchecks,
# deploy/healthcheck.py) and the listing of what a port serves.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
REFUSED = (
    "missing or invalid service token: set TUNEYARD_SERVICE_TOKENS (or "
    "TUNEYARD_SERVICE_TOKENS_FILE) of the calling service to a token this service accepts"
)
# deploy/k8s/base ships a Secret with a token starting so; a service started with it warns.
PLACEHOLDER_PREFIX = "replace-me"

Tokens = Iterable[str | SecretStr] | None


def plain_tokens(tokens: Tokens) -> list[str]:
    return [t.get_secret_value() if isinstance(t, SecretStr) else t for t in tokens or ()]


# --- the server side -----------------------------------------------------------------------
def server_interceptors(tokens: Tokens) -> list[grpc.ServerInterceptor]:
    """What build_server adds to a server: the token check, or nothing (and a warning) when
    no token is configured."""
    accepted = plain_tokens(tokens)
    if not accepted:
        log.warning(
            "no service token configured (TUNEYARD_SERVICE_TOKENS, TUNEYARD_SERVICE_TOKENS_FILE):"
            " this gRPC port takes calls from anyone who can reach it"
        )
        return []
    if any(t.lower().startswith(PLACEHOLDER_PREFIX) for t in accepted):
        log.warning(
            "a service token is the placeholder shipped in deploy/k8s/base: replace it with a "
            "secret of your own (deploy/README.md, 'The service token')"
        )
    return [TokenInterceptor(accepted)]


def _deny(_request, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED)


# One refusal per kind of method, so that gRPC reads the request as the method would.
_REFUSALS = {
    (False, False): grpc.unary_unary_rpc_method_handler(_deny),
    (False, True): grpc.unary_stream_rpc_method_handler(_deny),
    (True, False): grpc.stream_unary_rpc_method_handler(_deny),
    (True, True): grpc.stream_stream_rpc_method_handler(_deny),
}


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses with UNAUTHENTICATED every call (but those of OPEN_SERVICES) whose metadata has
    no `authorization: Bearer <token>` with one of `tokens`. Tokens are compared in constant
    time, each of them every time; neither they nor what a caller sent are ever logged."""

    def __init__(self, tokens: Tokens):
        self._tokens = [t.encode() for t in plain_tokens(tokens)]
        if not self._tokens:
            raise ValueError("TokenInterceptor needs at least one token")

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.lstrip("/").split("/", 1)[0] in OPEN_SERVICES:
            return continuation(handler_call_details)
        why = self._refusal_reason(handler_call_details.invocation_metadata or ())
        if why is None:
            return continuation(handler_call_details)
        log.warning("refused %s: %s", method, why)
        handler = continuation(handler_call_details)  # None for a method it does not have
        kind = (
            (handler.request_streaming, handler.response_streaming) if handler else (False, False)
        )
        return _REFUSALS[kind]

    def _refusal_reason(self, metadata) -> str | None:
        """None for a call with an accepted token, else why it is refused (no secret in it)."""
        sent = [v for k, v in metadata if k == METADATA_KEY]
        if not sent:
            return "no authorization metadata"
        value = sent[0]
        scheme, _, token = (value if isinstance(value, str) else "").partition(" ")
        if scheme.lower() != SCHEME or not token.strip():
            return "authorization is not 'Bearer <token>'"
        given = token.strip().encode()
        matched = False
        for accepted in self._tokens:  # no early exit: the time says nothing of which one
            matched |= hmac.compare_digest(given, accepted)
        return None if matched else "a token this service does not accept"


# --- the client side -----------------------------------------------------------------------
def _header(tokens: Tokens) -> tuple[str, str] | None:
    accepted = plain_tokens(tokens)
    return (METADATA_KEY, f"Bearer {accepted[0]}") if accepted else None


def client_channel(target: str, tokens: Tokens, options=None) -> grpc.Channel:
    """A sync insecure channel whose every call (unary and streaming) carries the first of
    `tokens`; a plain channel without tokens. Closes and works as a context manager like
    grpc.insecure_channel's."""
    channel = grpc.insecure_channel(target, options=options)
    header = _header(tokens)
    if header is None:
        return channel
    return grpc.intercept_channel(channel, _SyncToken(header))


def call_metadata(tokens: Tokens) -> tuple[tuple[str, str], ...]:
    """The metadata that carries the first of `tokens`, for a client that passes metadata
    with each call itself (the gateway's asyncio one: an aio interceptor would wrap every
    message of a stream, which a per-call tuple does not); () without tokens."""
    header = _header(tokens)
    return () if header is None else (header,)


class _SyncCallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, header: tuple[str, str]):
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = [*(details.metadata or ()), header]
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _SyncToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, header: tuple[str, str]):
        self._header = header

    def _call(self, continuation, details, request):
        return continuation(_SyncCallDetails(details, self._header), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call
