"""Only the engine thread computes on several cores; every other thread of the service runs
torch on one, so that OpenMP keeps a single team of workers (see compute_threads)."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import torch

from inference_service.compute_threads import claim_cores

REPO = Path(__file__).resolve().parents[2]


def threads_seen_by(target) -> int:
    """torch's threads in a new thread that runs `target` first, then a matmul."""
    seen = []

    def run():
        target()
        torch.randn(64, 64) @ torch.randn(64, 64)
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


def test_a_thread_claims_cores_for_itself_alone():
    default = threads_seen_by(lambda: None)
    claimed = default + 2
    assert threads_seen_by(lambda: claim_cores(claimed)) == claimed
    assert threads_seen_by(lambda: None) == default  # threads started later keep the default
    assert torch.get_num_threads() == default


# What `python -m inference_service` does before it loads the model (server.main), then a
# request served, and torch work on another thread (as a gRPC thread loading an adapter).
SERVICE_SCRIPT = """
import json, sys, threading, torch
sys.path.insert(0, sys.argv[2])
from inference_service.compute_threads import one_thread_by_default
from tests.support.engines import make_engine
from inference_service.params import GenerateInput, Parameters

cores = one_thread_by_default()
engine = make_engine(sys.argv[1], sys.argv[3], engine_threads=3)
seen = {"cores": cores}
engine.scheduler.on_batch = lambda rows: seen.setdefault("engine", torch.get_num_threads())
engine.submit(GenerateInput(inputs="Hello", parameters=Parameters(max_new_tokens=2))).result(60)

def other():
    torch.randn(64, 64) @ torch.randn(64, 64)
    seen["other"] = torch.get_num_threads()

thread = threading.Thread(target=other)
thread.start()
thread.join()
seen["main"] = torch.get_num_threads()
engine.stop()
print(json.dumps(seen))
"""


def test_the_service_computes_on_several_threads_in_the_engine_thread_only(tiny_llama, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    run = subprocess.run(
        [sys.executable, "-c", SERVICE_SCRIPT, str(tiny_llama), str(REPO), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen == {"cores": 2, "engine": 3, "other": 1, "main": 1}
