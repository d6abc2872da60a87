"""The gateway in front of backends that are down: request validation, error bodies, auth,
metrics and fast 503s. (With the real backends: test_tgi_api, test_openai_api,
test_inference_serving and test_gateway_jobs.)"""

import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tuneyard.local_stack import free_port

TGI_BODY = {"error", "error_type"}


@pytest.fixture
def gateway(make_gateway):
    """A gateway whose backends are ports nothing listens on (the one `http` talks to)."""
    return make_gateway(
        inference_addr=f"127.0.0.1:{free_port()}", trainer_addr=f"127.0.0.1:{free_port()}"
    )


def _tgi_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == TGI_BODY and body["error_type"] == error_type
    return body["error"]


def _openai_error(response: httpx.Response, status: int, type_: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == type_
    return error


@pytest.mark.parametrize("path", ["/generate", "/generate_stream", "/"])
def test_tgi_validation_errors(http, path):
    message = _tgi_error(http.post(path, json={"inputs": ""}), 422, "validation")
    assert "`inputs` cannot be empty" in message
    response = http.post(path, json={"inputs": "x", "parameters": {"max_new_tokens": -1}})
    assert "parameters.max_new_tokens" in _tgi_error(response, 422, "validation")
    response = http.post(path, json={"inputs": "x", "parameters": {"max_new_tokens": 2**32}})
    assert "parameters.max_new_tokens" in _tgi_error(response, 422, "validation")
    response = http.post(path, json={"inputs": "x", "parameters": {"watermark": True}})
    assert "not supported by this server: watermark" in _tgi_error(response, 422, "validation")
    response = http.post(path, json={"inputs": "x", "parameters": {"best_of": 2}})
    assert "you must use sampling when `best_of` is > 1" in _tgi_error(response, 422, "validation")
    both = {"best_of": 2, "do_sample": True, "seed": 1}
    response = http.post(path, json={"inputs": "x", "parameters": both})
    assert "`seed` must not be set" in _tgi_error(response, 422, "validation")
    response = http.post(path, json={"inputs": "x", "parameters": {"best_of": 5}})
    assert "best_of" in _tgi_error(response, 422, "validation")
    assert "inputs" in _tgi_error(http.post(path, json={}), 422, "validation")
    assert "JSON" in _tgi_error(
        http.post(path, content=b"{oops", headers={"content-type": "application/json"}),
        422,
        "validation",
    )


def test_backend_down_is_503_fast(http):
    for _ in range(3):
        start = time.monotonic()
        response = http.post("/generate", json={"inputs": "hi", "parameters": None})
        assert "inference service unavailable" in _tgi_error(response, 503, "unavailable")
        assert time.monotonic() - start < 2.0
    _tgi_error(http.post("/generate_stream", json={"inputs": "hi"}), 503, "unavailable")
    _tgi_error(http.get("/health"), 503, "unavailable")
    _tgi_error(http.get("/info"), 503, "unavailable")
    error = _openai_error(http.get("/v1/fine_tuning/jobs/nope"), 503, "service_unavailable_error")
    assert error["message"].startswith("trainer service unavailable")
    _openai_error(http.get("/v1/models"), 503, "service_unavailable_error")
    _openai_error(
        http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        ),
        503,
        "service_unavailable_error",
    )


def test_openai_validation_errors(http):
    error = _openai_error(
        http.post("/v1/chat/completions", json={"model": "m", "messages": []}),
        400,
        "invalid_request_error",
    )
    assert error["param"] == "messages"
    error = _openai_error(
        http.post("/v1/completions", json={"model": "m", "prompt": "x", "n": 17}),
        400,
        "invalid_request_error",
    )
    assert error["param"] == "n"
    error = _openai_error(
        http.post("/v1/completions", json={"model": "m", "prompt": "x", "best_of": 2, "n": 3}),
        400,
        "invalid_request_error",
    )
    assert "best_of (2) must be at least n (3)" in error["message"]
    stream = {"model": "m", "prompt": "x", "best_of": 2, "stream": True}
    error = _openai_error(http.post("/v1/completions", json=stream), 400, "invalid_request_error")
    assert "not supported by this server: best_of with stream" in error["message"]
    error = _openai_error(
        http.post("/v1/completions", json={"prompt": "x"}), 400, "invalid_request_error"
    )
    assert error["param"] == "model"


def test_job_create_bad_spec_names_the_field(http, email_jsonl):
    error = _openai_error(
        http.post("/v1/fine_tuning/jobs", json={"model": "m"}),
        400,
        "invalid_request_error",
    )
    assert "data: Field required" in error["message"] and error["param"] == "data"
    error = _openai_error(
        http.post(
            "/v1/fine_tuning/jobs",
            json={
                "training_file": str(email_jsonl),
                "suffix": "bad name!",
                "tuneyard": {"template": {"prompt": "{{ product }}", "response": "{{ email }}"}},
            },
        ),
        400,
        "invalid_request_error",
    )
    assert "invalid adapter name 'bad name!'" in error["message"]
    error = _openai_error(
        http.post(
            "/v1/fine_tuning/jobs", json={"training_file": "x", "hyperparameters": {"n_epochs": -1}}
        ),
        400,
        "invalid_request_error",
    )
    assert error["param"].startswith("hyperparameters.n_epochs")
    error = _openai_error(
        http.post("/v1/fine_tuning/jobs", json={"training_file": "x", "integrations": []}),
        400,
        "invalid_request_error",
    )
    assert error["param"] == "integrations"  # an OpenAI field tuneyard does not take
    error = _openai_error(
        http.post("/v1/fine_tuning/jobs", json={"training_file": "x", "metadata": {"k": 1}}),
        400,
        "invalid_request_error",
    )
    assert error["param"] == "metadata"
    error = _openai_error(
        http.get("/v1/fine_tuning/jobs/x/events", params={"after": "zz"}),
        400,
        "invalid_request_error",
    )
    assert "invalid event id" in error["message"]
    _openai_error(
        http.get("/v1/fine_tuning/jobs", params={"limit": 0}), 400, "invalid_request_error"
    )


def test_unknown_route_is_404(http):
    error = _openai_error(http.get("/v1/nope"), 404, "not_found_error")
    assert "/v1/nope" in error["message"]


def test_auth(make_gateway):
    gateway = make_gateway(
        api_keys="user-key",
        admin_keys="admin-key",
        inference_addr="127.0.0.1:1",
        trainer_addr="127.0.0.1:1",
    )
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        # Health and metrics stay open (probes and scrapers carry no key).
        assert http.get("/health").status_code == 503
        assert http.get("/metrics").status_code == 200
        response = http.post("/generate", json={"inputs": "hi"})
        assert "missing API key" in _tgi_error(response, 401, "authentication")
        assert response.headers["www-authenticate"] == "Bearer"
        response = http.post(
            "/generate", json={"inputs": "hi"}, headers={"Authorization": "Bearer wrong"}
        )
        assert "invalid API key" in _tgi_error(response, 401, "authentication")
        _openai_error(http.get("/v1/models"), 401, "authentication_error")
        # A valid key reaches the (down) backend.
        user = {"Authorization": "Bearer user-key"}
        admin = {"Authorization": "Bearer admin-key"}
        _tgi_error(http.post("/generate", json={"inputs": "hi"}, headers=user), 503, "unavailable")
        _tgi_error(http.post("/generate", json={"inputs": "hi"}, headers=admin), 503, "unavailable")
        _openai_error(
            http.get("/v1/fine_tuning/jobs", headers=user), 503, "service_unavailable_error"
        )
        for path in [
            "/v1/fine_tuning/jobs",
            "/v1/fine_tuning/jobs/j1/cancel",
            "/v1/adapters/a/load",
            "/v1/adapters/a/unload",
        ]:
            error = _openai_error(http.post(path, json={}, headers=user), 403, "permission_error")
            assert "admin" in error["message"]
            assert http.post(path, json={}, headers=admin).status_code not in (401, 403)


def test_metrics_count_routes_not_paths(http):
    http.get("/v1/fine_tuning/jobs/job-a")
    http.get("/v1/fine_tuning/jobs/job-b")
    http.post("/generate", json={"inputs": ""})
    http.get("/nope/123")
    text = http.get("/metrics").text
    assert (
        'tuneyard_gateway_requests_total{method="GET",route="/v1/fine_tuning/jobs/{job_id}",'
        'status="503"} 2.0'
    ) in text
    assert 'route="/generate",status="422"} 1.0' in text
    assert 'route="unmatched",status="404"} 1.0' in text
    assert "job-a" not in text and "/nope/123" not in text
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, text=True, capture_output=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_python_m_gateway_serves_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "TUNEYARD_GATEWAY_PORT": str(port),
        "TUNEYARD_HOME": str(tmp_path),
        "TUNEYARD_INFERENCE_ADDR": f"127.0.0.1:{free_port()}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        line = process.stdout.readline()
        assert f"gateway ready on 127.0.0.1:{port}" in line, line
        response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert response.status_code == 503 and response.json()["error_type"] == "unavailable"
        # Small responses are not held back by Nagle's algorithm (about 40 ms each).
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            took = []
            for _ in range(7):
                start = time.perf_counter()
                assert http.get("/metrics").status_code == 200
                took.append(time.perf_counter() - start)
        assert sorted(took)[3] < 0.025, took
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert process.wait(timeout=15) in (0, -signal.SIGTERM)
        assert "Finished server process" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
