"""The evaluation API through real servers: EvaluationService on a gRPC server (health,
reflection, status codes), the gateway's /v1/evaluations routes with keys, and
`tuneyard eval` against the gateway."""

import argparse
import io
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.services import start_gateway
from trainer_service.evaluation.servicer import SERVICE_NAME, add_to_server
from tuneyard.client import GatewayClient
from tuneyard.errors import InvalidArgument
from tuneyard.eval_cli import add_eval_parser, cmd_eval, spec_from_args
from tuneyard.grpc_server import add_health_and_reflection, build_server
from tuneyard.local_stack import free_port
from tuneyard.v1 import evaluation_pb2 as pb
from tuneyard.v1 import evaluation_pb2_grpc

ADMIN, USER = "admin-key", "user-key"


@pytest.fixture
def stack(make_service, inference):
    """(gRPC address of the evaluation service, gateway URL)."""
    service = make_service()
    service.start()
    server = build_server()
    health = add_health_and_reflection(server, [add_to_server(service, server)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    gateway = start_gateway(
        trainer_addr=f"127.0.0.1:{port}",
        inference_addr=f"127.0.0.1:{inference.port}",
        api_keys=[USER],
        admin_keys=[ADMIN],
    )
    yield f"127.0.0.1:{port}", gateway.url
    gateway.stop()
    health.enter_graceful_shutdown()
    server.stop(0).wait()


def body(heldout, train_rows, **fields) -> dict:
    spec = {
        "adapter_id": "email",
        "eval_file": str(heldout),
        "few_shot_file": str(train_rows),
        "max_new_tokens": 6,
        "limit": 2,
        "checks": [{"type": "contains", "value": "Hi"}, {"type": "rouge_l"}],
    }
    spec.update(fields)
    return spec


def wait(http, evaluation_id: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        evaluation = http.get(f"/v1/evaluations/{evaluation_id}").json()
        if evaluation["status"] in ("succeeded", "failed", "cancelled"):
            return evaluation
        time.sleep(0.2)
    raise AssertionError("evaluation did not end")


def test_grpc_service_health_and_errors(stack):
    addr, _ = stack
    with grpc.insecure_channel(addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = evaluation_pb2_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetEvaluation(pb.GetEvaluationRequest(evaluation_id="eval-nope"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateEvaluation(pb.CreateEvaluationRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec is required" in err.value.details()


def test_http_create_get_list_and_reports(stack, heldout, train_rows):
    _, url = stack
    with httpx.Client(
        base_url=url, timeout=60, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as http:
        created = http.post("/v1/evaluations", json=body(heldout, train_rows))
        assert created.status_code == 200, created.text
        assert created.json()["status"] in ("queued", "running")
        assert created.json()["adapter_id"] == "email@2"  # newest version
        evaluation = wait(http, created.json()["id"])
        assert evaluation["status"] == "succeeded", evaluation["error"]
        assert evaluation["object"] == "evaluation" and evaluation["rows"] == 2
        assert [a["name"] for a in evaluation["arms"]] == ["zero_shot", "few_shot", "adapter"]
        assert len(evaluation["examples"]) == 2 and len(evaluation["examples"][0]["outputs"]) == 3

        listed = http.get("/v1/evaluations").json()
        assert [e["id"] for e in listed["data"]] == [evaluation["id"]]

        markdown = http.get(f"/v1/evaluations/{evaluation['id']}/report.md")
        assert markdown.headers["content-type"].startswith("text/markdown")
        rows = [r for r in markdown.text.splitlines() if r.startswith("| ")][1:]
        for line, arm in zip(rows, evaluation["arms"], strict=True):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[0] == arm["name"]
            assert float(cells[3]) == pytest.approx(arm["eval_loss"], abs=5e-5)
            assert float(cells[5]) == pytest.approx(arm["checks"]["contains"], abs=5e-5)
            assert float(cells[6]) == pytest.approx(arm["checks"]["rouge_l"], abs=5e-5)
        page = http.get(f"/v1/evaluations/{evaluation['id']}/report.html")
        assert page.headers["content-type"].startswith("text/html")
        assert "<table id='arms'>" in page.text

        cancelled = http.post(f"/v1/evaluations/{evaluation['id']}/cancel").json()
        assert cancelled["status"] == "succeeded"  # a finished one stays as it is


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"checks": [{"type": "regex", "pattern": "("}]}, 400, "pattern does not compile"),
        # Refused by the gateway, naming the field (the spec's model in its OpenAPI).
        ({"checks": "rouge_l"}, 400, "checks: Input should be a valid list"),
        ({"checks": [{"kind": "rouge_l"}]}, 400, "checks.0.kind: Extra inputs are not permitted"),
        ({"adapter_id": "ghost"}, 404, "adapter 'ghost' not found"),
        ({"eval_file": "/no/such/file.jsonl"}, 400, "only from its data folders"),
    ],
)
def test_http_bad_input(stack, heldout, train_rows, change, status, words):
    _, url = stack
    headers = {"Authorization": f"Bearer {ADMIN}"}
    reply = httpx.post(
        f"{url}/v1/evaluations",
        json=body(heldout, train_rows, **change),
        headers=headers,
        timeout=30,
    )
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/evaluations", headers=headers).json()["data"] == []


def test_http_keys(stack, heldout, train_rows):
    _, url = stack
    no_key = httpx.post(f"{url}/v1/evaluations", json=body(heldout, train_rows))
    assert no_key.status_code == 401
    user = {"Authorization": f"Bearer {USER}"}
    assert httpx.post(f"{url}/v1/evaluations", json={}, headers=user).status_code == 403
    assert httpx.get(f"{url}/v1/evaluations", headers=user).status_code == 200
    missing = httpx.get(f"{url}/v1/evaluations/eval-nope/report.html", headers=user)
    assert missing.status_code == 404


def parse(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *argv])


def test_cli_eval_prints_the_table(stack, heldout, train_rows, tmp_path):
    _, url = stack
    regex = tmp_path / "format.regex"
    regex.write_text(r"[\s\S]*" + "\n")
    args = parse(
        [
            "email@1",
            "--eval-file",
            str(heldout),
            "--few-shot-file",
            str(train_rows),
            "--format-regex",
            str(regex),
            "--max-new-tokens",
            "4",
            "--limit",
            "1",
            "--compare",
            "email@2",
            "--save-report",
            str(tmp_path / "r.html"),
        ]
    )
    out = io.StringIO()
    assert cmd_eval(args, GatewayClient(url, ADMIN), out=out) == 0
    text = out.getvalue()
    assert "arm" in text and "format" in text and "rouge_l" in text
    assert "email@2" in text and "report: " in text
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")


def test_cli_checks_file_that_does_not_parse(tmp_path, heldout):
    bad = tmp_path / "checks.yaml"
    bad.write_text("- type: regex\n  pattern: [unclosed\n")
    with pytest.raises(InvalidArgument, match="checks file"):
        spec_from_args(parse(["email", "--eval-file", str(heldout), "--checks", str(bad)]))
    bad.write_text("type: rouge_l\n")
    with pytest.raises(InvalidArgument, match="expected a list"):
        spec_from_args(parse(["email", "--eval-file", str(heldout), "--checks", str(bad)]))
    good = tmp_path / "good.yaml"
    good.write_text("- {type: exact_match}\n")
    spec = spec_from_args(
        parse(["email", "--eval-file", str(heldout), "--checks", str(good), "--arms", "adapter"])
    )
    assert spec["checks"] == [{"type": "exact_match"}, {"type": "rouge_l"}]
    assert spec["arms"] == ["adapter"] and spec["eval_file"] == str(heldout.resolve())


def test_cli_unreachable_gateway_is_an_error(heldout):
    args = parse(["email", "--eval-file", str(heldout)])
    with pytest.raises(httpx.TransportError):
        cmd_eval(args, GatewayClient(f"http://127.0.0.1:{free_port()}"), out=io.StringIO())
