"""Each check type, ROUGE-L against hand-computed values, and check configs that must be
refused before anything runs."""

import json

import pytest

from trainer_service.evaluation.checks import Check, rouge_l, scorers
from tuneyard.errors import InvalidArgument


def score(check: Check, output: str, reference: str = "") -> float:
    return scorers([check])[0].score(output, reference)


def test_exact_match_ignores_surrounding_whitespace_only():
    assert score(Check("exact_match"), "  Hello there\n", "Hello there") == 1.0
    assert score(Check("exact_match"), "hello there", "Hello there") == 0.0


def test_contains_a_value_or_else_the_reference():
    assert score(Check("contains", value="Cheers,"), "ok\nCheers,\nTeam") == 1.0
    assert score(Check("contains", value="Cheers,"), "Best regards") == 0.0
    assert score(Check("contains"), "said: the answer is 42.", " the answer is 42") == 1.0


def test_regex_search_and_fullmatch():
    assert score(Check("regex", pattern=r"\d+"), "order 66 now") == 1.0
    assert score(Check("regex", pattern=r"\d+", fullmatch=True), "order 66 now") == 0.0
    assert score(Check("regex", pattern=r"order \d+ now", fullmatch=True), " order 66 now\n") == 1.0


def test_json_schema_validity_and_schema():
    schema = json.dumps(
        {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    )
    check = Check("json_schema", schema_json=schema)
    assert score(check, '{"name": "lamp"}') == 1.0
    assert score(check, '{"name": 3}') == 0.0
    assert score(check, "not json") == 0.0
    assert score(Check("json_schema"), "[1, 2]") == 1.0  # no schema: any valid JSON


def test_rouge_l_matches_hand_computed_values():
    # LCS of "the cat sat on the mat" / "the cat lay on the mat" = 5 of 6 and 6 tokens.
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # LCS 2 ("a c"); precision 2/3, recall 2/4 -> F1 = 4/7.
    assert rouge_l("a x c", "a b c d") == pytest.approx(4 / 7)
    assert rouge_l("same words", "same words") == 1.0
    assert rouge_l("", "something") == 0.0
    assert score(Check("rouge_l"), "the cat", "the cat") == 1.0


def test_default_checks_and_names():
    assert [s.name for s in scorers([])] == ["exact_match", "rouge_l"]
    assert scorers([Check("regex", name="format", pattern="x")])[0].name == "format"


@pytest.mark.parametrize(
    ("check", "words"),
    [
        (Check("bleu"), "unknown check type 'bleu'"),
        (Check("regex"), "needs a pattern"),
        (Check("regex", pattern="(unclosed"), "pattern does not compile"),
        (Check("json_schema", schema_json="{nope"), "schema_json is not valid JSON"),
        (Check("json_schema", schema_json='{"type": 12}'), "not a valid JSON schema"),
    ],
)
def test_bad_check_configs_are_refused(check, words):
    with pytest.raises(InvalidArgument, match="checks\\[0\\]") as err:
        scorers([check])
    assert words in err.value.message


def test_duplicate_check_names_are_refused():
    with pytest.raises(InvalidArgument, match="two checks are named 'rouge_l'"):
        scorers([Check("rouge_l"), Check("rouge_l")])
