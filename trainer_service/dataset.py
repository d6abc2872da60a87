"""Reading a job's data, shared by validation and the worker so both see the same rows,
the same column mapping and the same train/eval split.

Sources: a local JSONL / CSV / Parquet file, an uploaded file (by id), or a dataset read
with `datasets.load_dataset` (a hub id with config and split, or a local dataset folder).
An upload is read the same way before it is stored (`check_file`), so a file that was
accepted reads as training data."""

import csv
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trainer_service import preference
from trainer_service.files import FileStore
from tuneyard.errors import FailedPrecondition, InvalidArgument, NotFound
from tuneyard.jobspec import DataSpec
from tuneyard.templates import ChatTemplate, chat_messages

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SPLIT_FILE = "split.json"  # in a job's folder: which rows its worker trained on and held out


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line (JSONL), data row (CSV, after the header) or record number
    fields: dict


@dataclass(frozen=True)
class LoadedData:
    rows: list[Row]
    source: str  # a resolved file path or "dataset:<id>[/<config>]:<split>"
    sha256: str


class RowError(InvalidArgument):
    """A row (a line of a text file) that cannot be read; `reason` is the job error code
    validation gives it."""

    def __init__(self, reason: str, message: str, *, param: str, line: int):
        super().__init__(message, param=param, line=line)
        self.reason = reason


def load_data(data: DataSpec, files_root: Path) -> LoadedData:
    """The rows of the spec's source, columns mapped. Raises InvalidArgument naming the
    spec field and, for a bad row, its line."""
    if data.dataset:
        return _load_dataset(data)
    return _load_file(
        (data.file_id, "data.file_id"), (data.path, "data.path"), data.columns, files_root
    )


def load_eval_data(data: DataSpec, files_root: Path) -> LoadedData | None:
    """The rows of the spec's eval file (`data.eval_file_id` or `data.eval_path`), columns
    mapped as the training rows'; None when the eval split comes from the training rows."""
    if not data.has_eval_file:
        return None
    return _load_file(
        (data.eval_file_id, "data.eval_file_id"),
        (data.eval_path, "data.eval_path"),
        data.columns,
        files_root,
    )


def _load_file(
    file_id: tuple[str, str], path: tuple[str, str], columns: dict[str, str], files_root: Path
) -> LoadedData:
    """An uploaded file's or a local file's rows: (value, the spec field errors name) of
    each source, the file id first."""
    (file_id, file_param), (path, path_param) = file_id, path
    if file_id:
        param = file_param
        try:
            located = FileStore(files_root).path(file_id)
        except NotFound as err:
            raise InvalidArgument(err.message, param=param) from err
    else:
        located, param = Path(path), path_param
    rows = read_rows(located, columns, param)
    return LoadedData(rows, str(located.resolve()), file_sha256(located))


def read_rows(
    path: str | Path, columns: dict[str, str], param: str = "data.path", max_row_bytes: int = 0
) -> list[Row]:
    """A local file's rows; the format comes from its extension. Text formats (JSONL, CSV)
    must be UTF-8 without NUL bytes; a CSV row has as many fields as the header. With
    `max_row_bytes`, a row bigger than that is refused too. Errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"data file {path} does not exist", param=param)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InvalidArgument(
            f"data file {path.name}: unknown format {suffix or '(no extension)'!r}; "
            f"use {', '.join(FORMATS)}",
            param=param,
        )
    limit = _RowLimit(path.name, param, max_row_bytes)
    try:
        if suffix == ".csv":
            records = _read_csv(path, param, limit)
        elif suffix == ".parquet":
            records = _read_parquet(path, param, limit)
        else:
            records = _read_jsonl(path, param, limit)
    except OSError as err:
        raise InvalidArgument(f"cannot read data file {path}: {err.strerror}", param=param) from err
    return [_mapped(line, value, columns) for line, value in records]


def check_file(path: str | Path, max_row_bytes: int, param: str = "file") -> int:
    """What an uploaded file must pass before it is stored: it reads as training data
    (read_rows: a known format, UTF-8 text without NUL bytes, each JSONL line an object,
    CSV rows as wide as the header, a readable Parquet file), no row is bigger than
    `max_row_bytes`, it has at least one row, and a row in the preference format (`method:
    dpo`) or in OpenAI's chat format (`messages`, with `tools` and assistant `weight`s) is
    a whole one. Returns the number of rows."""
    path = Path(path)
    rows = read_rows(path, {}, param, max_row_bytes)
    if not rows:
        raise InvalidArgument(f"{path.name} has no rows", param=param)
    for row in rows:
        if preference.is_preference(row.fields):
            try:
                preference.parse(row.fields, row.line)
            except InvalidArgument as err:
                raise RowError(
                    "invalid_preference", f"{path.name} {err.message}", param=param, line=row.line
                ) from err
        elif isinstance(row.fields.get(ChatTemplate.MESSAGES), list):
            try:
                chat_messages(row.fields)
            except InvalidArgument as err:
                raise RowError(
                    "invalid_chat_row",
                    f"{path.name} line {row.line}: {err.message}",
                    param=param,
                    line=row.line,
                ) from err
    return len(rows)


def _mapped(line: int, value: dict, columns: dict[str, str]) -> Row:
    for field, column in columns.items():
        if column in value:
            value[field] = value[column]
    return Row(line, value)


@dataclass(frozen=True)
class _RowLimit:
    name: str
    param: str
    max_bytes: int  # 0: no limit

    def check(self, size: int, line: int, where: str) -> None:
        if self.max_bytes and size > self.max_bytes:
            raise RowError(
                "row_too_large",
                f"{self.name} {where}: the row has {size} bytes, more than the limit of "
                f"{self.max_bytes} bytes per row",
                param=self.param,
                line=line,
            )


def _text_lines(path: Path, param: str) -> Iterator[tuple[int, str, int]]:
    """A text file's lines as (number from 1, text, size in bytes), each checked to be
    UTF-8 without NUL bytes (a byte order mark at the start is dropped)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if b"\0" in raw:
                at = raw.index(b"\0") + 1
                raise RowError(
                    "invalid_file",
                    f"{path.name} line {number}: contains a NUL byte (at byte {at} of the "
                    "line); is it a binary file?",
                    param=param,
                    line=number,
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RowError(
                    "invalid_file",
                    f"{path.name} line {number}: not UTF-8 text: {err.reason} at byte "
                    f"{err.start + 1} of the line",
                    param=param,
                    line=number,
                ) from err
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield number, text, len(raw)


def _read_jsonl(path: Path, param: str, limit: _RowLimit) -> list[tuple[int, dict]]:
    records = []
    for number, text, size in _text_lines(path, param):
        if not text.strip():
            continue
        limit.check(size, number, f"line {number}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise RowError(
                "invalid_json",
                f"{path.name} line {number}: not valid JSON: {err.msg} (column {err.colno})",
                param=param,
                line=number,
            ) from err
        if not isinstance(value, dict):
            raise RowError(
                "invalid_json",
                f"{path.name} line {number}: a JSON {_json_type(value)}, expected an object",
                param=param,
                line=number,
            )
        records.append((number, value))
    return records


def _json_type(value) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _read_csv(path: Path, param: str, limit: _RowLimit) -> list[tuple[int, dict]]:
    """Row numbers count data rows (the header is line 1 of the file); errors name both."""
    line, read = 0, 0  # the last line the reader took, and the bytes it took so far

    def lines() -> Iterator[str]:
        nonlocal line, read
        for number, text, size in _text_lines(path, param):
            line, read = number, read + size
            yield text

    reader = csv.DictReader(lines())
    records = []
    try:
        width = len(reader.fieldnames or ())
        before = read
        for number, row in enumerate(reader, start=1):
            where = f"row {number} (line {line})"
            limit.check(read - before, number, where)
            before = read
            if None in row:  # the values past the header's width
                raise RowError(
                    "invalid_csv",
                    f"{path.name} {where}: {width + len(row[None])} fields, but the header "
                    f"has {width}",
                    param=param,
                    line=number,
                )
            if None in row.values():  # the header's columns the row did not reach
                got = sum(v is not None for v in row.values())
                raise RowError(
                    "invalid_csv",
                    f"{path.name} {where}: {got} fields, but the header has {width}",
                    param=param,
                    line=number,
                )
            records.append((number, dict(row)))
    except csv.Error as err:
        raise InvalidArgument(
            f"{path.name} line {line}: not valid CSV: {err}", param=param
        ) from err
    return records


def _read_parquet(path: Path, param: str, limit: _RowLimit) -> list[tuple[int, dict]]:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except pyarrow.ArrowException as err:
        raise InvalidArgument(
            f"{path.name} is not a readable Parquet file: {err}", param=param
        ) from err
    records = list(enumerate(table.to_pylist(), start=1))
    if limit.max_bytes:
        for number, record in records:
            # A record's size as JSON text: what a row of the same data weighs in JSONL.
            size = len(json.dumps(record, ensure_ascii=False, default=str).encode())
            limit.check(size, number, f"record {number}")
    return records


def _load_dataset(data: DataSpec) -> LoadedData:
    """`datasets.load_dataset`: a hub id (with config), a local dataset folder, or a local
    data file (read with the builder its extension names)."""
    import datasets

    split = data.split or "train"
    local = Path(data.dataset)
    try:
        if local.is_file():
            builder = FORMATS.get(local.suffix.lower())
            if builder is None:
                raise InvalidArgument(
                    f"data.dataset {local.name}: unknown format", param="data.dataset"
                )
            dataset = datasets.load_dataset(builder, data_files=str(local), split=split)
        else:
            dataset = datasets.load_dataset(data.dataset, data.config or None, split=split)
    except InvalidArgument:
        raise
    except Exception as err:  # DatasetNotFoundError, bad split or config, no network...
        first = str(err).splitlines()[0] if str(err) else ""
        raise InvalidArgument(
            f"cannot load dataset {data.dataset!r}"
            f"{f' (config {data.config!r})' if data.config else ''} split {split!r}: "
            f"{type(err).__name__}: {first}",
            param="data.dataset",
        ) from err
    rows = [
        _mapped(number, dict(record), data.columns)
        for number, record in enumerate(dataset, start=1)
    ]
    name = data.dataset + (f"/{data.config}" if data.config else "")
    digest = hashlib.sha256(dataset._fingerprint.encode()).hexdigest()
    return LoadedData(rows, f"dataset:{name}:{split}", digest)


def split_rows(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded shuffle split; returns (train, eval)."""
    n_eval = round(len(rows) * eval_fraction)
    if n_eval == 0:
        return list(rows), []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_eval])
    train = [r for i, r in enumerate(rows) if i not in held_out]
    return train, [r for i, r in enumerate(rows) if i in held_out]


@dataclass(frozen=True)
class Split:
    train: list[Row]
    eval: list[Row]
    source: str


def save_split(folder: Path, split: Split, sha256: str, eval_sha256: str = "") -> None:
    """Record the split by row numbers and the data's hash (and the eval file's, where the
    eval rows come from one): the evaluation of the job reads the same rows again, or
    learns that the data changed since."""
    record = {
        "source": split.source,
        "sha256": sha256,
        "eval_sha256": eval_sha256,
        "train": [r.line for r in split.train],
        "eval": [r.line for r in split.eval],
    }
    (folder / SPLIT_FILE).write_text(json.dumps(record))


def load_split(folder: Path, data: DataSpec, files_root: Path) -> Split | None:
    """The rows a job's worker trained on and held out, read again from its data; None when
    the job has no record of them (it never started)."""
    path = folder / SPLIT_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    loaded = load_data(data, files_root)
    # With an eval file, the eval rows' line numbers are that file's.
    eval_loaded = load_eval_data(data, files_root) or loaded
    for source, sha256 in ((loaded, record["sha256"]), (eval_loaded, record.get("eval_sha256"))):
        if sha256 and source.sha256 != sha256:
            raise FailedPrecondition(
                f"{source.source} changed since job {folder.name} trained on it, so its eval "
                "split is gone; give eval_file",
                param="eval_file",
            )
    by_line = {row.line: row for row in loaded.rows}
    eval_by_line = {row.line: row for row in eval_loaded.rows}
    return Split(
        [by_line[n] for n in record["train"]],
        [eval_by_line[n] for n in record["eval"]],
        loaded.source,
    )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
