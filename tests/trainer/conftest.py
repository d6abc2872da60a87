"""Helpers for the trainer tests: a spec on a tiny model and settings in a temp home."""

import copy
import time

import pytest

from tests.conftest import EMAIL_TEMPLATE
from tests.support.services import start_gateway
from trainer_service.server import serve
from trainer_service.settings import TrainerSettings
from tuneyard.jobspec import JobSpec


def make_spec(model, data_path, **overrides) -> JobSpec:
    spec = {
        "base_model": str(model),
        "adapter_name": "emails",
        "data": {"path": str(data_path)},
        "template": copy.deepcopy(EMAIL_TEMPLATE),
        "lora": {"r": 4, "alpha": 8},
        "training": {"max_steps": 2, "batch_size": 2, "max_seq_length": 128},
        # No trainer runs the worker here to compare with a server (test_parity_gate.py).
        "parity_gate": {"prompts": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            spec.setdefault(key, {}).update(value)
        else:
            spec[key] = value
    return JobSpec.parse(spec)


@pytest.fixture
def settings(tmp_path) -> TrainerSettings:
    return TrainerSettings(
        home=tmp_path / "home", trainer_device="cpu", trainer_metrics_port=0, trainer_port=0
    )


def wait_until(predicate, timeout: float = 120.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


# --- a gateway in front of a real trainer (module-scoped: one per test file) ------------------
@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    trainer = serve(
        TrainerSettings(home=home, trainer_port=0, trainer_metrics_port=0, trainer_device="cpu")
    )
    gateway = start_gateway(trainer_addr=f"127.0.0.1:{trainer.port}")
    yield gateway
    gateway.stop()
    trainer.stop(grace=1)
