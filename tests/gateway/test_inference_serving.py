"""The gateway and the real inference service on tiny_llama beyond the two generation
APIs: adapters, metrics, a backend that goes away and comes back, cancellation, a full queue
and hot reload under load."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import text_generation

from tests.support.adapters import make_adapter
from tests.support.engines import count_requests, promtool_check
from tests.support.services import serve_inference, start_gateway
from tuneyard.local_stack import free_port


# --- adapters ----------------------------------------------------------------------------
def test_adapters_list_load_unload(http):
    unloaded = http.post("/v1/adapters/emails/unload")
    assert unloaded.status_code == 200 and unloaded.json()["loaded"] is False
    loaded = http.post("/v1/adapters/emails/load").json()
    assert loaded["id"] == "emails@1" and loaded["loaded"] is True and loaded["rank"] == 4
    listed = http.get("/v1/adapters").json()
    assert listed["object"] == "list"
    (entry,) = [a for a in listed["data"] if a["name"] == "emails"]
    assert entry["loaded"] and entry["size"] > 0 and entry["version"] == "1"
    assert entry["state"] == "loaded"
    assert entry["base_model"] == "tiny-llama"  # the served name, not the folder's path
    # What a request's `fields` fill in its template (the console asks for them).
    assert entry["template_fields"] == ["description", "product"]
    response = http.post("/v1/adapters/ghost/load")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert "/" not in response.json()["error"]["message"]  # no server path


# --- metrics -----------------------------------------------------------------------------
def test_metrics_after_generation(gateway, http):
    client = text_generation.Client(gateway.url, timeout=60)
    list(client.generate_stream("Subject:", max_new_tokens=3))
    http.post(
        "/generate",
        json={"inputs": "x", "parameters": {"adapter_id": "emails", "max_new_tokens": 2}},
    )
    assert http.post("/v1/adapters/emails@1/load").status_code == 200
    text = http.get("/metrics").text
    assert 'tuneyard_gateway_time_to_first_token_seconds_count{adapter="(base)"}' in text
    assert 'tuneyard_gateway_generated_tokens_total{adapter="emails"}' in text
    assert 'tuneyard_gateway_adapter_load_duration_seconds_count{adapter="emails"}' in text
    # The scrape itself is the one request in flight.
    assert "tuneyard_gateway_requests_in_flight 1.0" in text
    # The text-generation client posts to `/`.
    assert 'tuneyard_gateway_requests_total{method="POST",route="/",status="200"}' in text
    promtool_check(text)


# --- a backend that goes away and comes back ---------------------------------------------
def test_inference_down_then_back(tiny_llama, adapters_dir):
    port = free_port()
    running = serve_inference(tiny_llama, adapters_dir, port=port)
    gateway = start_gateway(
        inference_addr=f"127.0.0.1:{port}", connect_timeout_s=1.0, reconnect_backoff_max_s=0.5
    )
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            body = {"inputs": "hi", "parameters": {"max_new_tokens": 2}}
            assert http.post("/generate", json=body).status_code == 200
            running.stop(grace=0)
            start = time.monotonic()
            response = http.post("/generate", json=body)
            assert response.status_code == 503 and response.json()["error_type"] == "unavailable"
            assert time.monotonic() - start < 1.5
            assert http.get("/health").status_code == 503
            running = serve_inference(tiny_llama, adapters_dir, port=port)
            deadline = time.monotonic() + 5
            while (status := http.post("/generate", json=body).status_code) != 200:
                assert status == 503 and time.monotonic() < deadline
                time.sleep(0.1)
            assert http.get("/health").status_code == 200
    finally:
        gateway.stop()
        running.stop(grace=0)


def _inference_requests(running, status: str) -> float:
    return count_requests(running.metrics.registry, status)


def test_client_disconnect_cancels_generation(inference, http):
    before = _inference_requests(inference, "cancelled")
    body = {"inputs": "Subject:", "parameters": {"max_new_tokens": 1500}}
    with http.stream("POST", "/generate_stream", json=body) as response:
        first = next(line for line in response.iter_lines() if line.startswith("data:"))
        assert json.loads(first.removeprefix("data:"))["index"] == 1
    deadline = time.monotonic() + 10
    while _inference_requests(inference, "cancelled") == before:
        assert time.monotonic() < deadline, "the inference service kept generating"
        time.sleep(0.05)


def test_queue_full_is_429_overloaded(tiny_llama, adapters_dir):
    running = serve_inference(tiny_llama, adapters_dir, max_queue=1, max_batch_size=1)
    gateway = start_gateway(inference_addr=f"127.0.0.1:{running.port}")
    body = {"inputs": "Subject:", "parameters": {"max_new_tokens": 50}}
    try:
        # One request generating and one waiting fill the engine: of four sent at once, at
        # least one is turned away.
        with httpx.Client(base_url=gateway.url, timeout=60) as http, ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: http.post("/generate", json=body), range(4)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses[0] == 200 and statuses[-1] == 429 and set(statuses) == {200, 429}
        for response in responses:
            if response.status_code == 429:
                assert response.json()["error_type"] == "overloaded"
                assert "queue is full" in response.json()["error"]
    finally:
        gateway.stop()
        running.stop(grace=0)


# --- hot reload under load -----------------------------------------------------------------
def test_hot_reload_under_concurrent_load(gateway, tiny_llama, adapters_dir):
    """Clients keep generating with `reload` while its version 2 is published: no request
    fails, each answer is version 1's or version 2's, and every request sent after the
    publication gets version 2."""
    make_adapter(tiny_llama, adapters_dir, "reload", seed=4)
    body = {"inputs": "Subject: Meet", "parameters": {"max_new_tokens": 6}}

    def generate(http, adapter_id):
        request = {**body, "parameters": {**body["parameters"], "adapter_id": adapter_id}}
        return http.post("/generate", json=request)

    published_at = None
    results = []  # (sent at, status, text)

    def client(_):
        with httpx.Client(base_url=gateway.url, timeout=60) as http:
            after = 0
            while after < 3:
                sent = time.monotonic()
                response = generate(http, "reload")
                text = response.json().get("generated_text")
                results.append((sent, response.status_code, text))
                if published_at is not None and sent > published_at:
                    after += 1

    with ThreadPoolExecutor(6) as pool:
        running = pool.map(client, range(6))
        deadline = time.monotonic() + 30
        while len(results) < 12:
            assert time.monotonic() < deadline, "no load"
            time.sleep(0.01)
        make_adapter(tiny_llama, adapters_dir, "reload", seed=5)
        published_at = time.monotonic()
        list(running)

    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        v1 = generate(http, "reload@1").json()["generated_text"]
        v2 = generate(http, "reload@2").json()["generated_text"]
    assert v1 != v2
    assert {status for _, status, _ in results} == {200}
    assert {text for _, _, text in results} <= {v1, v2}
    after = [text for sent, _, text in results if sent > published_at]
    assert len(after) >= 18 and set(after) == {v2}
    assert sum(text == v1 for sent, _, text in results if sent < published_at) >= 12
