"""Constrained decoding on a random tiny model: whatever the weights say, the answer
matches the grammar, and a grammar that does not compile is refused before queueing."""

import json
import re

import pytest

from inference_service.params import GenerateInput, Parameters
from inference_service.sequence import EOS_TOKEN
from tuneyard.errors import InvalidArgument


def generate(engine, grammar, n: int = 40, **params):
    params = Parameters(max_new_tokens=n, details=True, grammar=grammar, **params)
    return engine.submit(GenerateInput(inputs="Answer:", parameters=params)).result(60)


def test_a_regex_is_matched_then_the_answer_ends(engine):
    result = generate(engine, ("regex", "(yes|no)"))
    assert result.generated_text in ("yes", "no")
    assert result.details.finish_reason == EOS_TOKEN
    pattern = "[0-9]{3}-[a-z]{2}"
    for seed in range(3):
        sampled = generate(engine, ("regex", pattern), do_sample=True, seed=seed)
        assert re.fullmatch(pattern, sampled.generated_text), sampled.generated_text


def test_a_json_schema_is_matched(engine):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "mood": {"enum": ["glad", "sad"]}},
        "required": ["ok", "mood"],
        "additionalProperties": False,
    }
    result = generate(engine, ("json", json.dumps(schema)), n=200)
    assert result.details.finish_reason == EOS_TOKEN, result.generated_text
    answer = json.loads(result.generated_text)
    assert set(answer) == {"ok", "mood"} and isinstance(answer["ok"], bool)
    assert answer["mood"] in ("glad", "sad")
    # Without the grammar the same model writes no such thing.
    free = engine.submit(
        GenerateInput(inputs="Answer:", parameters=Parameters(max_new_tokens=12))
    ).result(60)
    assert free.generated_text != result.generated_text


@pytest.mark.parametrize(
    "grammar, message",
    [
        (("regex", "("), "unclosed group"),
        (("json", "{not json"), "not valid JSON"),
        (("json", '{"type": "nope"}'), "nope"),
        (("lark", "start: x"), "grammar type 'lark' is not one of json, regex"),
    ],
)
def test_bad_grammars_are_refused(engine, grammar, message):
    with pytest.raises(InvalidArgument, match=re.escape(message)) as refused:
        generate(engine, grammar)
    assert refused.value.param == "grammar"
