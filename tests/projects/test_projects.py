"""Projects through the whole stack: the real trainer, inference service and two gateway
replicas on a tiny model, all locked with a service token. An admin makes two projects
and a key for each; each project runs the same OpenAI fine-tuning pipeline with its own
key, to an adapter of the same name; then neither can reach the other's files, jobs,
events, checkpoints, result files, evaluation or adapter on any route of the OpenAPI
description (404, as for an id that does not exist), an archived project's key and a
deleted key get 401 on both replicas, limits answer 429 with OpenAI's headers and recover,
and the audit log holds each mutating call."""

import json
import logging
import time

import httpx
import openai
import pytest

from tests.conftest import EMAIL_ROWS, EMAIL_TEMPLATE
from tests.support.services import serve_inference, start_gateway
from trainer_service.server import serve as serve_trainer
from trainer_service.settings import TrainerSettings
from tuneyard.cli import main as cli
from tuneyard.statuses import TERMINAL

pytestmark = [pytest.mark.projects, pytest.mark.integration]

ROOT, READER = "root-key", "reader-key"
TOKEN = "service-token-for-the-projects-tests"
WINDOW_S = 3.0  # the rate limits' window, shortened from a minute
TUNEYARD = {
    "template": EMAIL_TEMPLATE,
    "lora": {"r": 4, "alpha": 8},
    "training": {"max_steps": 4, "save_steps": 2, "batch_size": 2, "max_seq_length": 128},
    "parity_gate": {"prompts": 0},
}
MISSING = {
    "file_id": "file-0123456789abcdef01234567",
    "job_id": "ftjob-0123456789abcdef01234567",
    "evaluation_id": "eval-0123456789abcdef01234567",
    "model": "proj_0123456789abcdef:nothing",
    "adapter_id": "proj_0123456789abcdef:nothing",
    "step": "2",
    "fmt": "html",
}


def _auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


class Records(logging.Handler):
    """Every log record of the services (they run in this process), for the check that no
    key is ever logged."""

    SERVICES = ("gateway", "trainer_service", "inference_service", "tuneyard", "uvicorn")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        if record.name.startswith(self.SERVICES):
            self.lines.append(f"{record.getMessage()} {record.exc_text or ''}")


@pytest.fixture(scope="module")
def logged():
    records, root = Records(), logging.getLogger()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    yield records
    root.removeHandler(records)
    root.setLevel(level)


@pytest.fixture(scope="module")
def stack(tiny_llama, tmp_path_factory, logged):
    home = tmp_path_factory.mktemp("home")
    inference = serve_inference(
        tiny_llama, home / "adapters", service_tokens=[TOKEN], default_max_new_tokens=4
    )
    trainer = serve_trainer(
        TrainerSettings(
            home=home,
            trainer_port=0,
            trainer_metrics_port=0,
            trainer_device="cpu",
            inference_addr=f"127.0.0.1:{inference.port}",
            service_tokens=[TOKEN],
            rate_limit_window_s=WINDOW_S,
            max_concurrent_jobs=2,
        )
    )
    backends = dict(
        inference_addr=f"127.0.0.1:{inference.port}",
        trainer_addr=f"127.0.0.1:{trainer.port}",
        api_keys=[READER],
        admin_keys=[ROOT],
        service_tokens=[TOKEN],
    )
    replicas = [start_gateway(**backends), start_gateway(**backends)]
    yield replicas
    for gateway in replicas:
        gateway.stop()
    trainer.stop(grace=1)
    inference.stop(grace=0)


@pytest.fixture(scope="module")
def admin(stack):
    with httpx.Client(base_url=stack[0].url, headers=_auth(ROOT), timeout=60) as client:
        yield client


def new_project(admin, name: str) -> tuple[str, str]:
    """(project id, a member key of it)."""
    project = admin.post("/v1/organization/projects", json={"name": name}).json()
    account = admin.post(
        f"/v1/organization/projects/{project['id']}/service_accounts", json={"name": "ci"}
    ).json()
    return project["id"], account["api_key"]["value"]


def run_pipeline(url: str, key: str, model: str, data_path) -> dict:
    """The OpenAI fine-tuning pipeline, unchanged but for the key: upload, create, follow."""
    oai = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    training_file = oai.files.create(file=data_path.open("rb"), purpose="fine-tune").id
    job = oai.fine_tuning.jobs.create(
        model=model,
        training_file=training_file,
        suffix="marketing-email",
        extra_body={"tuneyard": TUNEYARD},
    )
    deadline = time.monotonic() + 300
    while job.status not in TERMINAL:
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.5)
        job = oai.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    return {"file_id": training_file, "job": job}


@pytest.fixture(scope="module")
def teams(stack, admin, tiny_llama, tmp_path_factory):
    """Two projects, each with its pipeline run, and an evaluation of the second's adapter."""
    data = tmp_path_factory.mktemp("data") / "emails.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in EMAIL_ROWS))
    found = {}
    for team in ("a", "b"):
        project, key = new_project(admin, f"team {team}")
        run = run_pipeline(stack[0].url, key, str(tiny_llama), data)
        found[team] = {"project": project, "key": key, **run}
    b = found["b"]
    with httpx.Client(base_url=stack[0].url, headers=_auth(b["key"]), timeout=60) as http:
        evaluation = http.post(
            "/v1/evaluations",
            json={
                "adapter_id": "marketing-email",
                "eval_file_id": b["file_id"],
                "arms": ["adapter"],
                "limit": 2,
                "max_new_tokens": 2,
            },
        )
        assert evaluation.status_code == 200, evaluation.text
        b["evaluation_id"] = evaluation.json()["id"]
        deadline = time.monotonic() + 120
        while (status := http.get(f"/v1/evaluations/{b['evaluation_id']}").json())[
            "status"
        ] not in TERMINAL:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert status["status"] == "succeeded", status
    return found


def ids_of(team: dict) -> dict[str, str]:
    job = team["job"]
    return {
        "file_id": team["file_id"],
        "job_id": job.id,
        "evaluation_id": team["evaluation_id"],
        "model": job.fine_tuned_model,
        "adapter_id": job.fine_tuned_model,
        "step": "2",
        "fmt": "html",
    }


# --- the admin API -----------------------------------------------------------------------
def test_projects_and_keys_in_openai_s_admin_shapes(stack, admin):
    created = admin.post("/v1/organization/projects", json={"name": "shapes"}).json()
    assert created["object"] == "organization.project" and created["id"].startswith("proj_")
    assert created["status"] == "active" and created["archived_at"] is None
    assert created["name"] == "shapes" and created["created_at"] > 0
    pid = created["id"]
    renamed = admin.post(f"/v1/organization/projects/{pid}", json={"name": "renamed"}).json()
    assert renamed["name"] == "renamed" and renamed["id"] == pid
    assert admin.get(f"/v1/organization/projects/{pid}").json() == renamed
    listed = admin.get("/v1/organization/projects", params={"limit": 100}).json()
    assert listed["object"] == "list" and pid in [p["id"] for p in listed["data"]]
    assert listed["data"][0]["id"] == "proj_default" and listed["first_id"] == "proj_default"
    page = admin.get("/v1/organization/projects", params={"limit": 1}).json()
    assert len(page["data"]) == 1 and page["has_more"]
    after = admin.get("/v1/organization/projects", params={"after": page["last_id"]}).json()
    assert page["last_id"] not in [p["id"] for p in after["data"]]

    account = admin.post(
        f"/v1/organization/projects/{pid}/service_accounts", json={"name": "deployer"}
    ).json()
    assert account["object"] == "organization.project.service_account"
    assert account["role"] == "member" and account["name"] == "deployer"
    key = account["api_key"]
    assert key["object"] == "organization.project.service_account.api_key"
    assert key["value"].startswith("sk-proj-") and key["id"].startswith("key_")
    keys = admin.get(f"/v1/organization/projects/{pid}/api_keys").json()["data"]
    assert [k["id"] for k in keys] == [key["id"]]
    assert keys[0]["object"] == "organization.project.api_key"
    assert key["value"] not in str(keys) and keys[0]["redacted_value"].endswith(key["value"][-4:])
    assert keys[0]["owner"]["service_account"]["id"] == account["id"]
    accounts = admin.get(f"/v1/organization/projects/{pid}/service_accounts").json()["data"]
    assert [a["id"] for a in accounts] == [account["id"]] and "api_key" not in accounts[0]
    gone = admin.delete(f"/v1/organization/projects/{pid}/service_accounts/{account['id']}")
    assert gone.json() == {
        "object": "organization.project.service_account.deleted",
        "id": account["id"],
        "deleted": True,
    }
    assert admin.get(f"/v1/organization/projects/{pid}/api_keys").json()["data"] == []


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "other": 1}, "other"),
        ({"name": 3}, "name"),
    ],
)
def test_a_bad_project_body_is_400_naming_the_field(admin, body, param):
    response = admin.post("/v1/organization/projects", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_only_admin_keys_reach_the_admin_api(stack, admin, teams):
    for key in (teams["a"]["key"], READER):
        for method, path in (
            ("GET", "/v1/organization/projects"),
            ("POST", "/v1/organization/projects"),
            ("GET", f"/v1/organization/projects/{teams['a']['project']}/api_keys"),
            ("GET", "/v1/organization/audit_logs"),
        ):
            response = httpx.request(
                method, stack[0].url + path, headers=_auth(key), json={"name": "x"}, timeout=30
            )
            assert response.status_code == 403, (key, method, path, response.text)
    assert admin.get("/v1/organization/projects/proj_0123456789abcdef").status_code == 404


# --- each project's pipeline, and the wall between them ----------------------------------
def test_each_project_trains_its_own_adapter_of_the_same_name(stack, teams):
    a, b = teams["a"], teams["b"]
    assert a["job"].fine_tuned_model == f"{a['project']}:marketing-email@1"
    assert b["job"].fine_tuned_model == f"{b['project']}:marketing-email@1"
    for team in (a, b):
        oai = openai.OpenAI(base_url=f"{stack[0].url}/v1", api_key=team["key"], max_retries=0)
        # The bare name means the caller's own adapter.
        assert oai.models.retrieve("marketing-email").id == f"{team['project']}:marketing-email"
        models = [m.id for m in oai.models.list()]
        assert f"{team['project']}:marketing-email" in models
        other = b if team is a else a
        assert not any(other["project"] in m for m in models)
        answer = oai.completions.create(model="marketing-email", prompt="Hello", max_tokens=2)
        assert answer.usage.completion_tokens > 0
    # A project key publishes its own job's checkpoint, as its next version.
    published = httpx.post(
        f"{stack[0].url}/v1/fine_tuning/jobs/{a['job'].id}/checkpoints/2/publish",
        headers=_auth(a["key"]),
        timeout=60,
    )
    assert published.status_code == 200, published.text
    assert published.json()["tuneyard"]["published_as"] == f"{a['project']}:marketing-email@2"


def _status(url: str, key: str, method: str, path: str, **kwargs) -> int:
    return httpx.request(method, url + path, headers=_auth(key), timeout=60, **kwargs).status_code


def test_no_route_reaches_another_project_s_objects(stack, teams):
    """Every operation of the OpenAPI description with a path parameter, called with
    project a's key on project b's ids, answers as for ids that do not exist (404; 403 on
    the admin-only routes, whatever the id); b's key on the same ids is not refused."""
    url, a, b = stack[0].url, teams["a"], teams["b"]
    theirs = ids_of(b)
    schema = httpx.get(f"{url}/openapi.json", timeout=30).json()
    checked = 0
    for path, operations in schema["paths"].items():
        if "{" not in path or path.startswith("/v1/organization"):
            continue
        for method in operations:
            names = [p.split("}")[0].split(":")[0] for p in path.split("{")[1:]]
            assert set(names) <= set(MISSING), f"add {names} to this test: {method} {path}"
            on_theirs = path.format(**{n: theirs[n] for n in names})
            on_missing = path.format(**{n: MISSING[n] for n in names})
            body = {"json": {}} if method == "post" else {}
            got = _status(url, a["key"], method.upper(), on_theirs, **body)
            nothing = _status(url, a["key"], method.upper(), on_missing, **body)
            assert got == nothing and got in (403, 404), (method, path, got, nothing)
            checked += 1
    assert checked >= 15
    # What a was refused, b may read (so the 404s above are about the owner).
    for path in (
        f"/v1/files/{theirs['file_id']}",
        f"/v1/files/{theirs['file_id']}/content",
        f"/v1/fine_tuning/jobs/{theirs['job_id']}",
        f"/v1/fine_tuning/jobs/{theirs['job_id']}/events",
        f"/v1/fine_tuning/jobs/{theirs['job_id']}/checkpoints",
        f"/v1/evaluations/{theirs['evaluation_id']}",
        f"/v1/evaluations/{theirs['evaluation_id']}/report.html",
        f"/v1/models/{theirs['model']}",
        f"/v1/files/{b['job'].result_files[0]}/content",
    ):
        assert _status(url, b["key"], "GET", path) == 200, path
        assert _status(url, a["key"], "GET", path) == 404, path


def test_no_body_reaches_another_project_s_objects(stack, teams, tiny_llama):
    """The routes that name objects in their body: generation on every API, a job on the
    other's file, an evaluation of the other's adapter, job or file."""
    url, a, b = stack[0].url, teams["a"], teams["b"]
    model = b["job"].fine_tuned_model
    for path, body in (
        ("/v1/completions", {"model": model, "prompt": "x", "max_tokens": 1}),
        ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "x"}]}),
        ("/generate", {"inputs": "x", "parameters": {"adapter_id": model}}),
        ("/generate_stream", {"inputs": "x", "parameters": {"adapter_id": model}}),
        ("/", {"inputs": "x", "parameters": {"adapter_id": model}}),
        (
            "/v1/fine_tuning/jobs",
            {"model": str(tiny_llama), "training_file": b["file_id"], "tuneyard": TUNEYARD},
        ),
        ("/v1/evaluations", {"adapter_id": model}),
        ("/v1/evaluations", {"job_id": b["job"].id}),
        ("/v1/evaluations", {"adapter_id": "marketing-email", "eval_file_id": b["file_id"]}),
    ):
        response = httpx.post(url + path, headers=_auth(a["key"]), json=body, timeout=60)
        assert response.status_code == 404, (path, body, response.text)
    # A job may not name another project's adapter either.
    response = httpx.post(
        url + "/v1/fine_tuning/jobs",
        headers=_auth(a["key"]),
        json={
            "model": str(tiny_llama),
            "training_file": a["file_id"],
            "suffix": f"{b['project']}:stolen",
            "tuneyard": TUNEYARD,
        },
        timeout=60,
    )
    assert response.status_code == 400 and "another project" in response.text


def test_lists_hold_only_the_callers_project(stack, admin, teams):
    url, a, b = stack[0].url, teams["a"], teams["b"]
    for team, other in ((a, b), (b, a)):
        with httpx.Client(base_url=url, headers=_auth(team["key"]), timeout=60) as http:
            files = {f["id"] for f in http.get("/v1/files").json()["data"]}
            jobs = {j["id"] for j in http.get("/v1/fine_tuning/jobs").json()["data"]}
            adapters = {x["name"] for x in http.get("/v1/adapters").json()["data"]}
            evaluations = {e["id"] for e in http.get("/v1/evaluations").json()["data"]}
        assert team["file_id"] in files and other["file_id"] not in files
        assert set(team["job"].result_files) <= files
        assert not set(other["job"].result_files) & files
        assert jobs == {team["job"].id}
        assert adapters == {f"{team['project']}:marketing-email"}
        assert other.get("evaluation_id") not in evaluations
    # An admin sees both, and narrows itself to one with OpenAI-Project.
    everything = {j["id"] for j in admin.get("/v1/fine_tuning/jobs").json()["data"]}
    assert {a["job"].id, b["job"].id} <= everything
    narrowed = admin.get("/v1/fine_tuning/jobs", headers={"OpenAI-Project": a["project"]})
    assert {j["id"] for j in narrowed.json()["data"]} == {a["job"].id}


def test_a_plain_key_reads_the_default_project_only(stack, teams):
    http = httpx.Client(base_url=stack[0].url, headers=_auth(READER), timeout=60)
    assert http.get(f"/v1/fine_tuning/jobs/{teams['a']['job'].id}").status_code == 404
    assert http.get("/v1/fine_tuning/jobs").json()["data"] == []
    upload = http.post(
        "/v1/files", files={"file": ("x.jsonl", b"{}\n")}, data={"purpose": "fine-tune"}
    )
    assert upload.status_code == 403
    http.close()


# --- keys that stop working --------------------------------------------------------------
def test_a_deleted_key_is_refused_on_every_replica_within_a_second(stack, admin):
    project, key = new_project(admin, "short-lived")
    for gateway in stack:  # each replica has checked the key and keeps its answer
        assert _status(gateway.url, key, "GET", "/v1/files") == 200
    key_id = admin.get(f"/v1/organization/projects/{project}/api_keys").json()["data"][0]["id"]
    deleted = admin.delete(f"/v1/organization/projects/{project}/api_keys/{key_id}")
    assert deleted.json() == {
        "object": "organization.project.api_key.deleted",
        "id": key_id,
        "deleted": True,
    }
    assert _status(stack[0].url, key, "GET", "/v1/files") == 401  # this replica: at once
    time.sleep(1.0)
    assert _status(stack[1].url, key, "GET", "/v1/files") == 401  # the other: within 1 s


def test_an_archived_project_s_keys_stop_and_its_adapters_are_not_served(stack, admin, teams):
    project, key = new_project(admin, "archived soon")
    assert _status(stack[1].url, key, "GET", "/v1/files") == 200
    archived = admin.post(f"/v1/organization/projects/{project}/archive").json()
    assert archived["status"] == "archived" and archived["archived_at"]
    time.sleep(1.0)
    for gateway in stack:
        response = httpx.get(gateway.url + "/v1/files", headers=_auth(key), timeout=30)
        assert response.status_code == 401, response.text
    assert admin.get(f"/v1/organization/projects/{project}").json()["status"] == "archived"
    listed = admin.get("/v1/organization/projects", params={"limit": 100}).json()["data"]
    assert project not in [p["id"] for p in listed]


# --- limits ------------------------------------------------------------------------------
def test_over_its_request_limit_a_project_gets_429_with_openai_s_headers_then_recovers(
    stack, admin, teams
):
    a = teams["a"]
    limits = admin.get(f"/v1/organization/projects/{a['project']}/rate_limits").json()["data"]
    model_limit = next(x for x in limits if x["model"])
    assert model_limit["object"] == "project.rate_limit" and model_limit["id"].startswith("rl-")
    assert model_limit["max_requests_per_1_minute"] is None
    assert [x["id"] for x in limits][-1] == "rl-fine-tuning"
    updated = admin.post(
        f"/v1/organization/projects/{a['project']}/rate_limits/{model_limit['id']}",
        json={"max_requests_per_1_minute": 2},
    ).json()
    assert updated["max_requests_per_1_minute"] == 2
    time.sleep(1.1)  # the other replica learns that a has a limit now
    bad = admin.post(
        f"/v1/organization/projects/{a['project']}/rate_limits/{model_limit['id']}",
        json={"max_requests_per_1_minute": -1},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_requests_per_1_minute"

    body = {"model": "marketing-email", "prompt": "x", "max_tokens": 1}
    # Wait for a fresh window, then spend it across both replicas: one count, not two.
    time.sleep(WINDOW_S - time.time() % WINDOW_S + 0.05)
    answers = [
        httpx.post(g.url + "/v1/completions", headers=_auth(a["key"]), json=body, timeout=60)
        for g in (stack[0], stack[1], stack[1])
    ]
    assert [r.status_code for r in answers] == [200, 200, 429], [r.text for r in answers]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "2"
    assert answers[0].headers["x-ratelimit-remaining-requests"] == "1"
    refused = answers[2]
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    assert 1 <= int(refused.headers["retry-after"]) <= WINDOW_S
    # Project b is not limited by a's limit.
    other = httpx.post(
        stack[1].url + "/v1/completions", headers=_auth(teams["b"]["key"]), json=body
    )
    assert other.status_code == 200 and "x-ratelimit-limit-requests" not in other.headers
    # The openai client waits as Retry-After says and gets through.
    oai = openai.OpenAI(base_url=f"{stack[1].url}/v1", api_key=a["key"], max_retries=3)
    assert oai.completions.create(**body).usage.completion_tokens > 0
    admin.post(
        f"/v1/organization/projects/{a['project']}/rate_limits/{model_limit['id']}",
        json={"max_requests_per_1_minute": 0},
    )


def test_over_its_token_limit_a_project_gets_429_until_the_window_ends(stack, admin, teams):
    b = teams["b"]
    limit_id = admin.get(f"/v1/organization/projects/{b['project']}/rate_limits").json()["data"][0][
        "id"
    ]
    path = f"/v1/organization/projects/{b['project']}/rate_limits/{limit_id}"
    admin.post(path, json={"max_tokens_per_1_minute": 3})
    time.sleep(1.1)  # every replica learns that b has a limit now
    body = {"model": "marketing-email", "prompt": "a longer prompt", "max_tokens": 2}
    time.sleep(WINDOW_S - time.time() % WINDOW_S + 0.05)
    url = stack[0].url + "/v1/completions"
    first = httpx.post(url, headers=_auth(b["key"]), json=body, timeout=60)
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 3
    time.sleep(0.3)  # the used tokens are added just after the answer
    second = httpx.post(url, headers=_auth(b["key"]), json=body, timeout=60)
    assert second.status_code == 429 and second.headers["x-ratelimit-remaining-tokens"] == "0"
    assert "tokens per minute" in second.json()["error"]["message"]
    time.sleep(int(second.headers["retry-after"]) + 0.1)
    assert httpx.post(url, headers=_auth(b["key"]), json=body, timeout=60).status_code == 200
    admin.post(path, json={"max_tokens_per_1_minute": 0})
    metrics = httpx.get(stack[0].url + "/metrics").text
    assert f'tuneyard_gateway_rate_limited_total{{project="{b["project"]}"}}' in metrics


def test_a_project_at_its_concurrent_jobs_limit_gets_429_on_create(stack, admin, teams, tiny_llama):
    a = teams["a"]
    path = f"/v1/organization/projects/{a['project']}/rate_limits/rl-fine-tuning"
    assert admin.post(path, json={"max_concurrent_jobs": 0}).status_code == 200
    admin.post(path, json={"max_concurrent_jobs": 1})
    body = {"model": str(tiny_llama), "training_file": a["file_id"], "tuneyard": TUNEYARD}
    with httpx.Client(base_url=stack[0].url, headers=_auth(a["key"]), timeout=60) as http:
        first = http.post("/v1/fine_tuning/jobs", json=body)
        assert first.status_code == 200, first.text
        second = http.post("/v1/fine_tuning/jobs", json=body)
        assert second.status_code == 429 and "max_concurrent_jobs" in second.text
        # Another project is not held by a's limit.
        other = httpx.post(
            stack[0].url + "/v1/fine_tuning/jobs/validate",
            headers=_auth(teams["b"]["key"]),
            json={
                "model": str(tiny_llama),
                "training_file": teams["b"]["file_id"],
                "tuneyard": TUNEYARD,
            },
            timeout=60,
        )
        assert other.status_code == 200
        http.post(f"/v1/fine_tuning/jobs/{first.json()['id']}/cancel")
    admin.post(path, json={"max_concurrent_jobs": 0})


def test_a_project_past_its_trained_tokens_per_day_gets_429_on_create(
    stack, admin, teams, tiny_llama
):
    b = teams["b"]
    assert b["job"].trained_tokens > 1
    path = f"/v1/organization/projects/{b['project']}/rate_limits/rl-fine-tuning"
    admin.post(path, json={"max_trained_tokens_per_1_day": 1})
    body = {"model": str(tiny_llama), "training_file": b["file_id"], "tuneyard": TUNEYARD}
    refused = httpx.post(
        stack[1].url + "/v1/fine_tuning/jobs", headers=_auth(b["key"]), json=body, timeout=60
    )
    assert refused.status_code == 429, refused.text
    assert "max_trained_tokens_per_1_day" in refused.json()["error"]["message"]
    admin.post(path, json={"max_trained_tokens_per_1_day": 0})


# --- the audit log -----------------------------------------------------------------------
def test_the_audit_log_has_each_mutating_call_with_who_and_how_it_ended(stack, admin, teams):
    a, b = teams["a"], teams["b"]
    refused = httpx.post(
        f"{stack[1].url}/v1/fine_tuning/jobs/{b['job'].id}/cancel", headers=_auth(a["key"])
    )
    assert refused.status_code == 404
    for key in (a["key"], READER):  # tries at the admin API are audited as refused
        tried = httpx.post(
            f"{stack[0].url}/v1/organization/projects", headers=_auth(key), json={"name": "x"}
        )
        assert tried.status_code == 403
    a_key_id = admin.get(f"/v1/organization/projects/{a['project']}/api_keys").json()["data"][0][
        "id"
    ]
    log = admin.get(
        "/v1/organization/audit_logs", params={"project_ids[]": a["project"], "limit": 100}
    ).json()
    assert log["object"] == "list"
    kinds = [(e["type"], e["result"]["outcome"]) for e in log["data"]]
    assert ("file.created", "success") in kinds
    assert ("fine_tuning.job.created", "success") in kinds
    assert ("fine_tuning.job.cancelled", "failure") in kinds
    newest = next(e for e in log["data"] if e["type"] == "fine_tuning.job.cancelled")
    assert newest["actor"]["api_key"]["id"] == a_key_id
    assert newest["project"]["id"] == a["project"]
    assert newest["request"] == {
        "method": "POST",
        "path": f"/v1/fine_tuning/jobs/{b['job'].id}/cancel",
    }
    assert newest["result"]["status_code"] == 404
    assert a["key"] not in str(log)
    # The admin's own calls are there too, and each event type can be asked for.
    created = admin.get(
        "/v1/organization/audit_logs", params={"event_types[]": "project.created", "limit": 100}
    ).json()["data"]
    made = [e for e in created if e["result"]["outcome"] == "success"]
    assert len(made) >= 2 and {e["actor"]["api_key"]["id"] for e in made} == {"key_env_admin_0"}
    # The project keys' tries were refused, and are there as such.
    tried = {e["actor"]["api_key"]["id"] for e in created if e["result"]["status_code"] == 403}
    assert a_key_id in tried and "key_env_0" in tried
    for query in ({"project_ids[]": "true"}, {"event_types[]": "2.5e+107"}):
        bad = admin.get("/v1/organization/audit_logs", params=query)
        assert bad.status_code == 400
        assert bad.json()["error"]["param"].startswith(next(iter(query)))
    # Reads are not audited.
    assert not any(
        e["request"]["path"] == "/v1/files" and e["request"]["method"] == "GET" for e in log["data"]
    )
    metrics = httpx.get(stack[0].url + "/metrics").text
    assert (
        f'tuneyard_gateway_audit_events_total{{project="{a["project"]}",result="success"}}'
        in metrics
    )


# --- the CLI -----------------------------------------------------------------------------
def test_the_cli_creates_a_project_and_rotates_and_revokes_its_keys(stack, capsys):
    url = stack[0].url
    admin = ["--url", url, "--api-key", ROOT, "projects"]
    assert cli([*admin, "create", "from the cli"]) == 0
    project = json.loads(capsys.readouterr().out)
    assert project["object"] == "organization.project" and project["name"] == "from the cli"
    assert cli([*admin, "list"]) == 0
    assert f"{project['id']}\tactive\tfrom the cli" in capsys.readouterr().out

    assert cli([*admin, "keys", "create", project["id"], "--name", "deployer"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()  # stdout holds the key alone
    assert key.startswith("sk-proj-") and "deployer" in out.err
    assert _status(url, key, "GET", "/v1/files") == 200
    assert cli([*admin, "keys", "list", project["id"]]) == 0
    listed = capsys.readouterr().out
    assert key not in listed and key[-4:] in listed and "deployer" in listed
    key_id = listed.split("\t")[0]

    assert cli([*admin, "keys", "rotate", project["id"], key_id]) == 0
    new_key = capsys.readouterr().out.strip()
    assert new_key != key and _status(url, new_key, "GET", "/v1/files") == 200
    assert _status(url, key, "GET", "/v1/files") == 401
    assert cli([*admin, "keys", "list", project["id"]]) == 0
    new_id = capsys.readouterr().out.split("\t")[0]
    assert cli([*admin, "keys", "revoke", project["id"], new_id]) == 0
    capsys.readouterr()
    assert _status(url, new_key, "GET", "/v1/files") == 401

    assert cli([*admin, "limits", project["id"], "rl-fine-tuning", "--concurrent-jobs", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["max_concurrent_jobs"] == 2
    assert cli([*admin, "archive", project["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "archived"
    # Without an admin key the CLI says why and exits 2.
    assert cli(["--url", url, "--api-key", READER, "projects", "list"]) == 2
    assert "403" in capsys.readouterr().err


def test_no_key_is_ever_logged(logged, teams):
    """Last in this file: after every call above, none of the keys is in any log line."""
    assert logged.lines  # the services did log (down to DEBUG)
    for key in (teams["a"]["key"], teams["b"]["key"], ROOT, READER, TOKEN):
        assert not [line for line in logged.lines if key in line], key
