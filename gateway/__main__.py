"""`python -m gateway`: serve the HTTP gateway with uvicorn until SIGTERM/SIGINT."""

import logging
import os
import shutil
import socket
import tempfile

import uvicorn
from uvicorn.supervisors import Multiprocess

from gateway.app import create_app, uvicorn_config
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket made with an explicit IPPROTO_TCP: asyncio sets TCP_NODELAY
    only on connections whose socket says so, and without it Nagle's algorithm holds each
    small response body back for a delayed ACK (about 40 ms per request)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def main() -> None:
    settings = GatewaySettings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Bound here rather than by uvicorn so the log can name the real port when it is 0;
    # connections made from now on wait in the listen queue until uvicorn serves them.
    sock = listen(settings.gateway_host, settings.gateway_port)
    port = sock.getsockname()[1]
    if settings.gateway_workers > 1:
        serve_workers(settings, sock, port)
        return
    config = uvicorn_config(create_app(settings), settings.log_level)
    log.info("gateway ready on %s:%d", settings.gateway_host, port)
    uvicorn.Server(config).run(sockets=[sock])


def serve_workers(settings: GatewaySettings, sock: socket.socket, port: int) -> None:
    """`gateway_workers` processes accepting on the one socket, watched by uvicorn's
    supervisor (a worker that dies is replaced; SIGTERM stops them all). Their metrics
    meet in a folder of this run's own, named to them in the environment."""
    folder = tempfile.mkdtemp(prefix="tuneyard-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    config = uvicorn_config(
        "gateway.app:app_from_env",
        settings.log_level,
        factory=True,
        workers=settings.gateway_workers,
    )
    log.info(
        "gateway ready on %s:%d (%d workers)", settings.gateway_host, port, settings.gateway_workers
    )
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
