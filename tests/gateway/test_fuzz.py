"""Property-based fuzzing of the gateway against its own published API description.

Schemathesis reads `/openapi.json` from a live gateway (API keys configured) in front of the
real trainer and inference services on a tiny model, and sends every operation what the
schema allows (positive) and what it forbids (negative). Then the training API is walked as
a client would: once along the happy path (upload a JSONL file, validate and create a job,
follow it to the end, publish a checkpoint, evaluate the adapter, fetch the reports,
generate with it), and as a Hypothesis state machine that interleaves uploads, jobs and
evaluations on what it created. Every answer must be no 5xx and conform to the schema: a
documented status code and content type, a body matching the documented schema (error
models included); negative input must be refused.

Bounded to a few minutes on 2 cores; each test prints the requests sent so far, the 5xx
seen and the payload classes covered. The cases are the same on every run; with
TUNEYARD_FUZZ_RANDOM=1 they are new ones, and TUNEYARD_FUZZ_SCALE=<x> sends x times as many.
"""

import json
import os
import time
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import EMAIL_ROWS, EMAIL_TEMPLATE
from tests.support.adapters import make_adapter
from tests.support.services import serve_inference, start_gateway
from trainer_service.server import serve as serve_trainer
from trainer_service.settings import TrainerSettings
from tuneyard.statuses import TERMINAL

pytestmark = pytest.mark.slow

USER, ADMIN = "user1", "admin1"
# A second project's key, made through the admin API once the stack is up (see `stack`).
SECOND: dict[str, str] = {}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Examples per operation and mode.
EXAMPLES = {GenerationMode.POSITIVE: 100, GenerationMode.NEGATIVE: 40}
SCALE = float(os.environ.get("TUNEYARD_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("TUNEYARD_FUZZ_RANDOM", "") not in ("", "0")


def _settings(max_examples: int, **kwargs) -> settings:
    return settings(
        max_examples=max(1, int(max_examples * SCALE)),
        deadline=None,
        database=None,
        derandomize=not RANDOM,
        suppress_health_check=list(HealthCheck),
        **kwargs,
    )


class Tally:
    """What was sent and what came back, for the summary each test prints."""

    def __init__(self):
        self.requests = 0
        self.seconds = 0.0
        self.errors_before = 0
        self.server_errors: list[str] = []
        self.statuses: Counter = Counter()
        self.classes: Counter = Counter()

    def start_test(self) -> None:
        self.errors_before = len(self.server_errors)

    @property
    def new_server_errors(self) -> list[str]:
        """The 5xx seen since the current test started."""
        return self.server_errors[self.errors_before :]

    def record(self, payload_class: str, case, response) -> None:
        self.requests += 1
        self.statuses[response.status_code] += 1
        self.classes[payload_class] += 1
        if response.status_code >= 500:
            self.server_errors.append(
                f"{case.method} {case.formatted_path} -> {response.status_code}: "
                f"{response.text[:300]}"
            )

    def summary(self) -> str:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return (
            f"fuzz: {self.requests} requests in {self.seconds:.0f} s, "
            f"{len(self.server_errors)} 5xx; statuses {{{statuses}}}; "
            f"{len(self.classes)} payload classes: "
            + ", ".join(f"{c} ({n})" for c, n in sorted(self.classes.items()))
        )


@pytest.fixture(scope="module")
def stack(tiny_llama, tmp_path_factory):
    """(gateway URL, base model), the gateway in front of a real trainer and inference
    service; contexts kept short, so that anything the schema allows answers quickly."""
    home = tmp_path_factory.mktemp("home")
    make_adapter(tiny_llama, home / "adapters", "emails")
    inference = serve_inference(
        tiny_llama,
        home / "adapters",
        max_input_tokens=200,
        max_total_tokens=256,
        default_max_new_tokens=4,
        max_queue=256,
    )
    trainer = serve_trainer(
        TrainerSettings(
            home=home,
            trainer_port=0,
            trainer_metrics_port=0,
            trainer_device="cpu",
            inference_addr=f"127.0.0.1:{inference.port}",
            eval_request_timeout_s=30,
        )
    )
    gateway = start_gateway(
        inference_addr=f"127.0.0.1:{inference.port}",
        trainer_addr=f"127.0.0.1:{trainer.port}",
        api_keys=[USER],
        admin_keys=[ADMIN],
        # An event stream of a job that is still running ends after this long.
        watch_timeout_s=3,
    )
    project = httpx.post(
        f"{gateway.url}/v1/organization/projects", json={"name": "second"}, headers=_auth(ADMIN)
    ).json()
    account = httpx.post(
        f"{gateway.url}/v1/organization/projects/{project['id']}/service_accounts",
        json={"name": "fuzz"},
        headers=_auth(ADMIN),
    ).json()
    SECOND["key"] = account["api_key"]["value"]
    yield gateway.url, str(tiny_llama)
    gateway.stop()
    trainer.stop(grace=1)
    inference.stop(grace=0)


@pytest.fixture(scope="module")
def api(stack):
    url, _ = stack
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


@pytest.fixture(scope="module")
def module_tally():
    return Tally()


@pytest.fixture
def tally(module_tally, capsys):
    """The module's tally; each test prints it (so far) when it ends, even under -q."""
    start = time.monotonic()
    module_tally.start_test()
    yield module_tally
    module_tally.seconds += time.monotonic() - start
    with capsys.disabled():
        print("\n" + module_tally.summary())


def _auth(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


# --- stateless: every operation, what the schema allows and what it forbids ---------------


def _fuzz(operation, mode: GenerationMode, url: str, tally: Tally) -> None:
    label = f"{mode.value} {operation.method.upper()} {operation.path}"
    # Negative input is sent with the admin key, so that it meets the validation.
    keys = [*[ADMIN] * 6, SECOND["key"], SECOND["key"], USER, None] if mode.is_positive else [ADMIN]
    checks = CHECKS if mode.is_positive else [*CHECKS, negative_data_rejection]

    @given(case=operation.as_strategy(generation_mode=mode), key=st.sampled_from(keys))
    @_settings(EXAMPLES[mode])
    def run(case, key):
        # Schemathesis makes up an Authorization header too: ours replaces it, unless the
        # case is about that header (left out or malformed: a negative case).
        mutations = (getattr(case.meta.phase.data, "mutations", None) or []) if case.meta else []
        about_auth = "Authorization" in {getattr(m, "parameter", None) for m in mutations}
        headers = {} if about_auth else _auth(key)
        response = case.call(base_url=url, headers=headers, timeout=60)
        tally.record(label, case, response)
        if _not_http(response):
            return
        case.validate_response(response, checks=checks, headers=headers)

    try:
        run()
    except Unsatisfiable:  # nothing to negate: the operation takes no input
        assert not mode.is_positive


def _not_http(response) -> bool:
    """uvicorn's own answer to bytes its parser refuses (a made-up header such as
    `Content-Length: 0..0`): the request never reached the gateway's app, whose answers
    are the ones the schema documents."""
    return response.status_code == 400 and response.text == "Invalid HTTP request received."


def test_every_operation_with_generated_input(stack, api, tally):
    url, _ = stack
    for result in api.get_all_operations():
        for mode in EXAMPLES:
            _fuzz(result.ok(), mode, url, tally)
    assert not tally.new_server_errors, tally.new_server_errors


# --- as a client: files, jobs and evaluations ----------------------------------------------


class Client:
    """Sends as a client does (httpx) and checks each answer against the operation."""

    def __init__(self, api, url: str, tally: Tally):
        self.api = api
        self.http = httpx.Client(base_url=url, timeout=60)
        self.tally = tally

    def send(
        self,
        method: str,
        path: str,
        payload_class: str,
        *,
        key: str | None = ADMIN,
        path_parameters: dict | None = None,
        query: dict | None = None,
        body=None,
        files: dict | None = None,
    ) -> httpx.Response:
        """`path` as the schema names it ("/v1/files/{file_id}"); with `files`, `body`
        holds the other form fields."""
        operation = self.api[path][method]
        if files is not None:
            case = operation.Case(body=body, media_type="multipart/form-data")
            content = {"data": body, "files": files}
        else:
            extra = {} if body is None else {"body": body}
            case = operation.Case(path_parameters=path_parameters or {}, query=query, **extra)
            content = {"json": body}
        headers = _auth(key)
        request = self.http.build_request(
            method, case.formatted_path, params=query, headers=headers, **content
        )
        request.read()  # a multipart body is a stream; the checks read what was sent
        response = self.http.send(request)
        self.tally.record(payload_class, case, response)
        case.validate_response(response, checks=CHECKS, headers=headers)
        return response

    def upload(self, rows: list[dict], payload_class: str) -> str:
        content = "".join(json.dumps(r) + "\n" for r in rows).encode()
        response = self.send(
            "POST",
            "/v1/files",
            payload_class,
            body={"purpose": "fine-tune"},
            files={"file": ("emails.jsonl", content)},
        )
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def wait(self, path: str, name: str, value: str, payload_class: str, timeout: float) -> dict:
        """Poll a job or an evaluation until it ends (or `timeout`); its last state."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.send("GET", path, payload_class, path_parameters={name: value})
            assert response.status_code == 200, response.text
            if response.json()["status"] in TERMINAL or time.monotonic() > deadline:
                return response.json()
            time.sleep(0.5)

    def close(self) -> None:
        self.http.close()


def job_body(base_model: str, file_id: str, suffix: str, **training) -> dict:
    return {
        "model": base_model,
        "training_file": file_id,
        "suffix": suffix,
        "tuneyard": {
            "template": EMAIL_TEMPLATE,
            "lora": {"r": 2, "alpha": 4},
            "training": {"max_steps": 1, "max_seq_length": 200, **training},
        },
    }


def test_the_happy_path_through_files_jobs_and_evaluations(stack, api, tally):
    url, base_model = stack
    client = Client(api, url, tally)
    send = client.send
    file_id = client.upload(EMAIL_ROWS, "happy upload a JSONL file")
    assert send("GET", "/v1/files", "happy list files").json()["data"]
    send("GET", "/v1/files/{file_id}", "happy get a file", path_parameters={"file_id": file_id})

    body = job_body(base_model, file_id, "happy", max_steps=2, save_steps=1, batch_size=2)
    report = send("POST", "/v1/fine_tuning/jobs/validate", "happy validate a job", body=body)
    assert report.json()["ok"], report.text
    job = send("POST", "/v1/fine_tuning/jobs", "happy create a job", body=body).json()
    job = client.wait("/v1/fine_tuning/jobs/{job_id}", "job_id", job["id"], "happy get a job", 240)
    assert job["status"] == "succeeded", job
    ids = {"job_id": job["id"]}
    for query in ({}, {"stream": True}):
        events = send(
            "GET",
            "/v1/fine_tuning/jobs/{job_id}/events",
            f"happy job events{' (stream)' if query else ''}",
            path_parameters=ids,
            query=query,
        )
        assert events.status_code == 200, events.text
    checkpoints = send(
        "GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints", "happy list checkpoints",
        path_parameters=ids,
    ).json()["data"]  # fmt: skip
    assert [c["step_number"] for c in checkpoints] == [2, 1]
    published = send(
        "POST",
        "/v1/fine_tuning/jobs/{job_id}/checkpoints/{step}/publish",
        "happy publish a checkpoint",
        path_parameters={**ids, "step": 1},
    )
    assert published.json()["tuneyard"]["published_as"] == "happy@2", published.text
    assert send("GET", "/v1/fine_tuning/jobs", "happy list jobs").json()["data"]

    adapter = {"adapter_id": "happy@2"}
    send("POST", "/v1/adapters/{adapter_id}/unload", "happy unload", path_parameters=adapter)
    send("POST", "/v1/adapters/{adapter_id}/load", "happy load", path_parameters=adapter)
    adapters = send("GET", "/v1/adapters", "happy list adapters").json()["data"]
    assert "happy@2" in [a["id"] for a in adapters if a["loaded"]]
    assert "happy" in [m["id"] for m in send("GET", "/v1/models", "happy models").json()["data"]]
    for path, body in [
        ("/generate", {"inputs": "Subject:", "parameters": {"adapter_id": "happy"}}),
        ("/v1/completions", {"model": "happy", "prompt": "Subject:", "max_tokens": 3}),
        (
            "/v1/chat/completions",
            {"model": "happy", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
        ),
    ]:
        answer = send("POST", path, f"happy generate {path}", body=body)
        assert answer.status_code == 200, answer.text

    spec = {
        "adapter_id": "happy",
        "eval_file_id": file_id,
        "arms": ["zero_shot", "adapter"],
        "checks": [{"type": "contains", "value": "Subject"}, {"type": "rouge_l"}],
        "max_new_tokens": 3,
        "limit": 2,
    }
    evaluation = send("POST", "/v1/evaluations", "happy create an evaluation", body=spec).json()
    assert send("GET", "/v1/evaluations", "happy list evaluations").json()["data"]
    evaluation = client.wait(
        "/v1/evaluations/{evaluation_id}",
        "evaluation_id",
        evaluation["id"],
        "happy get an evaluation",
        120,
    )
    assert evaluation["status"] == "succeeded", evaluation
    for fmt in ("html", "md"):
        report = send(
            "GET",
            "/v1/evaluations/{evaluation_id}/report.{fmt}",
            f"happy report.{fmt}",
            path_parameters={"evaluation_id": evaluation["id"], "fmt": fmt},
        )
        assert report.status_code == 200 and report.content, report.text
    client.close()
    assert not tally.new_server_errors, tally.new_server_errors


ROWS = st.lists(st.sampled_from(EMAIL_ROWS), min_size=2, max_size=12)
JOB = {
    "batch_size": st.sampled_from([1, 2, "auto"]),
    "multiplier": st.sampled_from([0.5, 1, "auto"]),
    "r": st.sampled_from([1, 2, 4]),
    "seed": st.integers(0, 2**32 - 1),
    "recipe": st.sampled_from(["causal_lm", "sft"]),
}
CHECK = st.sampled_from(
    [
        {"type": "rouge_l"},
        {"type": "contains", "value": "Hi"},
        {"type": "exact_match"},
        {"type": "regex", "pattern": "Subject.*", "fullmatch": True},
        {"type": "json_schema"},
    ]
)


class TrainingClient(RuleBasedStateMachine):
    """Uploads, jobs and evaluations on them, in any order; reads and cancels of what it
    created; every answer checked against the schema."""

    files = Bundle("files")
    jobs = Bundle("jobs")
    evaluations = Bundle("evaluations")

    # Set by the test (a state machine is built by Hypothesis, without arguments).
    api = url = base_model = tally = None

    def __init__(self):
        super().__init__()
        self.client = Client(self.api, self.url, self.tally)
        self.send = self.client.send
        self.created_jobs: list[str] = []

    def teardown(self):
        for job_id in self.created_jobs:  # the next example needs the worker slot
            self.client.http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=_auth(ADMIN))
        self.client.close()

    @initialize(target=files, rows=ROWS)
    def upload_first(self, rows):
        return self.client.upload(rows, "walk upload a JSONL file")

    @rule(target=files, rows=ROWS)
    def upload(self, rows):
        return self.client.upload(rows, "walk upload a JSONL file")

    @rule(content=st.binary(max_size=200), purpose=st.sampled_from(["fine-tune", "other"]))
    def upload_anything(self, content, purpose):
        self.send(
            "POST",
            "/v1/files",
            "walk upload any bytes",
            body={"purpose": purpose},
            files={"file": ("any.jsonl", content)},
        )

    @rule(file_id=files, what=st.sampled_from(["", "/content"]))
    def second_project_reads_a_file(self, file_id, what):
        """What the walk made is the default project's: another project's key finds none
        of it, by id or in its lists."""
        response = self.send(
            "GET",
            f"/v1/files/{{file_id}}{what}",
            f"walk get a file of another project{what}",
            key=SECOND["key"],
            path_parameters={"file_id": file_id},
        )
        assert response.status_code == 404, response.text
        listed = self.send("GET", "/v1/files", "walk list files of a project", key=SECOND["key"])
        assert file_id not in [f["id"] for f in listed.json()["data"]]

    @rule(
        job=jobs,
        what=st.sampled_from(
            [("GET", ""), ("GET", "/events"), ("GET", "/checkpoints"), ("POST", "/cancel")]
        ),
    )
    def second_project_reaches_for_a_job(self, job, what):
        method, tail = what
        response = self.send(
            method,
            f"/v1/fine_tuning/jobs/{{job_id}}{tail}",
            f"walk {method} job{tail} of another project",
            key=SECOND["key"],
            path_parameters={"job_id": job},
        )
        assert response.status_code == 404, response.text

    @rule(file_id=files)
    def get_file(self, file_id):
        response = self.send(
            "GET", "/v1/files/{file_id}", "walk get a file", path_parameters={"file_id": file_id}
        )
        assert response.status_code == 200

    def _job_body(self, file_id, batch_size, multiplier, r, seed, recipe) -> dict:
        body = job_body(self.base_model, file_id, "walk")
        body["seed"] = seed
        body["hyperparameters"] = {"batch_size": batch_size, "learning_rate_multiplier": multiplier}
        body["tuneyard"].update(recipe=recipe, lora={"r": r, "alpha": 2 * r})
        return body

    @rule(file_id=files, **JOB)
    def validate_job(self, file_id, **job):
        body = self._job_body(file_id, **job)
        response = self.send("POST", "/v1/fine_tuning/jobs/validate", "walk validate", body=body)
        assert response.status_code == 200 and response.json()["ok"], response.text

    @rule(target=jobs, file_id=files, **JOB)
    def create_job(self, file_id, **job):
        body = self._job_body(file_id, **job)
        response = self.send("POST", "/v1/fine_tuning/jobs", "walk create a job", body=body)
        assert response.status_code == 200, response.text
        self.created_jobs.append(response.json()["id"])
        return response.json()["id"]

    @rule(job=jobs, what=st.sampled_from(["", "/events", "/checkpoints"]))
    def read_job(self, job, what):
        response = self.send(
            "GET",
            f"/v1/fine_tuning/jobs/{{job_id}}{what}",
            f"walk get job{what}",
            path_parameters={"job_id": job},
        )
        assert response.status_code == 200, response.text

    @rule(job=jobs)
    def follow_job(self, job):
        self.send(
            "GET",
            "/v1/fine_tuning/jobs/{job_id}/events",
            "walk follow job events (stream)",
            path_parameters={"job_id": job},
            query={"stream": True},
        )

    @rule(job=consumes(jobs))
    def cancel_job(self, job):
        self.send(
            "POST",
            "/v1/fine_tuning/jobs/{job_id}/cancel",
            "walk cancel a job",
            path_parameters={"job_id": job},
        )

    @rule(
        target=evaluations,
        file_id=files,
        arms=st.lists(st.sampled_from(["zero_shot", "adapter"]), min_size=1, unique=True),
        check=CHECK,
        max_new_tokens=st.integers(1, 4),
        limit=st.integers(1, 2),
    )
    def create_evaluation(self, file_id, arms, check, max_new_tokens, limit):
        body = {
            "adapter_id": "emails",
            "eval_file_id": file_id,
            "arms": arms,
            "checks": [check],
            "max_new_tokens": max_new_tokens,
            "limit": limit,
        }
        response = self.send("POST", "/v1/evaluations", "walk create an evaluation", body=body)
        assert response.status_code == 200, response.text
        return response.json()["id"]

    @rule(evaluation=evaluations, fmt=st.sampled_from(["html", "md"]), wait=st.booleans())
    def read_evaluation(self, evaluation, fmt, wait):
        ids = {"evaluation_id": evaluation}
        state = self.client.wait(
            "/v1/evaluations/{evaluation_id}",
            "evaluation_id",
            evaluation,
            "walk get an evaluation",
            30 if wait else 0,
        )
        report = self.send(
            "GET",
            "/v1/evaluations/{evaluation_id}/report.{fmt}",
            f"walk get a report ({state['status']})",
            path_parameters={**ids, "fmt": fmt},
        )
        assert (report.status_code == 200) == (state["status"] == "succeeded"), report.text

    @rule(evaluation=evaluations)
    def cancel_evaluation(self, evaluation):
        self.send(
            "POST",
            "/v1/evaluations/{evaluation_id}/cancel",
            "walk cancel an evaluation",
            path_parameters={"evaluation_id": evaluation},
        )

    @invariant()
    def no_server_error(self):
        assert not self.tally.new_server_errors, self.tally.new_server_errors


def test_a_client_walks_files_jobs_and_evaluations(stack, api, tally):
    url, base_model = stack
    TrainingClient.api, TrainingClient.url = api, url
    TrainingClient.base_model, TrainingClient.tally = base_model, tally
    run_state_machine_as_test(TrainingClient, settings=_settings(20, stateful_step_count=15))
    assert not tally.new_server_errors, tally.new_server_errors
