"""`TUNEYARD_GATEWAY_WORKERS=2`: the real gateway (`python -m gateway`) as two processes
on one port in front of the inference service, their metrics summed, a killed worker
replaced."""

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tuneyard.local_stack import free_port

pytestmark = pytest.mark.integration


def workers(gateway: subprocess.Popen) -> list[psutil.Process]:
    """The worker processes (uvicorn's supervisor spawns them through multiprocessing,
    beside its resource tracker)."""
    found = []
    for child in psutil.Process(gateway.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # one that just died (a zombie until reaped)
            continue
    return found


def generated_tokens(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tuneyard_gateway_generated_tokens"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


@pytest.fixture
def two_workers(inference):
    port = free_port()
    env = {
        **os.environ,
        "TUNEYARD_GATEWAY_WORKERS": "2",
        "TUNEYARD_GATEWAY_PORT": str(port),
        "TUNEYARD_INFERENCE_ADDR": f"127.0.0.1:{inference.port}",
        "TUNEYARD_TRAINER_ADDR": f"127.0.0.1:{free_port()}",
        "TUNEYARD_LOG_LEVEL": "WARNING",
    }
    gateway = subprocess.Popen([sys.executable, "-m", "gateway"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while len(workers(gateway)) < 2 or not _answers(url):
        assert gateway.poll() is None and time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.2)
    yield gateway, url
    running = workers(gateway)
    gateway.send_signal(signal.SIGTERM)
    assert gateway.wait(timeout=30) == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in running)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _generate(url: str) -> int:
    # A new connection each time: the workers share the listening socket.
    reply = httpx.post(
        f"{url}/generate",
        json={"inputs": "Hi", "parameters": {"max_new_tokens": 3, "details": True}},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["details"]["generated_tokens"]


def test_two_workers_serve_one_port_and_sum_their_metrics(two_workers):
    gateway, url = two_workers
    first = workers(gateway)
    assert len(first) == 2
    tokens = sum(_generate(url) for _ in range(12))
    assert generated_tokens(url) == tokens  # whichever worker answers /metrics
    killed = first[0].pid
    os.kill(killed, signal.SIGKILL)
    tokens += sum(_generate(url) for _ in range(6))  # the other one serves meanwhile
    deadline = time.monotonic() + 30
    while killed in [w.pid for w in workers(gateway)] or len(workers(gateway)) < 2:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.2)
    tokens += sum(_generate(url) for _ in range(6))
    # The killed worker's counts are kept: the totals cover every request.
    assert generated_tokens(url) == tokens
