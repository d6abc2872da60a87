"""The training HTTP routes through the real gateway and a real trainer: /v1/files (with
the openai client), a job on an uploaded file, /validate, and checkpoints; and the CLI's
`tuneyard validate`."""

import json
import time

import httpx
import openai
import pytest
import yaml

from tests.conftest import EMAIL_TEMPLATE
from tests.gateway.conftest import start_gateway
from trainer_service.server import serve
from tuneyard.cli import main as cli

TUNEYARD = {
    "template": EMAIL_TEMPLATE,
    "lora": {"r": 4, "alpha": 8},
    "training": {"max_steps": 4, "save_steps": 2, "batch_size": 2, "max_seq_length": 128},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    trainer = serve_trainer(tmp_path_factory.mktemp("home"))
    gateway = start_gateway(trainer_addr=f"127.0.0.1:{trainer.port}")
    yield gateway
    gateway.stop()
    trainer.stop(grace=1)


def serve_trainer(home):
    from trainer_service.settings import TrainerSettings

    return serve(
        TrainerSettings(home=home, trainer_port=0, trainer_metrics_port=0, trainer_device="cpu")
    )


@pytest.fixture
def http(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


def test_files_api_with_the_openai_client(gateway, http, email_jsonl):
    oai = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    uploaded = oai.files.create(file=email_jsonl.open("rb"), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.object == "file"
    assert uploaded.bytes == email_jsonl.stat().st_size and uploaded.filename == "emails.jsonl"
    assert oai.files.retrieve(uploaded.id).id == uploaded.id
    assert uploaded.id in [f.id for f in oai.files.list()]

    missing = http.get("/v1/files/file-0123")
    assert missing.status_code == 404 and "not found" in missing.json()["error"]["message"]
    bad = http.post("/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "x"})
    assert bad.status_code == 400 and "unsupported purpose 'x'" in bad.json()["error"]["message"]
    no_file = http.post("/v1/files", data={"purpose": "fine-tune"})
    assert no_file.status_code == 400


def test_validate_route_reports_without_a_job(http, tiny_llama, email_jsonl, tmp_path):
    body = {
        "model": str(tiny_llama),
        "training_file": str(email_jsonl),
        "suffix": "emails",
        "tuneyard": TUNEYARD,
    }
    report = http.post("/v1/fine_tuning/jobs/validate", json=body).json()
    assert report["ok"] and report["rows"] == 12 and report["error"] is None
    assert set(report["tokens"]) == {"min", "mean", "p50", "p95", "max"}
    assert http.get("/v1/fine_tuning/jobs").json()["data"] == []

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"product": "a", "description": "b"}\n')
    report = http.post(
        "/v1/fine_tuning/jobs/validate", json={**body, "training_file": str(bad)}
    ).json()
    assert not report["ok"] and report["error"]["code"] == "missing_column"
    assert report["error"]["line"] == 1 and "'email'" in report["error"]["message"]


@pytest.mark.slow
def test_job_on_an_uploaded_file_with_checkpoints(http, tiny_llama, email_jsonl):
    file_id = http.post(
        "/v1/files",
        files={"file": ("emails.jsonl", email_jsonl.read_bytes())},
        data={"purpose": "fine-tune"},
    ).json()["id"]
    job = http.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": str(tiny_llama),
            "training_file": file_id,
            "suffix": "uploaded",
            "tuneyard": TUNEYARD,
        },
    ).json()
    assert job["training_file"] == file_id
    deadline = time.monotonic() + 120
    while (job := http.get(f"/v1/fine_tuning/jobs/{job['id']}").json())["status"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert job["status"] == "succeeded", job["error"]

    checkpoints = http.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert [c["step_number"] for c in checkpoints["data"]] == [4, 2]  # newest first
    first = checkpoints["data"][1]
    assert first["object"] == "fine_tuning.job.checkpoint" and first["metrics"]["train_loss"] > 0
    assert first["fine_tuned_model_checkpoint"] is None
    published = http.post(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/2/publish").json()
    assert published["fine_tuned_model_checkpoint"] == "uploaded@2"
    missing = http.post(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/3/publish")
    assert missing.status_code == 404


def test_cli_validate(gateway, tiny_llama, email_jsonl, tmp_path, capsys):
    spec = {
        "base_model": str(tiny_llama),
        "adapter_name": "emails",
        "data": {"path": str(email_jsonl)},
        **TUNEYARD,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli(["--url", gateway.url, "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rows: 12 (12 train, 0 eval)" in out and "tokens per row: min" in out and "OK" in out

    assert cli(["--url", gateway.url, "validate", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 12

    spec["data"]["path"] = str(tmp_path / "gone.jsonl")
    path.write_text(yaml.safe_dump(spec))
    assert cli(["--url", gateway.url, "validate", str(path)]) == 1
    assert "INVALID [invalid_file] data.path" in capsys.readouterr().out
