"""Container health check: `healthcheck.py http://127.0.0.1:8080/health` or
`healthcheck.py grpc 127.0.0.1:50052` (grpc.health.v1 Check). Exit 0 when serving."""

import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(argv: list[str]) -> bool:
    if argv[0] == "grpc":
        with grpc.insecure_channel(argv[1]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=3
            )
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    with urllib.request.urlopen(argv[0], timeout=3) as response:
        return response.status == 200


if __name__ == "__main__":
    try:
        healthy = check(sys.argv[1:])
    except Exception as err:  # any failure (refused, timeout, bad reply) is unhealthy
        print(f"unhealthy: {err}", file=sys.stderr)
        healthy = False
    sys.exit(0 if healthy else 1)
