"""Evaluation fixtures: a real inference server (gRPC on a free loopback port) on
tiny_llama with two published adapters, held-out and training files, and evaluation
services over real SQLite files."""

import json
from pathlib import Path

import pytest

from inference_service.server import serve
from inference_service.settings import InferenceSettings
from tests.conftest import EMAIL_ROWS
from tests.support.adapters import make_adapter
from trainer_service.evaluation.service import EvaluationService
from trainer_service.evaluation.settings import EvaluationSettings
from trainer_service.job_store import JobStore
from trainer_service.journal import JobJournal


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def eval_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evaluation")


@pytest.fixture(scope="session")
def adapters(tiny_llama, eval_dir):
    """(adapters folder, [email@1, email@2])."""
    folder = eval_dir / "adapters"
    return folder, [make_adapter(tiny_llama, folder, "email", seed=s) for s in (1, 2)]


@pytest.fixture(scope="session")
def heldout(eval_dir) -> Path:
    return write_jsonl(eval_dir / "heldout.jsonl", EMAIL_ROWS[:3])


@pytest.fixture(scope="session")
def train_rows(eval_dir) -> Path:
    return write_jsonl(eval_dir / "train.jsonl", EMAIL_ROWS[3:])


@pytest.fixture(scope="session")
def inference(tiny_llama, adapters):
    running = serve(
        InferenceSettings(
            base_model=str(tiny_llama),
            adapters_dir=adapters[0],
            inference_port=0,
            inference_metrics_port=0,
            device="cpu",
            max_batch_wait_ms=5,
            max_input_tokens=1024,
            max_total_tokens=1200,
        )
    )
    yield running
    running.stop(grace=0)


@pytest.fixture
def make_service(tmp_path, adapters, inference):
    """Evaluation services on one home folder (a second one is a restarted trainer)."""
    made = []

    def make(**overrides) -> EvaluationService:
        values = dict(
            home=tmp_path,
            adapters_dir=adapters[0],
            inference_addr=f"127.0.0.1:{inference.port}",
            eval_request_timeout_s=60,
        )
        values.update(overrides)
        settings = EvaluationSettings(**values)
        service = EvaluationService(settings, JobJournal(JobStore(settings.resolved_trainer_db)))
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()
        service.jobs.close()
