"""The gateway's plain parts, without servers: request mapping, spec mapping, auth, labels,
stream merging."""

import asyncio
import math

import pytest
from starlette.requests import Request

from gateway.auth import ApiKeys, Caller
from gateway.errors import PermissionDenied, Unauthenticated, http_status, openai_body, tgi_body
from gateway.metrics import GatewayMetrics
from gateway.routes import jobs, tgi
from gateway.streams import merged
from tests.conftest import EMAIL_TEMPLATE
from tuneyard.errors import InvalidArgument
from tuneyard.metrics import BASE_LABEL, OTHER_LABEL, AdapterLabels
from tuneyard.projects import DEFAULT_PROJECT
from tuneyard.v1 import inference_pb2, trainer_pb2


def test_tgi_request_maps_set_fields_only():
    req = tgi.GenerateRequest(
        inputs="hi",
        parameters={
            "adapter_id": "emails@2",
            "max_new_tokens": 5,
            "temperature": None,
            "top_k": 3,
            "stop": ["\n"],
            "seed": 7,
            "do_sample": True,
            "best_of": None,
            "details": None,
        },
    )
    proto = tgi.to_proto(req)
    assert proto.inputs == "hi" and proto.adapter_id == "emails@2"
    p = proto.parameters
    assert p.max_new_tokens == 5 and p.top_k == 3 and p.seed == 7 and p.do_sample
    assert list(p.stop) == ["\n"]
    assert not p.HasField("temperature") and not p.HasField("top_p")
    assert p.details  # always asked for: the metrics need the token counts


def test_tgi_null_parameters_are_defaults():
    proto = tgi.to_proto(tgi.GenerateRequest(inputs="hi", parameters=None))
    assert proto.adapter_id == "" and not proto.parameters.HasField("max_new_tokens")


@pytest.mark.parametrize(
    "params, named",
    [
        ({"watermark": True}, "watermark"),
    ],
)
def test_tgi_unsupported_parameters_are_refused(params, named):
    with pytest.raises(ValueError, match=f"not supported by this server: {named}"):
        tgi.Parameters(**params)


def test_tgi_unsupported_parameters_at_defaults_pass():
    tgi.Parameters(best_of=1, watermark=False, grammar=None, top_n_tokens=None, typical_p=None)


def test_tgi_details_json():
    details = inference_pb2.GenerateDetails(
        finish_reason=inference_pb2.EOS_TOKEN,
        generated_tokens=2,
        prompt_tokens=3,
        seed=5,
        prefill=[
            inference_pb2.Token(id=1, text="a", logprob=float("nan")),
            inference_pb2.Token(id=2, text="b", logprob=-1.5),
        ],
        tokens=[inference_pb2.Token(id=3, text="c", logprob=float("nan"), special=True)],
    )
    body = tgi.details_json(details, decoder_input_details=True)
    assert body["finish_reason"] == "eos_token" and body["seed"] == 5
    assert body["prompt_tokens"] == 3  # LoRAX's field
    assert body["prefill"] == [
        {"id": 1, "text": "a", "logprob": None},
        {"id": 2, "text": "b", "logprob": -1.5},
    ]
    assert body["tokens"] == [{"id": 3, "text": "c", "logprob": None, "special": True}]
    assert tgi.details_json(details, decoder_input_details=False)["prefill"] == []
    details.ClearField("seed")
    assert tgi.stream_details_json(details) == {
        "finish_reason": "eos_token",
        "generated_tokens": 2,
        "seed": None,
        "input_length": 3,
        "prompt_tokens": 3,
    }
    assert not any(isinstance(v, float) and math.isnan(v) for v in body.values())


def test_status_mapping_per_api():
    assert http_status("INVALID_ARGUMENT", tgi=True) == 422
    assert http_status("INVALID_ARGUMENT", tgi=False) == 400
    assert http_status("FAILED_PRECONDITION", tgi=True) == 422
    assert http_status("FAILED_PRECONDITION", tgi=False) == 400
    assert http_status("NOT_FOUND", tgi=True) == http_status("NOT_FOUND", tgi=False) == 404
    assert http_status("RESOURCE_EXHAUSTED", tgi=True) == 429
    assert http_status("UNAVAILABLE", tgi=False) == 503
    assert http_status("DEADLINE_EXCEEDED", tgi=True) == 503
    assert http_status("INTERNAL", tgi=True) == 500
    assert tgi_body(429, "full") == {"error": "full", "error_type": "overloaded"}
    assert tgi_body(422, "bad")["error_type"] == "validation"
    assert openai_body(400, "INVALID_ARGUMENT", "bad", "x") == {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "x",
            "code": "invalid_argument",
        }
    }


def _caller(keys: ApiKeys, authorization: str | None = None, project: str = ""):
    headers = [(b"authorization", authorization.encode())] if authorization else []
    if project:
        headers.append((b"openai-project", project.encode()))
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": headers})
    return asyncio.run(keys.caller(request))


def test_api_keys():
    assert _caller(ApiKeys([], [])) == Caller("anonymous", None, "admin")
    keys = ApiKeys(["user"], ["root"])
    # A plain key reads and generates in the default project; an admin key is everyone.
    user = _caller(keys, "Bearer user")
    assert user.project == DEFAULT_PROJECT and not user.may_write and not user.admin
    assert _caller(keys, "bearer root") == Caller("key_env_admin_0", None, "admin")
    with pytest.raises(Unauthenticated, match="missing API key"):
        _caller(keys)
    with pytest.raises(Unauthenticated, match="missing API key"):
        _caller(keys, "Basic dXNlcg==")
    with pytest.raises(Unauthenticated, match="invalid API key"):
        _caller(keys, "Bearer nope")
    # Admin keys alone also close the read routes.
    with pytest.raises(Unauthenticated):
        _caller(ApiKeys([], ["root"]))


def test_an_admin_key_narrows_itself_to_a_project_and_no_other_key_may():
    keys = ApiKeys(["user"], ["root"])
    narrowed = _caller(keys, "Bearer root", project="proj_0123456789abcdef")
    assert narrowed.project == "proj_0123456789abcdef" and narrowed.admin
    with pytest.raises(PermissionDenied, match="another project"):
        _caller(keys, "Bearer user", project="proj_0123456789abcdef")
    with pytest.raises(InvalidArgument, match="not a project id") as refused:
        _caller(keys, "Bearer root", project="team-a")
    assert refused.value.param == "OpenAI-Project"
    # Naming its own project is no narrowing at all.
    assert _caller(keys, "Bearer user", project=DEFAULT_PROJECT).project == DEFAULT_PROJECT


def test_adapter_labels_are_capped():
    labels = AdapterLabels(limit=2)
    assert labels("") == BASE_LABEL
    assert labels("a@1") == "a" and labels("b") == "b"
    assert labels("c") == OTHER_LABEL
    assert labels("a@2") == "a"


def test_metrics_registry_per_instance():
    one, two = GatewayMetrics(5), GatewayMetrics(5)
    one.observe_generation("x@1", 4, 2, first_token_s=0.1, total_s=0.4)
    text = one.exposition().decode()
    assert 'tuneyard_gateway_generated_tokens_total{adapter="x"} 4.0' in text
    assert 'tuneyard_gateway_generations_total{adapter="x"} 1.0' in text
    assert "tuneyard_gateway_time_per_output_token_seconds_count" in text
    assert 'adapter="x"' not in two.exposition().decode()


def _body(**fields) -> jobs.CreateJobBody:
    return jobs.CreateJobBody(**fields)


def test_job_body_maps_to_spec(email_jsonl):
    spec = jobs.spec_from_body(
        _body(
            model="/models/base",
            training_file=str(email_jsonl),
            suffix="emails",
            seed=3,
            hyperparameters={"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5},
            tuneyard={"template": EMAIL_TEMPLATE, "training": {"max_steps": 2}},
        )
    )
    assert spec.base_model == "/models/base" and spec.adapter_name == "emails"
    assert spec.data.path == str(email_jsonl)
    assert spec.training.epochs == 2 and spec.training.batch_size == 4  # "auto": default
    assert spec.training.learning_rate == pytest.approx(1e-4)
    assert spec.training.seed == 3 and spec.training.max_steps == 2


def test_job_body_without_tuneyard_is_read_as_openai_would():
    """OpenAI's create takes chat rows and needs no suffix: nor does tuneyard's."""
    spec = jobs.spec_from_body(_body(model="/models/base", training_file="file-abc"))
    assert spec.template.builtin == "chat" and spec.recipe == "sft"
    assert spec.data.file_id == "file-abc"
    assert spec.adapter_name.startswith("ft-") and len(spec.adapter_name) == len("ft-") + 8
    other = jobs.spec_from_body(_body(model="/models/base", training_file="file-abc"))
    assert other.adapter_name != spec.adapter_name
    # A spec's own template and recipe stay as given.
    spec = jobs.spec_from_body(
        _body(training_file="/d.jsonl", suffix="s", tuneyard={"template": EMAIL_TEMPLATE})
    )
    assert spec.template.prompt == EMAIL_TEMPLATE["prompt"] and spec.recipe == "causal_lm"
    spec = jobs.spec_from_body(_body(training_file="/d.jsonl", method={"type": "dpo"}))
    assert spec.recipe == "dpo" and spec.template.builtin == "chat"


def test_job_body_conflict_and_bad_spec_name_the_field(email_jsonl):
    with pytest.raises(InvalidArgument, match="suffix='a' conflicts with tuneyard.adapter_name"):
        jobs.spec_from_body(_body(suffix="a", tuneyard={"adapter_name": "b"}))
    with pytest.raises(InvalidArgument, match="training.batch_size") as err:
        jobs.spec_from_body(
            _body(
                training_file=str(email_jsonl),
                suffix="a",
                tuneyard={"template": EMAIL_TEMPLATE, "training": {"batch_size": 0}},
            )
        )
    assert err.value.param == "training.batch_size"
    # The same value given twice (rounding aside) is no conflict.
    body = _body(
        training_file=str(email_jsonl),
        suffix="a",
        hyperparameters={"learning_rate_multiplier": 0.3},
        tuneyard={"template": EMAIL_TEMPLATE, "training": {"learning_rate": 6e-5}},
    )
    assert jobs.spec_from_body(body).training.learning_rate == pytest.approx(6e-5)
    with pytest.raises(InvalidArgument, match="tuneyard.data must be an object"):
        jobs.spec_from_body(_body(training_file="x", tuneyard={"data": "x"}))


def test_job_json_shape():
    job = trainer_pb2.Job(
        id="job-1",
        status=trainer_pb2.FAILED,
        created_at=10,
        finished_at=20,
        spec=trainer_pb2.JobSpec(
            base_model="base",
            adapter_name="emails",
            data=trainer_pb2.DataSpec(path="/d.jsonl"),
            training=trainer_pb2.TrainingSpec(learning_rate=4e-4, seed=1),
        ),
        error=trainer_pb2.JobError(
            code="invalid_file", message="row 3: no email", param="data.path", line=3
        ),
    )
    body = jobs.job_json(job)
    assert body["object"] == "fine_tuning.job" and body["status"] == "failed"
    assert body["error"] == {
        "code": "invalid_file",
        "message": "row 3: no email",
        "param": "data.path",
    }
    assert body["hyperparameters"] == {
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate_multiplier": pytest.approx(2.0),
    }
    assert body["fine_tuned_model"] is None and body["trained_tokens"] is None
    assert body["training_file"] == "/d.jsonl" and body["suffix"] == "emails"
    assert body["seed"] == 1 and body["finished_at"] == 20
    # An error about the eval file, found before or after the job was stored, names the
    # field the job object shows it in.
    for param in ("data.eval_file_id", "data.eval_path"):
        job.error.param = param
        assert jobs.job_json(job)["error"]["param"] == "validation_file"
    event = jobs.event_json(
        trainer_pb2.JobEvent(
            seq=4,
            created_at=11,
            level="info",
            message="step 1",
            metrics=trainer_pb2.Metrics(step=1, loss=2.5),
        )
    )
    assert event["id"] == "ftevent-4" and event["type"] == "metrics"
    assert event["data"] == {"step": 1, "loss": 2.5}
    assert jobs.event_json(trainer_pb2.JobEvent(seq=5))["type"] == "message"
    assert jobs.event_seq("ftevent-4") == 4
    with pytest.raises(InvalidArgument, match="invalid event id"):
        jobs.event_seq("4x")


def _stream(name: str, items: list, closed: list, end: str = "done"):
    """An async stream of `items` that then ends ("done"), fails ("fail") or waits for ever
    ("hang"); it notes its name in `closed` once closed."""

    async def stream():
        try:
            for item in items:
                yield item
                await asyncio.sleep(0)
            if end == "fail":
                raise InvalidArgument(f"{name} failed")
            if end == "hang":
                await asyncio.Event().wait()
        finally:
            closed.append(name)

    return stream()


def _read_merged(streams) -> list:
    async def read():
        async with merged(streams) as items:
            return [pair async for pair in items]

    return asyncio.run(read())


def test_merged_streams_keep_each_streams_order():
    closed: list[str] = []
    pairs = _read_merged([_stream("a", [1, 2, 3], closed), _stream("b", [4, 5], closed)])
    assert sorted(pairs) == [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5)]
    assert [item for index, item in pairs if index == 0] == [1, 2, 3]
    assert sorted(closed) == ["a", "b"]


def test_merged_streams_raise_a_failure_and_close_the_others():
    """The failing stream's own error reaches the reader, even while another stream is
    still being read; every stream is closed."""
    closed: list[str] = []
    streams = [
        _stream("a", [1], closed, end="hang"),
        _stream("b", [2], closed, end="fail"),
        _stream("c", [], closed, end="hang"),
    ]
    with pytest.raises(InvalidArgument, match="b failed"):
        _read_merged(streams)
    assert sorted(closed) == ["a", "b", "c"]
