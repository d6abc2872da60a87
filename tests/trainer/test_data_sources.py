"""Data sources (JSONL, CSV, Parquet, uploaded files, datasets.load_dataset on local
folders and files), templates (alpaca, chat, custom) and the spec's own checks."""

import csv
import json
from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest

from tests.conftest import EMAIL_ROWS
from tests.trainer.conftest import make_spec
from trainer_service.dataset import RowError, check_file, load_data
from trainer_service.files import FileStore
from trainer_service.settings import TrainerSettings
from trainer_service.validation import JobValidationError, validate
from tuneyard.errors import InvalidArgument, NotFound
from tuneyard.jobspec import JobSpec

NO_FILES = Path("/nonexistent-tuneyard-files")
DOLLY = [
    {"instruction": "Name a color.", "context": "", "response": "Blue.", "category": "open_qa"},
    {
        "instruction": "Summarise.",
        "context": "Cats sleep a lot.",
        "response": "Cats nap.",
        "category": "summarization",
    },
    {"instruction": "Add 2 and 2.", "context": "", "response": "4", "category": "open_qa"},
    {"instruction": "Say hi.", "context": "", "response": "Hi!", "category": "open_qa"},
]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("writer", [write_jsonl, write_csv, write_parquet])
def test_local_formats_give_the_same_rows(tmp_path, tiny_llama, writer):
    suffix = {write_jsonl: ".jsonl", write_csv: ".csv", write_parquet: ".parquet"}[writer]
    path = writer(tmp_path / f"emails{suffix}", EMAIL_ROWS)
    loaded = load_data(make_spec(tiny_llama, path).data, NO_FILES)
    assert [r.fields for r in loaded.rows] == EMAIL_ROWS
    assert [r.line for r in loaded.rows] == list(range(1, len(EMAIL_ROWS) + 1))
    assert loaded.source == str(path) and len(loaded.sha256) == 64
    assert validate(make_spec(tiny_llama, path), NO_FILES).rows == len(EMAIL_ROWS)


def test_unknown_format_and_bad_parquet(tmp_path, tiny_llama):
    text = tmp_path / "emails.txt"
    text.write_text("hello")
    with pytest.raises(JobValidationError) as caught:
        validate(make_spec(tiny_llama, text), NO_FILES)
    assert caught.value.reason == "invalid_file" and "unknown format '.txt'" in caught.value.message
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(JobValidationError, match="not a readable Parquet file"):
        validate(make_spec(tiny_llama, broken), NO_FILES)


def test_csv_missing_column_names_the_row(tmp_path, tiny_llama):
    rows = [dict(r) for r in EMAIL_ROWS[:3]]
    rows[2]["email"] = ""
    with pytest.raises(JobValidationError) as caught:
        validate(make_spec(tiny_llama, write_csv(tmp_path / "e.csv", rows)), NO_FILES)
    assert (caught.value.reason, caught.value.line) == ("empty_field", 3)


def test_uploaded_file_is_a_source(tmp_path, tiny_llama):
    files = FileStore(tmp_path / "files")
    content = write_jsonl(tmp_path / "x.jsonl", EMAIL_ROWS).read_bytes()
    info = files.put("emails.jsonl", "fine-tune", content)
    assert info.id.startswith("file-") and info.bytes == len(content)
    assert files.get(info.id) == info and files.list() == [info]
    assert files.path(info.id).read_bytes() == content

    spec = make_spec(tiny_llama, "x", data={"path": "", "file_id": info.id})
    assert validate(spec, files.root).rows == len(EMAIL_ROWS)
    missing = make_spec(tiny_llama, "x", data={"path": "", "file_id": "file-" + "0" * 24})
    with pytest.raises(JobValidationError) as caught:
        validate(missing, files.root)
    assert caught.value.param == "data.file_id" and "not found" in caught.value.message


@pytest.mark.parametrize(
    ("filename", "purpose", "content", "param"),
    [
        ("", "fine-tune", b"x", "filename"),
        ("a.jsonl", "assistants", b"x", "purpose"),
        ("a.jsonl", "fine-tune", b"", "file"),
    ],
)
def test_upload_errors(tmp_path, filename, purpose, content, param):
    with pytest.raises(InvalidArgument) as caught:
        FileStore(tmp_path).put(filename, purpose, content)
    assert caught.value.param == param


def test_a_refused_upload_leaves_nothing_stored(tmp_path):
    files = FileStore(tmp_path / "files", check=lambda path: check_file(path, 1024))
    with pytest.raises(InvalidArgument) as caught:
        files.put("d.jsonl", "fine-tune", b'{"a": 1}\n{"a": \n')
    assert (caught.value.param, caught.value.line) == ("file", 2)
    assert files.list() == [] and list(files.root.iterdir()) == []
    assert files.put("d.jsonl", "fine-tune", b'{"a": 1}\n').bytes == 9


def test_row_limit_is_the_trainers_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEYARD_MAX_ROW_BYTES", "100")
    limit = TrainerSettings(home=tmp_path).max_row_bytes
    assert limit == 100 and TrainerSettings.model_fields["max_row_bytes"].default == 1 << 20
    rows = [{"text": "x" * 10}, {"text": "x" * 200}]
    for path in (write_jsonl(tmp_path / "d.jsonl", rows), write_csv(tmp_path / "d.csv", rows)):
        with pytest.raises(RowError) as caught:
            check_file(path, limit)
        assert caught.value.reason == "row_too_large" and caught.value.line == 2
        assert check_file(path, 1000) == 2
    parquet = write_parquet(tmp_path / "d.parquet", rows)
    size = len(json.dumps(rows[1]))  # a Parquet record weighs what it would as JSON
    with pytest.raises(RowError, match=f"record 2: the row has {size} bytes"):
        check_file(parquet, limit)


def test_ragged_csv_row_fails_validation_naming_the_row(tmp_path, tiny_llama):
    path = tmp_path / "e.csv"
    path.write_text(write_csv(path, EMAIL_ROWS[:2]).read_text() + "a,b,c,d\n")
    with pytest.raises(JobValidationError) as caught:
        validate(make_spec(tiny_llama, path), NO_FILES)
    assert (caught.value.reason, caught.value.line) == ("invalid_csv", 3)
    assert "row 3 (line " in caught.value.message


def test_unknown_file_id_is_not_found(tmp_path):
    for file_id in ("file-" + "a" * 24, "../etc/passwd"):
        with pytest.raises(NotFound):
            FileStore(tmp_path).get(file_id)


def test_hub_code_path_with_a_local_folder_and_file(tmp_path, tiny_llama):
    """`data.dataset` goes through datasets.load_dataset, as a hub id would."""
    folder = tmp_path / "dolly"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", DOLLY)
    write_jsonl(folder / "test.jsonl", DOLLY[:2])
    base = {"path": "", "dataset": str(folder)}
    spec = make_spec(
        tiny_llama, "x", data=base, template={"builtin": "alpaca", "prompt": "", "response": ""}
    )
    report = validate(spec, NO_FILES)
    assert report.rows == 4 and report.data_source == f"dataset:{folder}:train"
    test_split = make_spec(
        tiny_llama,
        "x",
        data={**base, "split": "test"},
        template={"builtin": "alpaca", "prompt": "", "response": ""},
    )
    assert validate(test_split, NO_FILES).rows == 2
    one_file = make_spec(
        tiny_llama,
        "x",
        data={"path": "", "dataset": str(folder / "train.jsonl")},
        template={"builtin": "alpaca", "prompt": "", "response": ""},
    )
    assert validate(one_file, NO_FILES).rows == 4

    bad_split = make_spec(
        tiny_llama,
        "x",
        data={**base, "split": "nope"},
        template={"builtin": "alpaca", "prompt": "", "response": ""},
    )
    with pytest.raises(JobValidationError) as caught:
        validate(bad_split, NO_FILES)
    assert caught.value.param == "data.dataset" and "split 'nope'" in caught.value.message


def test_alpaca_with_and_without_context(tmp_path, tiny_llama):
    spec = JobSpec.parse(
        {"adapter_name": "a", "data": {"path": "x.jsonl"}, "template": {"builtin": "alpaca"}}
    )
    template = spec.template.build()
    with_context = template.render_prompt(DOLLY[1])
    assert (
        "### Input:\nCats sleep a lot." in with_context and "paired with an input" in with_context
    )
    without = template.render_prompt(DOLLY[0])
    assert "### Input" not in without and without.endswith("### Response:\n")
    assert template.render_response(DOLLY[0]) == "Blue."


def test_chat_template_renders_and_validates(tmp_path, tiny_llama):
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"Hi {i}"},
                {"role": "assistant", "content": f"Hello {i}"},
            ]
        }
        for i in range(4)
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", chats)
    spec = make_spec(
        tiny_llama, path, recipe="sft", template={"builtin": "chat", "prompt": "", "response": ""}
    )
    assert validate(spec, NO_FILES).rows == 4

    from tuneyard.modeling import load_tokenizer, resolve_base_model

    template = spec.template.build(load_tokenizer(resolve_base_model(str(tiny_llama))))
    assert (
        template.render_prompt(chats[0])
        == "<|im_start|>user\nHi 0<|im_end|>\n<|im_start|>assistant\n"
    )
    assert template.render_response(chats[0]) == "Hello 0<|im_end|>\n"

    chats[2]["messages"].pop()  # now ends with the user's turn
    write_jsonl(path, chats)
    with pytest.raises(JobValidationError) as caught:
        validate(spec, NO_FILES)
    assert (caught.value.reason, caught.value.line) == ("template_error", 3)
    assert "last message must be the assistant's" in caught.value.message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": {"path": "a.jsonl", "dataset": "org/ds"}}, "exactly one of"),
        ({"data": {"eval_fraction": 0.1}}, "exactly one of"),
        ({"data": {"path": "a.jsonl", "split": "test"}}, "apply to data.dataset only"),
        ({"template": {"builtin": "alpaca", "prompt": "x"}}, "not both"),
        ({"template": {"prompt": "x"}}, "needs builtin, or both"),
        ({"template": {"builtin": "chat"}}, "needs recipe 'sft'"),
        ({"lora": {"target_modules": ["all-linear", "q_proj"]}}, "cannot be combined"),
        ({"quantization_options": {"quant_type": "int3"}}, "quant_type"),
        ({"training": {"optimizer": "sgd"}}, "optimizer"),
        ({"lora": {"bias": "some"}}, "bias"),
    ],
)
def test_spec_errors(change, message):
    spec = {"adapter_name": "a", "data": {"path": "a.jsonl"}, "template": {"builtin": "alpaca"}}
    spec.update(change)
    with pytest.raises(InvalidArgument, match=message):
        JobSpec.parse(spec)


def test_every_knob_round_trips_through_the_proto():
    spec = JobSpec.parse(
        {
            "adapter_name": "a",
            "recipe": "sft",
            "data": {
                "dataset": "databricks/databricks-dolly-15k",
                "config": "c",
                "split": "train",
                "eval_fraction": 0.1,
            },
            "template": {"builtin": "alpaca"},
            "lora": {"r": 8, "bias": "lora_only", "target_modules": ["all-linear"]},
            "quantization": "4bit",
            "quantization_options": {
                "quant_type": "fp4",
                "double_quant": False,
                "compute_dtype": "float16",
            },
            "training": {
                "optimizer": "paged_adamw_8bit",
                "gradient_checkpointing": True,
                "eval_steps": 5,
                "save_steps": 10,
                "completion_only_loss": False,
                "packing": True,
            },
            "merge": True,
        }
    )
    assert JobSpec.from_proto(spec.to_proto()) == spec
