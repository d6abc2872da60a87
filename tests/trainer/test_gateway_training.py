"""The training HTTP routes through the real gateway and a real trainer: /v1/files (with
the openai client, and the checks an upload gets on arrival), a job on an uploaded file, a
job refused for its data, /validate, and checkpoints; and the CLI's `tuneyard validate`."""

import csv
import io
import json
import time

import httpx
import openai
import psutil
import pyarrow
import pyarrow.parquet
import pytest
import yaml

from tests.conftest import EMAIL_ROWS, EMAIL_TEMPLATE
from tuneyard.cli import main as cli

TUNEYARD = {
    "template": EMAIL_TEMPLATE,
    "lora": {"r": 4, "alpha": 8},
    "training": {"max_steps": 4, "save_steps": 2, "batch_size": 2, "max_seq_length": 128},
}


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
    assert bad.json()["error"]["param"] == "purpose"  # the trainer's param, through gRPC
    no_file = http.post("/v1/files", data={"purpose": "fine-tune"})
    assert no_file.status_code == 400


def jsonl(*lines) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def parquet(rows: list[dict]) -> bytes:
    out = io.BytesIO()
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), out)
    return out.getvalue()


def csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


ROW = EMAIL_ROWS[0]
CSV = csv_text(EMAIL_ROWS[:3])  # 3 rows, each over several lines (the emails have newlines)


def upload(http, filename: str, content: bytes) -> httpx.Response:
    return http.post(
        "/v1/files", files={"file": (filename, content)}, data={"purpose": "fine-tune"}
    )


def refused(http, filename: str, content: bytes) -> str:
    """Upload a file the trainer must refuse: a 400 in OpenAI's error shape naming `file`,
    and nothing stored. Returns the error message."""
    before = http.get("/v1/files").json()["data"]
    response = upload(http, filename, content)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == "file"
    assert http.get("/v1/files").json()["data"] == before
    return error["message"]


def test_upload_with_a_broken_json_line_names_the_line(http):
    message = refused(http, "d.jsonl", jsonl(ROW, ROW, '{"product": "x", '))
    assert message.startswith("d.jsonl line 3: not valid JSON:"), message


def test_upload_with_nul_bytes_is_refused(http):
    message = refused(http, "d.jsonl", jsonl(ROW) + b'{"product": "a\x00b"}\n')
    assert "line 2: contains a NUL byte" in message, message


def test_upload_with_a_row_over_the_limit_is_refused(http):
    # The trainer's default limit (TUNEYARD_MAX_ROW_BYTES) is 1 MiB.
    big = {**ROW, "email": "x" * (5 * 1024 * 1024)}
    message = refused(http, "d.jsonl", jsonl(ROW, ROW, big))
    assert "line 3: the row has" in message and "limit of 1048576 bytes" in message, message


def test_upload_that_is_not_utf8_is_refused(http):
    message = refused(http, "d.jsonl", jsonl(ROW) + '{"product": "café"}\n'.encode("latin-1"))
    assert "line 2: not UTF-8 text" in message, message


def test_upload_with_a_json_array_line_is_refused(http):
    message = refused(http, "d.jsonl", jsonl(ROW, [ROW]))
    assert "line 2: a JSON array, expected an object" in message, message


def test_upload_of_chat_rows_checks_openai_s_chat_format(http):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    weighted = [chat[0], {**chat[1], "weight": 0}, chat[0], {**chat[1], "weight": 1}]
    tools = [{"type": "function", "function": {"name": "order"}}]
    good = jsonl({"messages": chat}, {"messages": weighted, "tools": tools})
    assert upload(http, "chat.jsonl", good).status_code == 200
    bad_weight = [chat[0], {**chat[1], "weight": 0.5}]
    message = refused(http, "chat.jsonl", jsonl({"messages": chat}, {"messages": bad_weight}))
    assert message.startswith("chat.jsonl line 2: ") and "weight" in message, message
    message = refused(http, "chat.jsonl", jsonl({"messages": [chat[0]]}))
    assert "line 1: the last message must be the assistant's" in message, message
    # Function calling: an assistant turn of tool calls, the tool's answer, text parts.
    call = {"id": "c1", "type": "function", "function": {"name": "order", "arguments": "{}"}}
    calling = [
        chat[0],
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "assistant", "content": [{"type": "text", "text": "Ordered."}]},
    ]
    assert (
        upload(http, "calls.jsonl", jsonl({"messages": calling, "tools": tools})).status_code == 200
    )
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    message = refused(http, "img.jsonl", jsonl({"messages": chat}, {"messages": [*image, chat[1]]}))
    assert "img.jsonl line 2: messages[0].content[0] must be a text part" in message, message


def test_empty_upload_is_refused(http):
    assert "empty" in refused(http, "d.jsonl", b"")


def test_upload_with_no_rows_is_refused(http):
    assert "d.jsonl has no rows" in refused(http, "d.jsonl", b"\n  \n")
    assert "d.csv has no rows" in refused(http, "d.csv", b"product,description,email\n")


def test_csv_upload_with_a_ragged_row_is_refused(http):
    line = CSV.count("\n") + 1  # the file's line of the 4th row
    message = refused(http, "d.csv", (CSV + "a,b,c,d\n").encode())
    assert f"d.csv row 4 (line {line}): 4 fields, but the header has 3" in message, message
    message = refused(http, "d.csv", (CSV + "a,b\n").encode())
    assert f"d.csv row 4 (line {line}): 2 fields, but the header has 3" in message, message


def test_upload_of_an_unknown_format_is_refused(http):
    assert "unknown format '.txt'" in refused(http, "d.txt", b"hello\n")
    assert "not a readable Parquet file" in refused(http, "d.parquet", b"PAR1 but not")


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("good.jsonl", jsonl(*EMAIL_ROWS)),
        ("good.csv", CSV.encode()),
        ("good.parquet", parquet(EMAIL_ROWS)),
        ("bom.jsonl", b"\xef\xbb\xbf" + jsonl(*EMAIL_ROWS)),  # a byte order mark is fine
    ],
)
def test_good_uploads_are_accepted(http, filename, content):
    response = upload(http, filename, content)
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == len(content)
    assert response.json()["id"] in [f["id"] for f in http.get("/v1/files").json()["data"]]


def test_job_on_a_file_missing_a_template_column_is_refused(http, tiny_llama):
    rows = [dict(r) for r in EMAIL_ROWS[:3]]
    del rows[1]["email"]
    file_id = upload(http, "no-email.jsonl", jsonl(*rows)).json()["id"]
    before = http.get("/v1/fine_tuning/jobs").json()["data"]
    body = {
        "model": str(tiny_llama),
        "training_file": file_id,
        "suffix": "no-email",
        "tuneyard": TUNEYARD,
    }

    response = http.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "data.columns"
    assert error["message"].startswith("line 2 has no column 'email'"), error
    assert http.get("/v1/fine_tuning/jobs").json()["data"] == before
    # The same words as /validate gives.
    report = http.post("/v1/fine_tuning/jobs/validate", json=body).json()
    assert report["error"]["code"] == "missing_column" and report["error"]["line"] == 2
    assert report["error"]["message"] == error["message"]


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
    assert first["fine_tuned_model_checkpoint"] == f"{job['id']}-ckpt-step-2@1"
    assert first["tuneyard"]["published_as"] is None
    published = http.post(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/2/publish").json()
    assert published["tuneyard"]["published_as"] == "uploaded@2"
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


@pytest.mark.parametrize("route", ["/v1/fine_tuning/jobs/validate", "/v1/fine_tuning/jobs"])
def test_server_paths_outside_the_data_folders_are_refused(http, route, email_jsonl, tiny_llama):
    """/etc/passwd and a path that does not exist get the same answer: validate tells no
    one whether a file exists outside the data folders (and creates no job)."""
    jobs_before = http.get("/v1/fine_tuning/jobs").json()["data"]
    answers = []
    for path in ("/etc/passwd", "/etc/no-such-file.jsonl", "/proc/self/environ"):
        body = {
            "model": str(tiny_llama),
            "training_file": path,
            "suffix": "x",
            "tuneyard": TUNEYARD,
        }
        response = http.post(route, json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "data.path" and "data folders" in error["message"]
        answers.append(error["message"])
    assert len(set(answers)) == 1
    assert http.get("/v1/fine_tuning/jobs").json()["data"] == jobs_before
    # A path under the data folders (here: pytest's temporary folders) is read as before.
    fine = http.post(
        "/v1/fine_tuning/jobs/validate",
        json={
            "model": str(tiny_llama),
            "training_file": str(email_jsonl),
            "suffix": "ok",
            "tuneyard": TUNEYARD,
        },
    )
    assert fine.status_code == 200 and fine.json()["ok"] is True, fine.text


def test_a_template_that_fails_to_render_is_reported_not_a_500(http, email_jsonl, tiny_llama):
    """{{ 1/0 }} renders nothing: validate reports it against template.prompt, with the
    line; create refuses it with 400; neither is a server error."""
    body = {
        "model": str(tiny_llama),
        "training_file": str(email_jsonl),
        "suffix": "zero",
        "tuneyard": {**TUNEYARD, "template": {"prompt": "{{ 1/0 }}", "response": "{{ email }}"}},
    }
    report = http.post("/v1/fine_tuning/jobs/validate", json=body)
    assert report.status_code == 200, report.text
    error = report.json()["error"]
    assert report.json()["ok"] is False and error["code"] == "template_error"
    assert error["param"] == "template.prompt" and error["line"] == 1
    assert "ZeroDivisionError" in error["message"]
    created = http.post("/v1/fine_tuning/jobs", json=body)
    assert created.status_code == 400, created.text
    assert created.json()["error"]["param"] == "template.prompt"


def events_of(http, job_id) -> list[str]:
    reply = http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()
    return [e["message"] for e in reply["data"]]


def wait_job(http, job_id, done, timeout=180):
    deadline = time.monotonic() + timeout
    while not done(job := http.get(f"/v1/fine_tuning/jobs/{job_id}").json()):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def test_pause_frees_the_worker_and_resume_goes_on_from_the_checkpoint(
    gateway, http, tiny_llama, email_jsonl
):
    oai = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    file_id = oai.files.create(file=email_jsonl.open("rb"), purpose="fine-tune").id
    training = {**TUNEYARD["training"], "max_steps": 200, "save_steps": 2, "logging_steps": 2}
    job = http.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": str(tiny_llama),
            "training_file": file_id,
            "suffix": "paused",
            "tuneyard": {**TUNEYARD, "training": training},
        },
    ).json()
    wait_job(
        http, job["id"], lambda j: any("checkpoint saved" in m for m in events_of(http, j["id"]))
    )

    oai.fine_tuning.jobs.pause(job["id"])
    paused = wait_job(http, job["id"], lambda j: j["status"] != "running")
    assert paused["status"] == "paused", paused
    assert not [
        p for p in psutil.Process().children(recursive=True) if job["id"] in " ".join(p.cmdline())
    ]
    step = max(c.step_number for c in oai.fine_tuning.jobs.checkpoints.list(job["id"]))
    assert f"paused; resuming goes on from its checkpoint at step {step}" in events_of(
        http, job["id"]
    )
    again = http.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")
    assert again.status_code == 400 and again.json()["error"]["param"] == "job_id"
    assert "only a queued or running job can be paused" in again.json()["error"]["message"]

    assert oai.fine_tuning.jobs.resume(job["id"]).status in ("queued", "running")
    done = wait_job(http, job["id"], lambda j: j["status"] in ("succeeded", "failed", "cancelled"))
    assert done["status"] == "succeeded", done["error"]
    assert f"resuming from checkpoint-{step}" in events_of(http, job["id"])
    resumed = http.post(f"/v1/fine_tuning/jobs/{job['id']}/resume")
    assert resumed.status_code == 400 and "only a paused job can be resumed" in resumed.text


def test_a_job_without_checkpoints_cannot_be_paused_and_a_paused_one_can_be_cancelled(
    gateway, http, tiny_llama, email_jsonl
):
    def create(save_steps):
        training = {**TUNEYARD["training"], "max_steps": 2000, "save_steps": save_steps}
        body = {"model": str(tiny_llama), "training_file": str(email_jsonl), "suffix": "p"}
        return http.post(
            "/v1/fine_tuning/jobs", json={**body, "tuneyard": {**TUNEYARD, "training": training}}
        ).json()

    unsaved = create(0)
    wait_job(http, unsaved["id"], lambda j: j["status"] == "running")
    refused = http.post(f"/v1/fine_tuning/jobs/{unsaved['id']}/pause")
    assert refused.status_code == 400 and "training.save_steps is 0" in refused.text
    http.post(f"/v1/fine_tuning/jobs/{unsaved['id']}/cancel")
    saved = create(5)
    wait_job(http, saved["id"], lambda j: j["status"] == "running")
    http.post(f"/v1/fine_tuning/jobs/{saved['id']}/pause")
    wait_job(http, saved["id"], lambda j: j["status"] == "paused")
    cancelled = http.post(f"/v1/fine_tuning/jobs/{saved['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    assert events_of(http, saved["id"])[0] == "cancelled while paused"  # newest first


def test_an_openai_pipeline_with_validation_file_metadata_and_results_csv(
    gateway, http, tiny_llama, email_jsonl, tmp_path
):
    """A job as an OpenAI pipeline creates it: validation_file becomes the eval split (eval
    loss in events and checkpoints), metadata is returned and filters the list, and the
    first result file is the CSV of its step metrics."""
    oai = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    training_file = oai.files.create(file=email_jsonl.open("rb"), purpose="fine-tune").id
    valid = tmp_path / "valid.jsonl"
    valid.write_bytes(jsonl(*EMAIL_ROWS[:3]))
    validation_file = oai.files.create(file=valid.open("rb"), purpose="fine-tune").id
    training = {**TUNEYARD["training"], "eval_steps": 2, "logging_steps": 1}
    job = oai.fine_tuning.jobs.create(
        model=str(tiny_llama),
        training_file=training_file,
        validation_file=validation_file,
        suffix="pipeline",
        seed=7,
        metadata={"team": "mail", "run": "1"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 2}}},
        extra_body={"tuneyard": {**TUNEYARD, "training": training}},
    )
    assert job.validation_file == validation_file and job.metadata == {"team": "mail", "run": "1"}
    assert job.seed == 7 and job.training_file == training_file
    # An unended job's validation file cannot be deleted.
    deleted = http.delete(f"/v1/files/{validation_file}")
    assert deleted.status_code == 400 and job.id in deleted.text, deleted.text
    wait_job(http, job.id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"))

    job = oai.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.object == "fine_tuning.job" and job.error is None and job.finished_at
    assert job.fine_tuned_model == "pipeline@1" and job.trained_tokens
    assert job.model and job.organization_id and job.integrations == []
    assert job.method.type == "supervised" and job.hyperparameters.batch_size == 2
    assert job.validation_file == validation_file and job.seed == 7
    assert job.estimated_finish is None and job.created_at <= job.finished_at
    assert job.model_extra.keys() <= {"suffix", "tuneyard"}  # no field the SDK does not know

    events = list(oai.fine_tuning.jobs.list_events(job.id, limit=1000))
    assert any("validated 12 rows (12 train, 3 eval" in e.message for e in events)
    eval_losses = [
        e.data["eval_loss"] for e in events if e.type == "metrics" and e.data.get("eval_loss")
    ]
    assert len(eval_losses) == 2  # steps 2 and 4
    checkpoints = list(oai.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [4, 2]
    assert all(c.metrics.valid_loss > 0 for c in checkpoints)

    assert [j.id for j in oai.fine_tuning.jobs.list(metadata={"team": "mail"})] == [job.id]
    both = oai.fine_tuning.jobs.list(metadata={"team": "mail", "run": "1"})
    assert [j.id for j in both] == [job.id]
    assert list(oai.fine_tuning.jobs.list(metadata={"team": "mail", "run": "2"})) == []

    results = oai.files.retrieve(job.result_files[0])
    assert results.purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(oai.files.content(job.result_files[0]).text)))
    assert list(rows[0]) == [
        "step",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
    ]
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]  # logging_steps 1
    assert all(float(r["train_loss"]) > 0 for r in rows)
    assert [bool(r["valid_loss"]) for r in rows] == [False, True, False, True]
    # The validation file is free again once the job ended.
    assert oai.files.delete(validation_file).deleted


def test_bad_metadata_and_validation_file_are_refused_naming_the_field(
    http, tiny_llama, email_jsonl
):
    body = {
        "model": str(tiny_llama),
        "training_file": str(email_jsonl),
        "suffix": "bad",
        "tuneyard": TUNEYARD,
    }
    for metadata in (
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"k": 1},
    ):
        response = http.post("/v1/fine_tuning/jobs", json={**body, "metadata": metadata})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "metadata"
    for validation_file in ("file-0123456789abcdef01234567", "/etc/passwd"):
        response = http.post(
            "/v1/fine_tuning/jobs", json={**body, "validation_file": validation_file}
        )
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]["param"] == "validation_file", response.text
    bad_row = http.post(
        "/v1/files",
        files={"file": ("v.jsonl", jsonl(ROW, {"product": "a", "description": "b"}))},
        data={"purpose": "fine-tune"},
    ).json()["id"]
    response = http.post("/v1/fine_tuning/jobs", json={**body, "validation_file": bad_row})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "validation_file" and "line 2" in error["message"], error


def test_cli_train_uploads_local_data_files_and_names_them_by_id(
    gateway, http, tiny_llama, email_jsonl, tmp_path, capsys
):
    """As a user of a stack on another machine needs: the spec's local data.path and
    data.eval_path are uploaded, and the job names the files by id; --server-paths sends
    the paths for the trainer to read itself."""
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(email_jsonl.read_text())
    spec = {
        "base_model": str(tiny_llama),
        "adapter_name": "cli-uploaded",
        "data": {"path": email_jsonl.name, "eval_path": str(heldout)},  # relative to the spec
        **TUNEYARD,
    }
    path = email_jsonl.parent / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli(["--url", gateway.url, "train", str(path)]) == 0
    captured = capsys.readouterr()
    job = json.loads(captured.out)
    training, validation = job["training_file"], job["validation_file"]
    assert training.startswith("file-") and validation.startswith("file-")
    assert not {"path", "eval_path"} & set(job["tuneyard"]["spec"]["data"])
    assert f"uploaded {email_jsonl} as {training}" in captured.err
    uploaded = http.get(f"/v1/files/{training}/content")
    assert uploaded.status_code == 200 and uploaded.text == email_jsonl.read_text()
    http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")

    assert cli(["--url", gateway.url, "train", "--server-paths", str(path)]) == 0
    job = json.loads(capsys.readouterr().out)
    assert (job["training_file"], job["validation_file"]) == (str(email_jsonl), str(heldout))
    http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
