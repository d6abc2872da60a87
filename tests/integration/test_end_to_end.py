"""The whole loop through the real services, started as processes on loopback ports:
submit a job through the gateway, watch it, see the adapter hot-loaded, generate with it."""

import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from text_generation import Client

from tests.conftest import EMAIL_ROWS, EMAIL_TEMPLATE
from tuneyard.client import GatewayClient, GatewayError
from tuneyard.jobspec import JobSpec
from tuneyard.local_stack import LocalStack
from tuneyard.progress import follow_job
from tuneyard.statuses import TERMINAL

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_llama):
    home = tmp_path_factory.mktemp("home")
    with LocalStack(
        home=home, base_model=str(tiny_llama), extra_env={"HF_HUB_OFFLINE": "1"}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "emails.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in EMAIL_ROWS))
    return path


def spec(data_path, **overrides) -> JobSpec:
    data = {
        "adapter_name": "emails",
        "data": {"path": str(data_path)},
        "template": EMAIL_TEMPLATE,
        "training": {"max_steps": 3, "batch_size": 2, "max_seq_length": 128},
    }
    data.update(overrides)
    return JobSpec.parse(data)


@pytest.fixture(scope="module")
def trained(stack, data_file):
    client = GatewayClient(stack.gateway_url)
    job = client.create_job(
        spec(
            data_file,
            data={"path": str(data_file), "eval_fraction": 0.25},
            evaluation={"max_new_tokens": 4, "checks": [{"type": "contains", "value": "Subject"}]},
        )
    )
    assert job["status"] in {"validating_files", "queued", "running"}
    return follow_job(client, job["id"]), list(client.stream_events(job["id"]))


def test_job_trains_and_publishes(trained, stack):
    job, events = trained
    assert job["status"] == "succeeded", job.get("error")
    assert job["fine_tuned_model"] == "emails@1"
    assert job["trained_tokens"] > 0
    steps = [e["data"]["step"] for e in events if e.get("type") == "metrics" and e.get("data")]
    assert steps and max(steps) == 3
    assert (stack.home / "adapters" / "emails" / "1" / "tuneyard.json").is_file()


def test_the_spec_asked_evaluation_runs_by_itself_and_is_linked(trained, stack):
    job, _ = trained
    client = GatewayClient(stack.gateway_url)
    deadline = time.monotonic() + 180
    files = openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key="unused").files
    while len(job["result_files"]) < 4:  # results CSV, loss curve, then the two reports
        assert time.monotonic() < deadline, f"no evaluation report linked: {job}"
        time.sleep(1)
        job = client.get_job(job["id"])
    names = [files.retrieve(f).filename for f in job["result_files"]]
    assert names[1:] == ["loss_curve.png", "report.html", "report.md"], names
    assert "zero_shot" in files.content(job["result_files"][2]).text
    evaluations = client.list_evaluations()
    assert any(e["spec"].get("job_id") == job["id"] for e in evaluations)


def test_adapter_is_hot_loaded_and_answers(trained, stack):
    job, _ = trained
    adapters = httpx.get(f"{stack.gateway_url}/v1/adapters", timeout=30).json()
    listed = {a["id"]: a for a in adapters["data"]}
    assert listed["emails@1"]["loaded"], "the trainer tells inference to load a new version"

    body = {
        "inputs": "### Product\nLamp\n\n### Email\n",
        "parameters": {"adapter_id": "emails", "max_new_tokens": 5, "details": True},
    }
    reply = httpx.post(f"{stack.gateway_url}/generate", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    tuned = reply.json()
    assert tuned["details"]["generated_tokens"] == len(tuned["details"]["tokens"]) <= 5

    base = httpx.post(
        f"{stack.gateway_url}/generate",
        timeout=60,
        json={"inputs": body["inputs"], "parameters": {"max_new_tokens": 5, "details": True}},
    ).json()
    # A randomly initialised LoRA B is zero, but three training steps move it: the adapter
    # must change the logits, and with them the reported log-probabilities.
    assert [t["logprob"] for t in tuned["details"]["tokens"]] != [
        t["logprob"] for t in base["details"]["tokens"]
    ]


CHAT_ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Write an email about {r['product']}."},
            {"role": "assistant", "content": r["email"]},
        ]
    }
    for r in EMAIL_ROWS
]


def _wait(client: openai.OpenAI, job):
    deadline = time.monotonic() + 300
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in TERMINAL:
        assert time.monotonic() < deadline, job
        time.sleep(1)
    assert job.status == "succeeded", job.error
    return job


def _chat_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_an_openai_fine_tuning_pipeline_runs_unchanged(stack, tmp_path):
    """The calls a pipeline written for OpenAI's fine-tuning API makes, through the openai
    client and nothing tuneyard's: upload chat rows, create (validation file, metadata, no
    suffix), wait, read the results file, chat with the fine-tuned model, delete it;
    afterwards it is 404, never the base model."""
    client = openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key="unused", max_retries=0)
    training = _chat_rows(tmp_path / "train.jsonl", CHAT_ROWS)
    validation = _chat_rows(tmp_path / "validation.jsonl", CHAT_ROWS[:3])
    training_file = client.files.create(file=training.open("rb"), purpose="fine-tune")
    validation_file = client.files.create(file=validation.open("rb"), purpose="fine-tune")
    base = client.models.list().data[0].id
    job = client.fine_tuning.jobs.create(
        model=base,
        training_file=training_file.id,
        validation_file=validation_file.id,
        metadata={"team": "growth"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    job = _wait(client, job)
    assert job.validation_file == validation_file.id and job.metadata == {"team": "growth"}
    assert job.fine_tuned_model.startswith("ft-") and job.method.type == "supervised"
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "growth"})] == [job.id]
    results = client.files.content(job.result_files[0]).text.splitlines()
    assert results[0].startswith("step,train_loss") and len(results) > 1
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any("eval_loss" in m for m in events)

    answer = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert answer.model == job.fine_tuned_model and answer.usage.completion_tokens > 0
    assert client.models.delete(job.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError) as gone:
        client.chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert gone.value.body["param"] == "model"
    assert job.fine_tuned_model.split("@")[0] not in [m.id for m in client.models.list()]


def test_a_checkpoint_answers_as_a_model_of_its_own(stack, tmp_path):
    """As OpenAI's: each of a succeeded job's last three checkpoints is a `model`, and
    serving them takes no version of the job's adapter."""
    client = openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key="unused", max_retries=0)
    training = _chat_rows(tmp_path / "train.jsonl", CHAT_ROWS)
    job = client.fine_tuning.jobs.create(
        model=client.models.list().data[0].id,
        training_file=client.files.create(file=training.open("rb"), purpose="fine-tune").id,
        suffix="steps",
        extra_body={"tuneyard": {"training": {"max_steps": 4, "save_steps": 1}}},
    )
    job = _wait(client, job)
    assert job.fine_tuned_model == "steps@1"
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [4, 3, 2, 1]  # newest first
    models = [c.fine_tuned_model_checkpoint for c in checkpoints]
    assert models[:3] == [f"{job.id}-ckpt-step-{n}@1" for n in (4, 3, 2)]
    assert models[3] is None  # older than the last three: not a model
    replies = [
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, logprobs=True
        )
        for model in models[:3]
    ]
    assert [r.model for r in replies] == models[:3]
    assert all(r.usage.completion_tokens > 0 for r in replies)
    listed = [m.id for m in client.models.list()]
    assert f"{job.id}-ckpt-step-4" in listed and "steps" in listed
    adapters = httpx.get(f"{stack.gateway_url}/v1/adapters", timeout=30).json()["data"]
    assert [a["id"] for a in adapters if a["id"].startswith("steps@")] == ["steps@1"]


def test_text_generation_client_against_the_gateway(stack):
    client = Client(stack.gateway_url, timeout=60)
    reply = client.generate("Hi there", max_new_tokens=4)
    assert reply.details.generated_tokens == len(reply.details.tokens)
    streamed = "".join(
        r.token.text
        for r in client.generate_stream("Hi there", max_new_tokens=4)
        if not r.token.special
    )
    assert streamed == reply.generated_text


def test_unknown_adapter_is_404_not_the_base_model(stack):
    reply = httpx.post(
        f"{stack.gateway_url}/generate",
        timeout=30,
        json={"inputs": "Hi", "parameters": {"adapter_id": "nope", "max_new_tokens": 3}},
    )
    assert reply.status_code == 404
    assert "nope" in reply.json()["error"]
    assert reply.json()["error_type"]


@pytest.mark.parametrize(
    "parameters, inputs, needle",
    [
        ({"max_new_tokens": -1}, "Hi", "max_new_tokens"),
        ({"max_new_tokens": 3}, "", "input"),
    ],
)
def test_bad_generate_requests_are_422(stack, parameters, inputs, needle):
    reply = httpx.post(
        f"{stack.gateway_url}/generate",
        timeout=30,
        json={"inputs": inputs, "parameters": parameters},
    )
    assert reply.status_code == 422, reply.text
    assert reply.json()["error_type"] == "validation"
    assert needle in reply.json()["error"]


def test_bad_jobs_fail_with_the_problem_named(stack, data_file, tmp_path):
    client = GatewayClient(stack.gateway_url)
    missing_file = spec(tmp_path / "missing.jsonl", adapter_name="missing-file")
    bad_column = spec(
        data_file,
        adapter_name="bad-column",
        template={"prompt": "{{ sku }}", "response": "{{ email }}"},
    )
    bad_model = spec(data_file, adapter_name="bad-model", base_model=str(tmp_path / "nomodel"))
    for job_spec, needle in [
        (missing_file, "missing.jsonl"),
        (bad_column, "sku"),
        (bad_model, "nomodel"),
    ]:
        try:
            job = follow_job(client, client.create_job(job_spec)["id"])
        except GatewayError as err:  # refused before a job exists: fine too
            assert err.status == 400 and needle in err.message
            continue
        assert job["status"] == "failed"
        assert needle in job["error"]["message"]
    # Nothing was stuck and nothing was published for them.
    assert not (stack.home / "adapters" / "bad-column").exists()
    assert all(j["status"] in {"succeeded", "failed"} for j in client.list_jobs())


def test_metrics_and_health(stack):
    assert httpx.get(f"{stack.gateway_url}/health", timeout=10).status_code == 200
    metrics = httpx.get(f"{stack.gateway_url}/metrics", timeout=10).text
    assert "tuneyard_gateway_" in metrics
    for port in (stack.trainer_metrics_port, stack.inference_metrics_port):
        assert "tuneyard_" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
