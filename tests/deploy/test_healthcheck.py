"""deploy/healthcheck.py, the containers' health check, against real servers on loopback."""

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from grpc_health.v1 import health_pb2

from tuneyard.grpc_server import add_health_and_reflection, build_server

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "healthcheck.py"


def check(*args: str) -> int:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, timeout=30
    ).returncode


def test_grpc_health():
    server = build_server(max_workers=2)
    port = server.add_insecure_port("127.0.0.1:0")
    health = add_health_and_reflection(server, [])
    server.start()
    try:
        assert check("grpc", f"127.0.0.1:{port}") == 0
        health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert check("grpc", f"127.0.0.1:{port}") == 1
    finally:
        server.stop(None)
    assert check("grpc", f"127.0.0.1:{port}") == 1


def test_http_health():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert check(f"{base}/health") == 0
        assert check(f"{base}/down") == 1
    finally:
        server.shutdown()
        server.server_close()
