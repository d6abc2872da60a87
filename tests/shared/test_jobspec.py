import pytest

from tests.conftest import EMAIL_TEMPLATE
from tuneyard.errors import InvalidArgument
from tuneyard.jobspec import JobSpec


def spec_dict(**overrides):
    data = {
        "adapter_name": "emails",
        "data": {"path": "/data/emails.jsonl"},
        "template": dict(EMAIL_TEMPLATE),
    }
    data.update(overrides)
    return data


def test_defaults_and_proto_round_trip():
    spec = JobSpec.parse(spec_dict(training={"max_steps": 5}))
    assert spec.recipe == "causal_lm"
    assert spec.lora.r == 16 and spec.training.max_steps == 5
    assert JobSpec.from_proto(spec.to_proto()) == spec


def test_every_bad_field_is_named():
    with pytest.raises(InvalidArgument) as err:
        JobSpec.parse(spec_dict(training={"batch_size": 0, "learning_rate": -1}, recipe="dpo"))
    message = str(err.value)
    assert "training.batch_size" in message
    assert "training.learning_rate" in message
    assert "recipe" in message


def test_unknown_field_is_refused():
    with pytest.raises(InvalidArgument, match="lora.rank: Extra inputs are not permitted"):
        JobSpec.parse(spec_dict(lora={"rank": 8}))


def test_bad_adapter_name_and_template():
    with pytest.raises(InvalidArgument, match="invalid adapter name"):
        JobSpec.parse(spec_dict(adapter_name="../x"))
    with pytest.raises(InvalidArgument, match="not valid Jinja"):
        JobSpec.parse(spec_dict(template={"prompt": "{% if %}", "response": "x"}))


def test_yaml_data_path_is_relative_to_the_spec(tmp_path):
    (tmp_path / "spec.yaml").write_text(
        "adapter_name: emails\n"
        "data: {path: data/emails.jsonl}\n"
        "template: {prompt: '{{ product }}', response: '{{ email }}'}\n"
    )
    spec = JobSpec.from_yaml(tmp_path / "spec.yaml")
    assert spec.data.path == str(tmp_path / "data" / "emails.jsonl")


def test_yaml_that_is_not_a_mapping(tmp_path):
    (tmp_path / "spec.yaml").write_text("- a\n- b\n")
    with pytest.raises(InvalidArgument, match="must be a mapping"):
        JobSpec.from_yaml(tmp_path / "spec.yaml")
