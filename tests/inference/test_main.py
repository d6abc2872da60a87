"""`python -m inference_service` as a real process: ready log line, serves, stops on SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest

from tuneyard.v1 import inference_pb2 as pb
from tuneyard.v1 import inference_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_process_serves_and_stops_on_sigterm(tiny_llama, tmp_path):
    port = free_port()
    env = dict(
        os.environ,
        TUNEYARD_BASE_MODEL=str(tiny_llama),
        TUNEYARD_HOME=str(tmp_path),
        TUNEYARD_INFERENCE_PORT=str(port),
        TUNEYARD_INFERENCE_METRICS_PORT="0",
        TUNEYARD_DEVICE="cpu",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference_service"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if f"inference ready on 127.0.0.1:{port}" in line or not line:
                break
        assert f"inference ready on 127.0.0.1:{port}" in lines[-1], "".join(lines)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            response = stub.Generate(
                pb.GenerateRequest(
                    inputs="Hi", parameters=pb.GenerationParameters(max_new_tokens=2)
                ),
                timeout=30,
            )
        assert response.details.generated_tokens == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
