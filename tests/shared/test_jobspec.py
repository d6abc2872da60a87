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


def test_dora_rslora_and_a_dequantized_merge_round_trip():
    spec = JobSpec.parse(
        spec_dict(
            lora={"use_dora": True, "use_rslora": True},
            quantization="4bit",
            merge=True,
            merge_dequantized=True,
        )
    )
    assert JobSpec.from_proto(spec.to_proto()) == spec


@pytest.mark.parametrize("quantization, merge", [("4bit", False), ("none", True)])
def test_a_dequantized_merge_needs_a_merge_of_a_quantized_job(quantization, merge):
    with pytest.raises(InvalidArgument, match="merge_dequantized needs merge and quantization"):
        JobSpec.parse(spec_dict(quantization=quantization, merge=merge, merge_dequantized=True))


def test_added_tokens_round_trip_and_their_refusals():
    spec = JobSpec.parse(spec_dict(added_tokens=["<email>", "</email>"]))
    assert JobSpec.from_proto(spec.to_proto()) == spec
    for added, merge, reason in (
        (["<email>"], True, "merge cannot be combined with added_tokens"),
        (["<email>", " "], False, "empty or blank tokens"),
        (["<email>", "<email>"], False, "duplicates"),
    ):
        with pytest.raises(InvalidArgument, match=reason):
            JobSpec.parse(spec_dict(added_tokens=added, merge=merge))


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


def test_every_field_is_documented_once_and_shown_everywhere_from_there():
    """The field docstrings are the one source: the README's table is what `reference()`
    writes, `tuneyard train --help` shows them, and the API schema carries them."""
    from pathlib import Path

    from tuneyard.cli import build_parser
    from tuneyard.jobspec import _fields, reference

    fields = list(_fields(JobSpec))
    assert all(field.description for _, field in fields), [
        path for path, field in fields if not field.description
    ]
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("<!-- jobspec-reference: start -->\n")[1].split("<!-- jobspec")[0]
    assert block == reference(), "README is stale: run python -m tuneyard.jobspec"
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    assert "  training.save_steps (int, 0): Steps between two checkpoints" in train.format_help()
    schema = JobSpec.model_json_schema()
    save_steps = schema["$defs"]["TrainingSpec"]["properties"]["save_steps"]
    assert save_steps["description"].startswith("Steps between two checkpoints")


def test_an_unset_choice_in_a_proto_takes_its_default():
    """proto3 strings have no presence: every field with fixed choices, at any depth, reads
    "" as "not set" without a list of them to keep up to date."""
    from tuneyard.v1 import trainer_pb2

    message = JobSpec.parse(spec_dict()).to_proto()
    message.recipe = message.quantization = ""
    message.lora.bias = message.training.optimizer = message.training.lr_scheduler = ""
    message.quantization_options.quant_type = message.quantization_options.compute_dtype = ""
    assert isinstance(message, trainer_pb2.JobSpec)
    assert JobSpec.from_proto(message) == JobSpec.parse(spec_dict())


def test_an_evaluation_is_read_in_either_spelling_and_kept_in_the_proto_s():
    """The proto's JSON names (camelCase) and its field names mean the same: a DPO job's
    evaluation file in camelCase is its evaluation file, as the proto parser reads it."""
    chat = {"builtin": "chat"}
    camel = {"evalFileId": "file-0123456789abcdef01234567", "maxNewTokens": 8, "seed": 7}
    spec = JobSpec.parse(spec_dict(recipe="dpo", template=chat, evaluation=camel))
    assert spec.evaluation == {
        "eval_file_id": "file-0123456789abcdef01234567",
        "max_new_tokens": 8,
        "seed": 7,
    }
    assert JobSpec.from_proto(spec.to_proto()) == spec
    snake = {"eval_file_id": "file-0123456789abcdef01234567", "max_new_tokens": 8, "seed": 7}
    assert JobSpec.parse(spec_dict(recipe="dpo", template=chat, evaluation=snake)) == spec
    # Without a file a DPO job cannot be evaluated, in either spelling.
    with pytest.raises(InvalidArgument, match="evaluates on a file"):
        JobSpec.parse(spec_dict(recipe="dpo", template=chat, evaluation={"maxNewTokens": 8}))
    with pytest.raises(InvalidArgument) as refused:
        JobSpec.parse(spec_dict(evaluation={"no_such_field": 1}))
    assert refused.value.param == "evaluation" and "no_such_field" in str(refused.value)
