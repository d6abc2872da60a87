"""The gateway in front of several real inference replicas (tiny_llama, in-process, on
loopback ports): adapter affinity, load/unload on every replica, a stopped replica left
for the others, `dns:///` addresses, and bad addresses refused."""

import asyncio
import time

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from gateway.backends import Backend
from gateway.replicas import ReplicaPool
from gateway.settings import GatewaySettings
from tests.support.adapters import make_adapter
from tests.support.engines import count_requests
from tests.support.services import serve_inference, start_gateway
from tuneyard.local_stack import free_port
from tuneyard.v1 import inference_pb2, inference_pb2_grpc

REFRESH_S = 0.2


@pytest.fixture(scope="module")
def adapters_dir(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    make_adapter(tiny_llama, folder, "emails")
    make_adapter(tiny_llama, folder, "notes", seed=2)
    return folder


@pytest.fixture(scope="module")
def replicas(tiny_llama, adapters_dir):
    running = [serve_inference(tiny_llama, adapters_dir) for _ in range(2)]
    yield running
    for replica in running:
        replica.stop(grace=0)


@pytest.fixture(scope="module")
def gateway(replicas):
    addr = ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    running = start_gateway(
        inference_addr=addr, trainer_addr=f"127.0.0.1:{free_port()}", replica_refresh_s=REFRESH_S
    )
    yield running
    running.stop()


class Direct:
    """A replica's own gRPC API, bypassing the gateway."""

    def __init__(self, running):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.running = running

    def loaded(self) -> set[str]:
        reply = self.stub.ListAdapters(inference_pb2.ListAdaptersRequest(), timeout=10)
        return {a.id for a in reply.adapters if a.loaded}

    def load(self, adapter_id: str) -> None:
        self.stub.LoadAdapter(inference_pb2.LoadAdapterRequest(adapter_id=adapter_id), timeout=30)

    def unload_all(self) -> None:
        for adapter_id in self.loaded():
            self.stub.UnloadAdapter(
                inference_pb2.UnloadAdapterRequest(adapter_id=adapter_id), timeout=10
            )

    def served(self) -> float:
        return count_requests(self.running.metrics.registry, "ok")


@pytest.fixture
def direct(replicas):
    """Each replica's own API, every adapter unloaded to begin with."""
    views = [Direct(r) for r in replicas]
    for view in views:
        view.unload_all()
    yield views
    for view in views:
        view.channel.close()


def gateway_metric(http: httpx.Client, name: str, **labels) -> float | None:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def _generate(http, adapter: str | None = None, stream: bool = False) -> httpx.Response:
    params = {"max_new_tokens": 2}
    if adapter:
        params["adapter_id"] = adapter
    path = "/generate_stream" if stream else "/generate"
    response = http.post(path, json={"inputs": "Subject: hi", "parameters": params})
    assert response.status_code == 200, response.text
    return response


# --- choice ------------------------------------------------------------------------------
def test_adapter_requests_go_to_the_replica_that_has_it_loaded(http, direct, gateway):
    first, second = direct
    second.load("emails")
    time.sleep(3 * REFRESH_S)  # the gateway's poll finds it there
    before = [first.served(), second.served()]
    for index in range(6):
        _generate(http, "emails", stream=index % 2 == 1)
    assert second.served() - before[1] == 6
    assert first.served() == before[0]
    # The other replica never had to load it.
    assert "emails@1" not in first.loaded()
    # Every call has ended, streams included: nothing is left counted in flight.
    pool = gateway.app.state.backends.inference
    deadline = time.monotonic() + 5
    while any(replica.in_flight for replica in pool.replicas):
        assert time.monotonic() < deadline, [r.in_flight for r in pool.replicas]
        time.sleep(0.02)


def test_a_cold_adapter_stays_where_it_was_first_loaded(http, direct):
    before = [view.served() for view in direct]
    for _ in range(4):
        _generate(http, "notes")
    served = [view.served() - b for view, b in zip(direct, before, strict=True)]
    assert sorted(served) == [0, 4]
    assert sum("notes@1" in view.loaded() for view in direct) == 1


def test_base_model_requests_spread_over_idle_replicas(http, direct):
    before = [view.served() for view in direct]
    for _ in range(4):
        _generate(http)
    assert [view.served() - b for view, b in zip(direct, before, strict=True)] == [2, 2]


def test_requests_per_replica_metrics(http, replicas):
    for _ in range(2):
        _generate(http)
    for replica in replicas:
        assert gateway_metric(
            http,
            "tuneyard_gateway_inference_replica_requests_total",
            replica=f"127.0.0.1:{replica.port}",
        )
    assert gateway_metric(http, "tuneyard_gateway_inference_replicas") == 2
    assert gateway_metric(http, "tuneyard_gateway_inference_replicas_up") == 2


def test_busy_warm_replica_gives_way_past_the_slack():
    async def check():
        settings = GatewaySettings(inference_addr="10.0.0.1:1,10.0.0.2:1", replica_affinity_slack=2)
        pool = ReplicaPool(
            settings,
            lambda addr: Backend(
                "inference", addr, "s", inference_pb2_grpc.InferenceServiceStub, settings
            ),
        )
        warm, cold = pool.replicas
        warm.loaded.add("emails")
        warm.in_flight = 2
        assert pool.pick("emails") is warm  # 2 more than the least busy: within the slack
        warm.in_flight = 3
        assert pool.pick("emails") is cold
        assert pool.pick("") is cold
        warm.down_until = time.monotonic() + 60
        warm.in_flight = 0
        assert pool.pick("emails") is cold  # marked down: skipped
        await pool.close()

    asyncio.run(check())


# --- adapters API -------------------------------------------------------------------------
def test_load_and_unload_reach_every_replica(http, direct):
    loaded = http.post("/v1/adapters/emails/load")
    assert loaded.status_code == 200 and loaded.json()["id"] == "emails@1"
    assert all("emails@1" in view.loaded() for view in direct)
    (entry,) = [a for a in http.get("/v1/adapters").json()["data"] if a["id"] == "emails@1"]
    assert entry["loaded"] is True and entry["state"] == "loaded"
    assert sorted(entry["replicas"]) == sorted(f"127.0.0.1:{v.running.port}" for v in direct)

    unloaded = http.post("/v1/adapters/emails/unload")
    assert unloaded.status_code == 200 and unloaded.json()["loaded"] is False
    assert not any("emails@1" in view.loaded() for view in direct)


def test_adapters_list_merges_the_replicas(http, direct):
    direct[1].load("notes")
    data = http.get("/v1/adapters").json()["data"]
    assert sorted(a["id"] for a in data) == ["emails@1", "notes@1"]  # each once
    by_id = {a["id"]: a for a in data}
    assert by_id["notes@1"]["loaded"] is True
    assert by_id["notes@1"]["replicas"] == [f"127.0.0.1:{direct[1].running.port}"]
    assert by_id["emails@1"]["loaded"] is False and by_id["emails@1"]["replicas"] == []


def test_unknown_adapter_is_404_from_every_route(http, direct):
    assert http.post("/v1/adapters/ghost/load").status_code == 404
    response = http.post("/generate", json={"inputs": "x", "parameters": {"adapter_id": "ghost"}})
    assert response.status_code == 404


def test_models_info_and_health(http):
    models = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert models[1:] == ["emails", "notes"]
    assert http.get("/info").json()["model_id"] == models[0]
    assert http.get("/health").status_code == 200


# --- failures ----------------------------------------------------------------------------
def test_stopped_replica_is_skipped(tiny_llama, adapters_dir, replicas):
    survivor = Direct(replicas[0])
    doomed = serve_inference(tiny_llama, adapters_dir)
    # No poll during the test: the failed call itself must find the replica gone.
    gateway = start_gateway(
        inference_addr=f"127.0.0.1:{replicas[0].port},127.0.0.1:{doomed.port}",
        trainer_addr=f"127.0.0.1:{free_port()}",
        replica_refresh_s=3600,
    )
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as http:
            _generate(http)
            _generate(http)  # both replicas have answered once: their channels are up
            doomed.stop(grace=0)
            before = survivor.served()
            start = time.monotonic()
            for index in range(4):
                _generate(http, stream=index % 2 == 1)
            assert time.monotonic() - start < 5
            assert survivor.served() - before == 4
            assert gateway_metric(http, "tuneyard_gateway_inference_replicas_up") == 1
            assert http.get("/health").status_code == 200
            assert http.get("/info").status_code == 200
            assert http.post("/v1/adapters/emails/load").status_code == 200
            assert "emails@1" in survivor.loaded()
    finally:
        gateway.stop()
        doomed.stop(grace=0)
        survivor.channel.close()


def test_every_replica_down_is_503():
    ports = [free_port(), free_port()]
    gateway = start_gateway(
        inference_addr=",".join(f"127.0.0.1:{p}" for p in ports),
        trainer_addr=f"127.0.0.1:{free_port()}",
    )
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            response = http.post("/generate", json={"inputs": "x"})
            assert response.status_code == 503
            assert "inference service unavailable" in response.json()["error"]
            assert http.get("/health").status_code == 503
            assert http.get("/v1/adapters").status_code == 503
    finally:
        gateway.stop()


# --- addresses ---------------------------------------------------------------------------
def test_dns_address_resolves_and_serves(replicas):
    port = replicas[0].port
    gateway = start_gateway(
        inference_addr=f"dns:///localhost:{port}", trainer_addr=f"127.0.0.1:{free_port()}"
    )
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as http:
            _generate(http)
            assert gateway_metric(
                http,
                "tuneyard_gateway_inference_replica_requests_total",
                replica=f"127.0.0.1:{port}",
            )
            assert gateway_metric(http, "tuneyard_gateway_inference_replicas") >= 1
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    ("addr", "words"),
    [
        ("inference", "is not host:port"),
        ("inference:http", "port must be a number"),
        ("a:1,,b:2", "empty entry"),
        ("dns://8.8.8.8/inference:50052", "dns:///name:port"),
        ("::1:50052", "[host]:port"),
        ("", "no replica address"),
    ],
)
def test_bad_inference_addr_is_a_settings_error(addr, words, monkeypatch):
    monkeypatch.setenv("TUNEYARD_INFERENCE_ADDR", addr)
    with pytest.raises(ValidationError) as raised:
        GatewaySettings()
    assert "inference_addr" in str(raised.value) and words in str(raised.value)
