"""Service-to-service authentication (tuneyard.service_auth): the real trainer and inference
servers in-process on loopback, locked with two tokens as during a rotation; called with
none, a wrong one, either right one; health and reflection open; the gateway's aio
clients carrying the token; no token in any log line or error message."""

import logging

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from inference_service.server import SERVICE_NAME as INFERENCE_SERVICE
from tests.support.services import serve_inference, start_gateway
from trainer_service.server import serve as serve_trainer
from trainer_service.settings import TrainerSettings
from tuneyard import service_auth
from tuneyard.config import CommonSettings, ServiceTokenError
from tuneyard.grpc_server import build_server
from tuneyard.local_stack import LocalStack
from tuneyard.v1 import inference_pb2, inference_pb2_grpc, trainer_pb2, trainer_pb2_grpc

pytestmark = pytest.mark.projects

OLD, NEW = "Zq8vXk2LwP4r-old", "Hd7sJm3NcY9t-new"
WRONG = "Rb5uTe1GaQ6w-wrong"
SECRETS = (OLD, NEW, WRONG)
INFO = inference_pb2.InfoRequest()
MISSING_JOB = trainer_pb2.GetJobRequest(job_id="ftjob-missing")


@pytest.fixture(autouse=True)
def every_log_line(caplog):
    """Everything logged in-process, down to DEBUG, for the checks that no token is in it."""
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    settings = TrainerSettings(
        home=tmp_path_factory.mktemp("home"),
        trainer_port=0,
        trainer_metrics_port=0,
        trainer_device="cpu",
        service_tokens=[NEW, OLD],
    )
    running = serve_trainer(settings)
    yield f"127.0.0.1:{running.port}"
    running.stop(grace=0)


@pytest.fixture(scope="module")
def inference(tiny_llama, tmp_path_factory):
    running = serve_inference(
        tiny_llama, tmp_path_factory.mktemp("adapters"), service_tokens=[NEW, OLD]
    )
    yield f"127.0.0.1:{running.port}"
    running.stop(grace=0)


def code_of(call) -> grpc.StatusCode:
    """The status code a call ends with: OK when it is answered."""
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def refusal(call) -> str:
    """What a refused call says; fails unless it is refused as UNAUTHENTICATED."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return caught.value.details()


def no_secret_in(text: str) -> None:
    """Not even the start of a token (pydantic shows long values cut: 'Zq8vX...')."""
    for token in SECRETS:
        assert token[:5] not in text


def calls(service: str, channel, metadata=None) -> dict:
    """A unary and a server-streaming call of the service (a stream is read to its end)."""
    if service == "inference":
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = inference_pb2.GenerateRequest(
            inputs="Hi", parameters=inference_pb2.GenerationParameters(max_new_tokens=2)
        )
        return {
            "unary": lambda: stub.Info(INFO, timeout=10, metadata=metadata),
            "stream": lambda: list(stub.GenerateStream(request, timeout=30, metadata=metadata)),
        }
    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
    watch = trainer_pb2.WatchJobRequest(job_id="ftjob-missing")
    return {
        "unary": lambda: stub.GetJob(MISSING_JOB, timeout=10, metadata=metadata),
        "stream": lambda: list(stub.WatchJob(watch, timeout=10, metadata=metadata)),
    }


# --- refused without the token -------------------------------------------------------------
@pytest.mark.parametrize("service", ["trainer", "inference"])
@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (("authorization", f"Bearer {WRONG}"),),
        (("authorization", OLD),),  # no scheme
        (("authorization", f"Basic {OLD}"),),
        (("authorization", f"Bearer {OLD}x"),),
        (("authorization", f"Bearer {OLD[:-1]}"),),
        (("authorization", "Bearer "),),
        (("x-service-token", OLD),),
    ],
    ids=["none", "wrong", "no-scheme", "basic", "longer", "shorter", "empty", "other-key"],
)
def test_a_call_without_an_accepted_token_is_unauthenticated(
    service, metadata, request, every_log_line
):
    with grpc.insecure_channel(request.getfixturevalue(service)) as channel:
        said = [refusal(call) for call in calls(service, channel, metadata).values()]
    for details in said:
        assert details == service_auth.REFUSED
        assert "TUNEYARD_SERVICE_TOKENS" in details
        no_secret_in(details)
    assert every_log_line.text.count("refused /tuneyard.v1.") == 2
    no_secret_in(every_log_line.text)


@pytest.mark.parametrize("service", ["trainer", "inference"])
def test_an_unknown_method_is_refused_alike_without_a_token(service, request):
    """The refusal does not tell which methods exist."""
    addr = request.getfixturevalue(service)
    with grpc.insecure_channel(addr) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/tuneyard.v1.Nothing/Here")(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with service_auth.client_channel(addr, [OLD]) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/tuneyard.v1.Nothing/Here")(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- answered with it ----------------------------------------------------------------------
@pytest.mark.parametrize("service", ["trainer", "inference"])
@pytest.mark.parametrize("tokens", [[OLD], [NEW], [NEW, WRONG]], ids=["old", "new", "first"])
def test_either_token_of_a_rotation_is_answered_unary_and_streaming(
    service, tokens, request, every_log_line
):
    with service_auth.client_channel(request.getfixturevalue(service), tokens) as channel:
        codes = {kind: code_of(call) for kind, call in calls(service, channel).items()}
    # Answered by the service itself (the trainer knows no such job).
    answer = grpc.StatusCode.OK if service == "inference" else grpc.StatusCode.NOT_FOUND
    assert codes == {"unary": answer, "stream": answer}
    assert "refused" not in every_log_line.text
    no_secret_in(every_log_line.text)


def test_the_client_sends_only_the_first_token(inference):
    """[WRONG, NEW]: the first is sent, so the call is refused though NEW is accepted."""
    with service_auth.client_channel(inference, [WRONG, NEW]) as channel:
        assert refusal(calls("inference", channel)["unary"]) == service_auth.REFUSED


def test_the_token_goes_with_the_caller_s_own_metadata(trainer):
    with service_auth.client_channel(trainer, [OLD]) as channel:
        own = calls("trainer", channel, metadata=(("x-request-id", "r1"),))
        assert code_of(own["unary"]) == code_of(own["stream"]) == grpc.StatusCode.NOT_FOUND


# --- open without it -----------------------------------------------------------------------
@pytest.mark.parametrize("service", ["trainer", "inference"])
def test_health_and_reflection_answer_without_a_token(service, request):
    with grpc.insecure_channel(request.getfixturevalue(service)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        asked = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = reflection.ServerReflectionInfo(iter([asked]), timeout=10)
        listed = {s.name for s in answer.list_services_response.service}
        assert "grpc.health.v1.Health" in listed
        ours = INFERENCE_SERVICE if service == "inference" else "tuneyard.v1.TrainerService"
        assert ours in listed


# --- the gateway's aio clients -------------------------------------------------------------
@pytest.fixture(scope="module")
def gateways(trainer, inference):
    def gateway(tokens):
        return start_gateway(trainer_addr=trainer, inference_addr=inference, service_tokens=tokens)

    right, wrong = gateway([OLD]), gateway([WRONG])
    yield right, wrong
    right.stop()
    wrong.stop()


def test_the_gateway_sends_the_token_on_unary_and_streaming_calls(gateways):
    right, _ = gateways
    with httpx.Client(base_url=right.url, timeout=60) as http:
        assert http.get("/info").status_code == 200  # inference, unary
        assert http.get("/v1/fine_tuning/jobs/ftjob-missing").status_code == 404  # trainer
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}
        with http.stream("POST", "/generate_stream", json=body) as stream:  # server stream
            assert stream.status_code == 200
            events = [line for line in stream.iter_lines() if line.startswith("data:")]
    assert len(events) == 2


def test_a_gateway_with_a_wrong_token_fails_as_a_server_error_not_a_401(gateways, every_log_line):
    """The end user's key was fine: a token the services refuse is the deployment's fault."""
    _, wrong = gateways
    with httpx.Client(base_url=wrong.url, timeout=60) as http:
        answers = [
            http.get("/info"),
            http.get("/v1/fine_tuning/jobs/ftjob-missing"),
            http.post("/generate_stream", json={"inputs": "Hi"}),
        ]
    for answer in answers:
        assert answer.status_code == 500, answer.text
        assert "refused its caller's service token" in answer.text
        no_secret_in(answer.text)
    no_secret_in(every_log_line.text)


# --- settings ------------------------------------------------------------------------------
def test_tokens_come_from_the_environment_as_a_list_hidden_in_reprs(monkeypatch):
    monkeypatch.setenv("TUNEYARD_SERVICE_TOKENS", f" {NEW} , {OLD},")
    settings = CommonSettings()
    assert service_auth.plain_tokens(settings.service_tokens) == [NEW, OLD]
    no_secret_in(repr(settings) + str(settings.model_dump()) + settings.model_dump_json())


def test_tokens_come_from_the_file_when_the_list_is_empty(monkeypatch, tmp_path):
    secret = tmp_path / "tokens"
    secret.write_text(f"{NEW}\n{OLD},\n\n")
    monkeypatch.setenv("TUNEYARD_SERVICE_TOKENS_FILE", str(secret))
    assert service_auth.plain_tokens(CommonSettings().service_tokens) == [NEW, OLD]
    monkeypatch.setenv("TUNEYARD_SERVICE_TOKENS", WRONG)  # the list wins
    assert service_auth.plain_tokens(CommonSettings().service_tokens) == [WRONG]
    # The trainer hands its settings on to the evaluation's (EvaluationSettings.of).
    from trainer_service.evaluation.settings import EvaluationSettings

    monkeypatch.delenv("TUNEYARD_SERVICE_TOKENS")
    evaluation = EvaluationSettings.of(TrainerSettings())
    assert service_auth.plain_tokens(evaluation.service_tokens) == [NEW, OLD]


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "No such file"), ("\n , \n", "holds no token")],
    ids=["missing", "empty"],
)
def test_a_file_that_gives_no_token_stops_the_start(content, words, monkeypatch, tmp_path):
    """Locked was meant: an unreadable or empty secret does not leave the ports open."""
    secret = tmp_path / "tokens"
    if content is not None:
        secret.write_text(content)
    monkeypatch.setenv("TUNEYARD_SERVICE_TOKENS_FILE", str(secret))
    with pytest.raises(ServiceTokenError, match=words):
        CommonSettings()


@pytest.mark.parametrize("bad", [f"{OLD} {NEW}", f"{OLD}\x01", f"{OLD}é"])
def test_a_token_metadata_cannot_carry_is_refused_without_showing_it(bad, monkeypatch):
    monkeypatch.setenv("TUNEYARD_SERVICE_TOKENS", f"{NEW},{bad}")
    with pytest.raises(ServiceTokenError, match="service token 2") as caught:
        CommonSettings()
    no_secret_in(str(caught.value))


def test_another_bad_setting_does_not_show_the_tokens(monkeypatch):
    """pydantic prints a model-level error with the whole input: not with ours."""
    monkeypatch.setenv("TUNEYARD_SERVICE_TOKENS", OLD)
    monkeypatch.setenv("TUNEYARD_MAX_INPUT_TOKENS", "4096")
    from inference_service.settings import InferenceSettings

    with pytest.raises(ValueError, match="max_input_tokens") as caught:
        InferenceSettings()
    no_secret_in(str(caught.value))


# --- no token configured -------------------------------------------------------------------
def test_without_a_token_a_server_is_open_and_says_so_once(every_log_line):
    server = build_server(max_workers=2)
    servicer = inference_pb2_grpc.InferenceServiceServicer()
    servicer.Info = lambda request, context: inference_pb2.InfoResponse(model_id="m")
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with service_auth.client_channel(f"127.0.0.1:{port}", []) as channel:
            reply = inference_pb2_grpc.InferenceServiceStub(channel).Info(INFO, timeout=10)
        assert reply.model_id == "m"
    finally:
        server.stop(0)
    warnings = [r for r in every_log_line.records if "no service token configured" in r.message]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_a_placeholder_token_is_warned_about(every_log_line):
    build_server(max_workers=1, service_tokens=["replace-me-with-a-token"]).stop(0)
    assert "placeholder" in every_log_line.text
    assert "replace-me-with-a-token" not in every_log_line.text


# --- the local stack -----------------------------------------------------------------------
def test_the_local_stack_locks_its_services_with_a_token_of_its_own(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNEYARD_SERVICE_TOKENS", raising=False)
    monkeypatch.delenv("TUNEYARD_SERVICE_TOKENS_FILE", raising=False)
    first, second = LocalStack(home=tmp_path), LocalStack(home=tmp_path)
    token = first.env()["TUNEYARD_SERVICE_TOKENS"]
    assert len(token) >= 40 and first.service_tokens == [token]  # token_urlsafe(32)
    assert second.env()["TUNEYARD_SERVICE_TOKENS"] != token


def test_the_local_stack_passes_configured_tokens_on(tmp_path, monkeypatch):
    secret = tmp_path / "tokens"
    secret.write_text(f"{NEW}\n{OLD}\n")
    stack = LocalStack(home=tmp_path, extra_env={"TUNEYARD_SERVICE_TOKENS_FILE": str(secret)})
    monkeypatch.delenv("TUNEYARD_SERVICE_TOKENS", raising=False)
    assert "TUNEYARD_SERVICE_TOKENS" not in stack.env()
    assert stack.service_tokens == [NEW, OLD]
    monkeypatch.setenv("TUNEYARD_SERVICE_TOKENS", OLD)
    assert stack.env()["TUNEYARD_SERVICE_TOKENS"] == OLD and stack.service_tokens == [OLD]
