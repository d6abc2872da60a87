"""Bad input against the gateway: each is a 4xx naming the field, nothing runs, and the
keep-alive connection stays usable. (Backends are down: all of this is refused before a
backend is called.)"""

import http.client
import json
from urllib.parse import urlparse

import pytest

ISSUE_TEMPLATE = (
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
    "{% if c.__name__ == '_wrap_close' %}{{ c.__init__.__globals__['mkdir'](PATH) }}"
    "{% endif %}{% endfor %}{{ product }}"
)


@pytest.fixture
def keyed(make_gateway):
    """A gateway with a plain key (user1) and an admin key (admin1), backends down."""
    from tuneyard.local_stack import free_port

    return make_gateway(
        api_keys=["user1"],
        admin_keys=["admin1"],
        inference_addr=f"127.0.0.1:{free_port()}",
        trainer_addr=f"127.0.0.1:{free_port()}",
    )


class Connection:
    """One keep-alive HTTP connection; raw bytes in, so a lone surrogate can be sent."""

    def __init__(self, url: str, key: str = "user1"):
        parsed = urlparse(url)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        self.key = key
        self.sockets = set()

    def send(self, method: str, path: str, body: str | bytes | None = None):
        headers = {"Authorization": f"Bearer {self.key}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if isinstance(body, str):
            body = body.encode()
        self.conn.request(method, path, body=body or None, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        self.sockets.add(id(self.conn.sock))
        assert response.getheader("connection", "").lower() != "close"
        return response, json.loads(data) if data else None

    def close(self):
        self.conn.close()


def _named(status: int, body: dict, field: str) -> str:
    """The message of an error body (TGI's or OpenAI's), checked to name `field`."""
    if "error_type" in body:
        assert status == 422 and body["error_type"] == "validation", body
        message = body["error"]
    else:
        assert status == 400 and body["error"]["type"] == "invalid_request_error", body
        assert body["error"]["param"] == field, body
        message = body["error"]["message"]
    assert field in message, message
    return message


SURROGATE = "\\ud800"  # as JSON spells it; the parsed string cannot be encoded
SURROGATE_CASES = [
    ("/generate", {"inputs": SURROGATE}, "inputs"),
    ("/generate_stream", {"inputs": SURROGATE}, "inputs"),
    ("/", {"inputs": "x", "parameters": {"stop": ["ok", SURROGATE]}}, "parameters.stop.1"),
    ("/v1/completions", {"model": "m", "prompt": SURROGATE}, "prompt"),
    ("/v1/completions", {"model": "m", "prompt": ["a", SURROGATE], "stream": True}, "prompt.1"),
    ("/v1/completions", {"model": "m", "prompt": "a", "stop": SURROGATE}, "stop"),
    (
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": SURROGATE}]},
        "messages.0.content",
    ),
    (
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True,
         "stop": [SURROGATE]},
        "stop.0",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "field"), SURROGATE_CASES)
def test_a_lone_surrogate_is_refused_naming_the_field(keyed, path, body, field):
    conn = Connection(keyed.url)
    text = json.dumps(body).replace(json.dumps(SURROGATE)[1:-1], SURROGATE)
    assert "\\\\ud800" not in text and "\\ud800" in text
    status, answer = _send(conn, "POST", path, text)
    assert "not valid Unicode" in _named(status, answer, field)
    # The same connection answers the next request.
    response, models = conn.send("GET", "/v1/fine_tuning/jobs/nope/checkpoints?limit=0")
    assert response.status == 400 and models["error"]["param"] == "limit"
    assert len(conn.sockets) == 1
    conn.close()


def _send(conn: Connection, method: str, path: str, body: str | None = None):
    response, answer = conn.send(method, path, body)
    return response.status, answer


def test_a_negative_token_id_in_logit_bias_is_refused(keyed):
    conn = Connection(keyed.url)
    for token in ("-1", "4294967296"):
        body = {"model": "m", "prompt": "x", "logit_bias": {token: 5}}
        status, answer = _send(conn, "POST", "/v1/completions", json.dumps(body))
        assert "token id" in _named(status, answer, "logit_bias")
    conn.close()


@pytest.mark.parametrize("step", ["-1", "0", str(2**63), str(2**64 + 1), "x"])
def test_a_checkpoint_step_out_of_range_is_refused(keyed, step):
    conn = Connection(keyed.url, key="admin1")
    status, answer = _send(conn, "POST", f"/v1/fine_tuning/jobs/ftjob-1/checkpoints/{step}/publish")
    _named(status, answer, "step")
    conn.close()


@pytest.mark.parametrize("route", ["/v1/fine_tuning/jobs/validate", "/v1/fine_tuning/jobs"])
def test_the_issue_template_is_refused_with_422_and_runs_nothing(keyed, route, tmp_path):
    canary = tmp_path / "x"
    template = ISSUE_TEMPLATE.replace("PATH", repr(str(canary)))
    body = {
        "model": "base",
        "training_file": "file-" + "0" * 24,
        "suffix": "attack",
        "tuneyard": {"template": {"prompt": template, "response": "{{ email }}"}},
    }
    conn = Connection(keyed.url, key="admin1")
    status, answer = _send(conn, "POST", route, json.dumps(body))
    assert status == 422, answer
    assert answer["error"]["param"] == "template.prompt"
    assert answer["error"]["type"] == "invalid_request_error"
    assert not canary.exists()
    conn.close()


def test_an_unexpected_error_is_a_500_with_a_request_id_and_no_internals(keyed, caplog):
    async def boom():
        raise RuntimeError("secret detail /srv/internal/path")

    keyed.app.add_api_route("/v1/boom", boom)
    conn = Connection(keyed.url)
    response, answer = conn.send("GET", "/v1/boom")
    assert response.status == 500
    request_id = response.getheader("x-request-id")
    assert request_id and request_id in answer["error"]["message"]
    assert "secret" not in json.dumps(answer) and "/srv" not in json.dumps(answer)
    assert answer["error"]["type"] == "server_error"
    assert any(request_id in r.getMessage() for r in caplog.records)
    # The connection is not reset.
    response, _ = conn.send("GET", "/v1/fine_tuning/jobs/nope/checkpoints?limit=0")
    assert response.status == 400 and len(conn.sockets) == 1
    conn.close()


def test_a_wrong_method_is_405_with_allow(keyed):
    conn = Connection(keyed.url)
    response, answer = conn.send("DELETE", "/v1/completions")
    assert response.status == 405
    assert response.getheader("allow") == "POST"
    assert answer["error"]["type"] == "invalid_request_error"
    response, answer = conn.send("PUT", "/generate")
    assert response.status == 405 and answer["error_type"] == "validation"
    conn.close()


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", {"model": "m", "prompt": []}, "prompt"),
        ("/v1/chat/completions", {"model": "m", "messages": []}, "messages"),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": None}]},
            "messages.0",
        ),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "assistant", "content": None}]},
            "messages.0",
        ),
    ],
)
def test_clearly_invalid_openai_input_is_refused(keyed, path, body, field):
    conn = Connection(keyed.url)
    status, answer = _send(conn, "POST", path, json.dumps(body))
    _named(status, answer, field)
    conn.close()


@pytest.mark.parametrize(
    ("path", "status"),
    [("/generate", 422), ("/v1/completions", 400), ("/v1/fine_tuning/jobs/validate", 400)],
)
def test_a_body_that_does_not_parse_is_a_4xx_not_a_500(keyed, path, status):
    """Bytes that are not UTF-8 under a JSON content type: FastAPI raises its own 400 for
    them, which the gateway answers in the API's error shape (found by the fuzzer)."""
    conn = Connection(keyed.url, key="admin1")
    response, answer = conn.send("POST", path, b'{"inputs": "\xff"}')
    assert response.status == status, answer
    message = answer["error"] if status == 422 else answer["error"]["message"]
    assert "error parsing the body" in message
    conn.close()


def test_an_unknown_report_format_is_refused_before_the_backend(keyed):
    conn = Connection(keyed.url)
    status, answer = _send(conn, "GET", "/v1/evaluations/eval-1/report.pdf")
    _named(status, answer, "fmt")
    conn.close()


TEMPLATE = {"prompt": "{{ product }}", "response": "{{ email }}"}
CHAT = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/generate", {"inputs": "x", "parameters": {"top_k": False}}, "parameters.top_k"),
        ("/generate", {"inputs": "x", "parameters": {"seed": "5"}}, "parameters.seed"),
        ("/generate", {"inputs": "x", "stream": 1}, "stream"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "n": True}, "n"),
        ("/v1/completions", {"model": "m", "prompt": "x", "max_tokens": 5.0}, "max_tokens"),
        ("/v1/completions", {"model": "m", "prompt": "x", "echo": "false"}, "echo"),
        (
            "/v1/fine_tuning/jobs/validate",
            {"training_file": "file-1", "suffix": "a",
             "tuneyard": {"template": TEMPLATE, "training": {"max_steps": "1"}}},
            "training.max_steps",
        ),
        ("/v1/fine_tuning/jobs/validate", {"seed": True, "tuneyard": {}}, "seed"),
        ("/v1/evaluations", {"adapter_id": "a", "limit": True}, "limit"),
        ("/v1/evaluations", {"checks": [{"type": "regex", "fullmatch": 1}]}, "checks.0.fullmatch"),
    ],
)  # fmt: skip
def test_a_value_of_another_json_type_than_the_schema_says_is_refused(keyed, path, body, field):
    """Found by the fuzz test: Pydantic's lax mode took "5" or false for a number, 1 for a
    boolean, where the published schema refuses them; the request bodies are strict now."""
    conn = Connection(keyed.url, key="admin1")
    status, answer = _send(conn, "POST", path, json.dumps(body))
    _named(status, answer, field)
    conn.close()
