"""Fine-tuning jobs through the gateway, against the real trainer (real worker processes)
and the real inference service: create, follow, list, cancel, then generate with the result."""

import copy
import json
import time

import httpx
import openai
import pytest

from tests.conftest import EMAIL_TEMPLATE
from tests.support.services import serve_inference, start_gateway
from trainer_service.server import serve as serve_trainer
from trainer_service.settings import TrainerSettings

TUNEYARD = {
    "template": EMAIL_TEMPLATE,
    "lora": {"r": 4, "alpha": 8},
    "training": {"max_steps": 2, "max_seq_length": 128, "save_steps": 1},
}


@pytest.fixture(scope="module")
def stack(tiny_llama, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    inference = serve_inference(tiny_llama, home / "adapters")
    trainer = serve_trainer(
        TrainerSettings(
            home=home,
            trainer_port=0,
            trainer_metrics_port=0,
            trainer_device="cpu",
            inference_addr=f"127.0.0.1:{inference.port}",
        )
    )
    gateway = start_gateway(
        inference_addr=f"127.0.0.1:{inference.port}", trainer_addr=f"127.0.0.1:{trainer.port}"
    )
    yield gateway
    gateway.stop()
    trainer.stop(grace=1)
    inference.stop(grace=0)


@pytest.fixture
def oai(stack):
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def http(stack):
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield client


def _wait_status(http, job_id: str, statuses: set[str], timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while (job := http.get(f"/v1/fine_tuning/jobs/{job_id}").json())["status"] not in statuses:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


@pytest.mark.slow
def test_job_lifecycle_then_generate(oai, http, tiny_llama, email_jsonl):
    job = oai.fine_tuning.jobs.create(
        model=str(tiny_llama),
        training_file=str(email_jsonl),
        suffix="emails",
        seed=7,
        hyperparameters={"batch_size": 2, "learning_rate_multiplier": 2},
        extra_body={"tuneyard": TUNEYARD},
    )
    assert job.object == "fine_tuning.job" and job.status in ("validating_files", "queued")
    assert job.suffix == "emails" and job.seed == 7 and job.training_file == str(email_jsonl)
    assert job.model == "tiny-llama"  # the base model's name; its folder is not shown
    assert job.hyperparameters.batch_size == 2
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(2)

    # Follow it as server-sent events until it ends.
    with http.stream(
        "GET", f"/v1/fine_tuning/jobs/{job.id}/events", params={"stream": "true"}, timeout=180
    ) as response:
        assert response.status_code == 200
        lines = [
            line.removeprefix("data:") for line in response.iter_lines() if line.startswith("data:")
        ]
    assert lines[-1] == "[DONE]"
    streamed = [json.loads(line) for line in lines[:-1]]
    assert all(e["object"] == "fine_tuning.job.event" for e in streamed)
    steps = [e["data"]["step"] for e in streamed if e["type"] == "metrics" and "step" in e["data"]]
    assert steps and max(steps) == 2

    done = oai.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == "emails@1" and done.finished_at >= done.created_at
    assert done.error is None

    assert job.id in [j.id for j in oai.fine_tuning.jobs.list(limit=10).data]
    events = oai.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert [e.id for e in events] == [e["id"] for e in reversed(streamed)]  # newest first
    page = http.get(
        f"/v1/fine_tuning/jobs/{job.id}/events", params={"limit": 2, "after": events[1].id}
    ).json()
    assert [e["id"] for e in page["data"]] == [e.id for e in events[2:4]]

    # The new adapter answers through the gateway.
    response = http.post(
        "/generate",
        json={
            "inputs": "### Product\nLamp\n",
            "parameters": {"adapter_id": done.fine_tuned_model, "max_new_tokens": 3},
        },
    )
    assert response.status_code == 200, response.text
    assert "emails" in [m.id for m in oai.models.list()]

    # A checkpoint published afterwards is the next version, and inference loads it at once.
    checkpoints = http.get(f"/v1/fine_tuning/jobs/{job.id}/checkpoints").json()["data"]
    assert [c["step_number"] for c in checkpoints] == [2, 1]
    published = http.post(f"/v1/fine_tuning/jobs/{job.id}/checkpoints/1/publish")
    assert published.status_code == 200, published.text
    assert published.json()["tuneyard"]["published_as"] == "emails@2"
    # Its own model stays what it was: the checkpoint's, which took no version of emails.
    assert published.json()["fine_tuned_model_checkpoint"] == f"{job.id}-ckpt-step-1@1"
    adapters = {a["id"]: a for a in http.get("/v1/adapters").json()["data"]}
    assert adapters["emails@2"]["loaded"], adapters
    events = oai.fine_tuning.jobs.list_events(job.id, limit=5).data
    assert events[0].message == "the inference service loaded emails@2"

    # Cancelling a finished job changes nothing.
    assert oai.fine_tuning.jobs.cancel(job.id).status == "succeeded"


@pytest.mark.slow
def test_cancel_running_job(oai, http, tiny_llama, email_jsonl):
    tuneyard = copy.deepcopy(TUNEYARD)
    tuneyard["training"]["max_steps"] = 10_000
    job = oai.fine_tuning.jobs.create(
        model=str(tiny_llama),
        training_file=str(email_jsonl),
        suffix="long",
        extra_body={"tuneyard": tuneyard},
    )
    cancelled = oai.fine_tuning.jobs.cancel(job.id)
    assert cancelled.id == job.id
    final = _wait_status(http, job.id, {"cancelled", "failed", "succeeded"})
    assert final["status"] == "cancelled" and final["fine_tuned_model"] is None


def test_job_on_data_that_fails_validation_is_refused(oai, tiny_llama, tmp_path):
    before = [j.id for j in oai.fine_tuning.jobs.list(limit=100).data]
    with pytest.raises(openai.BadRequestError) as caught:
        oai.fine_tuning.jobs.create(
            model=str(tiny_llama),
            training_file=str(tmp_path / "missing.jsonl"),
            suffix="broken",
            extra_body={"tuneyard": TUNEYARD},
        )
    assert "missing.jsonl" in caught.value.message
    assert caught.value.param == "data.path"
    assert [j.id for j in oai.fine_tuning.jobs.list(limit=100).data] == before


def test_job_that_fails_validation_says_why(oai, http, tmp_path, email_jsonl):
    """What only the background validation finds (here: the base model) fails the job."""
    job = oai.fine_tuning.jobs.create(
        model=str(tmp_path / "no-model"),
        training_file=str(email_jsonl),
        suffix="broken",
        extra_body={"tuneyard": TUNEYARD},
    )
    final = _wait_status(http, job.id, {"failed", "succeeded", "cancelled"})
    assert final["status"] == "failed"
    assert "no-model" in final["error"]["message"]
    # The base model is named by its folder's name; its path is in no field of the job.
    assert final["model"] == "no-model" and str(tmp_path / "no-model") not in json.dumps(final)
    assert final["error"]["param"] == "base_model"


def test_job_errors(oai, http):
    with pytest.raises(openai.NotFoundError):
        oai.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        oai.fine_tuning.jobs.cancel("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        oai.fine_tuning.jobs.list_events("ftjob-nope")
    response = http.get("/v1/fine_tuning/jobs/ftjob-nope/events", params={"stream": "true"})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError, match="template needs builtin"):
        oai.fine_tuning.jobs.create(
            model="m", training_file="/x.jsonl", extra_body={"tuneyard": {"template": {}}}
        )
