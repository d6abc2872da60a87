"""The gateway's published API description (`/openapi.json`) says what the routes take and
what they answer: required fields, enums, each error status with the body really sent."""

import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings

TGI_ROUTES = {
    ("post", "/generate"),
    ("post", "/generate_stream"),
    ("post", "/"),
    ("post", "/tokenize"),
}
# Routes a key may be refused (403): the mutating ones and the organization API.
ADMIN_ROUTES = {
    ("post", "/v1/fine_tuning/jobs"),
    ("post", "/v1/fine_tuning/jobs/{job_id}/cancel"),
    ("post", "/v1/fine_tuning/jobs/{job_id}/pause"),
    ("post", "/v1/fine_tuning/jobs/{job_id}/resume"),
    ("post", "/v1/fine_tuning/jobs/{job_id}/checkpoints/{step}/publish"),
    ("post", "/v1/files"),
    ("delete", "/v1/files/{file_id}"),
    ("delete", "/v1/models/{model}"),
    ("post", "/v1/adapters/{adapter_id}/load"),
    ("post", "/v1/adapters/{adapter_id}/unload"),
    ("post", "/v1/adapters/{adapter_id}/promote"),
    ("post", "/v1/evaluations"),
    ("post", "/v1/evaluations/{evaluation_id}/cancel"),
}

# Answered by the gateway itself, never by a backend: no 503.
GATEWAY_ONLY_ROUTES = {("get", "/v1/permissions")}


@pytest.fixture(scope="module")
def schema() -> dict:
    return create_app(GatewaySettings()).openapi()


def _operations(schema):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            yield method, path, operation


def _model(response: dict) -> str:
    return response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]


def test_no_route_documents_fastapis_validation_body(schema):
    assert "HTTPValidationError" not in str(schema)
    for method, path, operation in _operations(schema):
        if path.startswith("/v1/") and (method, path) not in {
            ("post", "/v1/fine_tuning/jobs"),
            ("post", "/v1/fine_tuning/jobs/validate"),
        }:
            # Validation errors there are 400s; only a refused template is a 422.
            assert "422" not in operation["responses"], (method, path)


def test_each_error_status_is_documented_with_the_body_sent(schema):
    for method, path, operation in _operations(schema):
        responses = operation["responses"]
        errors = {int(s): r for s, r in responses.items() if int(s) >= 400}
        expected = "TgiError" if path in ("/", "/generate", "/generate_stream", "/tokenize",
                                          "/info", "/health") else "OpenAIError"  # fmt: skip
        assert errors, (method, path)
        assert {_model(r) for r in errors.values()} == {expected}, (method, path)
        assert (503 in errors) != ((method, path) in GATEWAY_ONLY_ROUTES), (method, path)
        if path != "/health":
            assert 401 in errors, (method, path)
        refusable = (method, path) in ADMIN_ROUTES or path.startswith("/v1/organization")
        assert (403 in errors) == refusable, (method, path)
        if (method, path) in TGI_ROUTES:
            assert 422 in errors, (method, path)
        if path.startswith("/v1/") and method == "post":
            assert 400 in errors, (method, path)


def test_error_models(schema):
    models = schema["components"]["schemas"]
    assert models["TgiError"]["required"] == ["error", "error_type"]
    assert models["OpenAIError"]["required"] == ["error"]
    assert sorted(models["OpenAIErrorDetail"]["required"]) == ["code", "message", "param", "type"]


def test_templates_refused_are_422_on_the_job_routes(schema):
    for path in ("/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/validate"):
        response = schema["paths"][path]["post"]["responses"]["422"]
        assert _model(response) == "OpenAIError" and "template" in response["description"]


def test_report_format_is_an_enum(schema):
    operation = schema["paths"]["/v1/evaluations/{evaluation_id}/report.{fmt}"]["get"]
    fmt = next(p for p in operation["parameters"] if p["name"] == "fmt")
    assert fmt["schema"]["enum"] == ["html", "md"]
    assert set(operation["responses"]["200"]["content"]) == {"text/html", "text/markdown"}


def test_file_content_is_documented_as_bytes(schema):
    operation = schema["paths"]["/v1/files/{file_id}/content"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"application/octet-stream"}


def test_health_documents_its_empty_answer(schema):
    operation = schema["paths"]["/health"]["get"]
    assert operation["responses"]["200"]["content"] == {}
    assert "security" not in operation


def test_streams_are_documented_as_event_streams(schema):
    paths = schema["paths"]
    assert set(paths["/generate_stream"]["post"]["responses"]["200"]["content"]) == {
        "text/event-stream"
    }
    for path, method in [
        ("/", "post"),
        ("/v1/completions", "post"),
        ("/v1/chat/completions", "post"),
        ("/v1/fine_tuning/jobs/{job_id}/events", "get"),
    ]:
        content = paths[path][method]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}, path


def test_required_fields_and_bounds(schema):
    models = schema["components"]["schemas"]
    assert models["CompletionRequest"]["required"] == ["model", "prompt"]
    assert models["ChatRequest"]["required"] == ["model", "messages"]
    job = models["CreateJobBody"]
    assert "required" not in job and job["additionalProperties"] is False
    tuneyard = job["properties"]["tuneyard"]
    assert "required" not in tuneyard  # the OpenAI fields and defaults give the rest
    assert tuneyard["properties"]["training"]["properties"]["batch_size"]["minimum"] == 1
    assert "$ref" not in str(tuneyard)  # inlined: the schema is whole
    evaluation = models["EvaluationSpec"]
    assert evaluation["additionalProperties"] is False
    assert evaluation["properties"]["arms"]["items"]["enum"] == ["zero_shot", "few_shot", "adapter"]
    assert models["Check"]["required"] == ["type"]


def test_routes_with_keys_name_the_bearer_scheme(schema):
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    for method, path, operation in _operations(schema):
        if path != "/health":
            assert operation["security"] == [{"apiKey": []}], (method, path)
