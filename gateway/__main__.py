"""`python -m gateway`: serve the HTTP gateway with uvicorn until SIGTERM/SIGINT."""

import logging
import socket

import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")


def main() -> None:
    settings = GatewaySettings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Bound here rather than by uvicorn so the log can name the real port when it is 0;
    # connections made from now on wait in the listen queue until uvicorn serves them.
    sock = socket.create_server((settings.gateway_host, settings.gateway_port), backlog=2048)
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_level=settings.log_level.lower())
    log.info("gateway ready on %s:%d", settings.gateway_host, port)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
