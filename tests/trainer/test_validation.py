import json
from pathlib import Path

import pytest

from tests.conftest import EMAIL_ROWS
from tests.trainer.conftest import make_spec
from trainer_service.validation import JobValidationError, printed_fields, validate
from tuneyard.templates import ALPACA_PROMPT

# No test here reads an uploaded file: a folder that does not exist is enough.
FILES = Path("/nonexistent-tuneyard-files")


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def fails(spec) -> JobValidationError:
    with pytest.raises(JobValidationError) as caught:
        validate(spec, FILES)
    return caught.value


def test_valid_spec_reports_rows_and_split(tiny_llama, email_jsonl):
    report = validate(make_spec(tiny_llama, email_jsonl, data={"eval_fraction": 0.25}), FILES)
    assert (report.rows, report.train_rows, report.eval_rows) == (12, 9, 3)
    assert 10 < report.max_tokens < 128 and report.too_long == 0 and not report.warnings


def test_missing_file(tiny_llama, tmp_path):
    err = fails(make_spec(tiny_llama, tmp_path / "nope.jsonl"))
    assert err.reason == "invalid_file" and err.param == "data.path"
    assert "nope.jsonl does not exist" in err.message


def test_bad_json_line_names_the_line(tiny_llama, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", [EMAIL_ROWS[0], EMAIL_ROWS[1], '{"product": '])
    err = fails(make_spec(tiny_llama, data))
    assert err.reason == "invalid_json" and err.line == 3 and "line 3" in err.message

    data = write_rows(tmp_path / "d.jsonl", [EMAIL_ROWS[0], "[1, 2]"])
    err = fails(make_spec(tiny_llama, data))
    assert err.line == 2 and "expected an object" in err.message


def test_missing_column_names_line_and_column(tiny_llama, tmp_path):
    rows = [dict(r) for r in EMAIL_ROWS[:3]]
    del rows[1]["email"]
    err = fails(make_spec(tiny_llama, write_rows(tmp_path / "d.jsonl", rows)))
    assert err.reason == "missing_column" and err.line == 2
    assert "'email'" in err.message


def test_column_mapping_is_applied(tiny_llama, tmp_path):
    rows = [
        {"product": r["product"], "description": r["description"], "body": r["email"]}
        for r in EMAIL_ROWS[:3]
    ]
    data = write_rows(tmp_path / "d.jsonl", rows)
    assert (
        validate(make_spec(tiny_llama, data, data={"columns": {"email": "body"}}), FILES).rows == 3
    )
    err = fails(make_spec(tiny_llama, data))
    assert err.reason == "missing_column"


def test_empty_field_names_line(tiny_llama, tmp_path):
    rows = [dict(r) for r in EMAIL_ROWS[:4]]
    rows[2]["description"] = "   "
    err = fails(make_spec(tiny_llama, write_rows(tmp_path / "d.jsonl", ["", *rows])))
    # Blank lines are skipped but still counted: the bad row is on line 4.
    assert err.reason == "empty_field" and err.line == 4 and "'description'" in err.message


def test_optional_field_may_be_missing(tiny_llama, tmp_path):
    assert printed_fields(ALPACA_PROMPT) == {"instruction"}
    rows = [
        {"instruction": "Say hi", "response": "Hi"},
        {"instruction": "Add", "context": "1+1", "response": "2"},
    ]
    spec = make_spec(
        tiny_llama,
        write_rows(tmp_path / "d.jsonl", rows),
        template={"prompt": ALPACA_PROMPT, "response": "{{ response }}"},
    )
    assert validate(spec, FILES).rows == 2


def test_template_that_does_not_render(tiny_llama, email_jsonl):
    spec = make_spec(tiny_llama, email_jsonl, template={"response": "{{ email[9999] }}"})
    err = fails(spec)
    assert err.reason == "template_error" and err.line == 1 and err.param == "template"
    err = fails(make_spec(tiny_llama, email_jsonl, template={"response": "{{ 1/0 }}"}))
    assert err.reason == "template_error" and err.line == 1 and "ZeroDivisionError" in err.message
    assert err.param == "template.response"


def test_an_added_token_the_base_already_has(tiny_llama, email_jsonl):
    err = fails(make_spec(tiny_llama, email_jsonl, added_tokens=["<email>", "<|endoftext|>"]))
    assert err.reason == "invalid_added_tokens" and err.param == "added_tokens"
    assert "already has ['<|endoftext|>']" in err.message


def test_unknown_base_model_folder(tmp_path, email_jsonl):
    err = fails(make_spec(tmp_path / "no-such-model", email_jsonl))
    assert err.reason == "invalid_base_model" and err.param == "base_model"
    assert "does not exist" in err.message


def test_zero_rows(tiny_llama, tmp_path):
    err = fails(make_spec(tiny_llama, write_rows(tmp_path / "d.jsonl", ["", "  "])))
    assert err.reason == "no_rows" and "no rows" in err.message


def test_empty_eval_split(tiny_llama, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", EMAIL_ROWS[:2])
    err = fails(make_spec(tiny_llama, data, data={"eval_fraction": 0.1}))
    assert err.reason == "empty_eval_split" and err.param == "data.eval_fraction"


def test_long_rows_are_reported_for_causal_lm(tiny_llama, email_jsonl):
    report = validate(make_spec(tiny_llama, email_jsonl, training={"max_seq_length": 16}), FILES)
    assert report.too_long == 12 and report.too_long_lines == [1, 2, 3, 4, 5]
    assert "12 of 12 rows are longer than max_seq_length=16" in report.warnings[0]
    assert "truncated" in report.warnings[0]
