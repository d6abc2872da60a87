"""Reading a job's data, shared by validation and the worker so both see the same rows,
the same column mapping and the same train/eval split.

Sources: a local JSONL / CSV / Parquet file, an uploaded file (by id), or a dataset read
with `datasets.load_dataset` (a hub id with config and split, or a local dataset folder)."""

import csv
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from trainer_service.files import FileStore
from tuneyard.errors import InvalidArgument, NotFound
from tuneyard.jobspec import DataSpec

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line (JSONL), data row (CSV, after the header) or record number
    fields: dict


@dataclass(frozen=True)
class LoadedData:
    rows: list[Row]
    source: str  # a resolved file path or "dataset:<id>[/<config>]:<split>"
    sha256: str


def load_data(data: DataSpec, files_root: Path) -> LoadedData:
    """The rows of the spec's source, columns mapped. Raises InvalidArgument naming the
    spec field and, for a bad row, its line."""
    if data.dataset:
        return _load_dataset(data)
    if data.file_id:
        try:
            path = FileStore(files_root).path(data.file_id)
        except NotFound as err:
            raise InvalidArgument(err.message, param="data.file_id") from err
        param = "data.file_id"
    else:
        path, param = Path(data.path), "data.path"
    rows = read_rows(path, data.columns, param)
    return LoadedData(rows, str(path.resolve()), file_sha256(path))


def read_rows(path: str | Path, columns: dict[str, str], param: str = "data.path") -> list[Row]:
    """A local file's rows; the format comes from its extension."""
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
    try:
        if suffix == ".csv":
            records = _read_csv(path)
        elif suffix == ".parquet":
            records = _read_parquet(path, param)
        else:
            records = _read_jsonl(path, param)
    except UnicodeDecodeError as err:
        raise InvalidArgument(f"{path.name} is not UTF-8 text: {err.reason}", param=param) from err
    except OSError as err:
        raise InvalidArgument(f"cannot read data file {path}: {err.strerror}", param=param) from err
    return [_mapped(line, value, columns) for line, value in records]


def _mapped(line: int, value: dict, columns: dict[str, str]) -> Row:
    for field, column in columns.items():
        if column in value:
            value[field] = value[column]
    return Row(line, value)


def _read_jsonl(path: Path, param: str) -> list[tuple[int, dict]]:
    records = []
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise InvalidArgument(
                    f"{path.name} line {number} is not valid JSON: {err.msg}",
                    param=param,
                    line=number,
                ) from err
            if not isinstance(value, dict):
                raise InvalidArgument(
                    f"{path.name} line {number} is a JSON {type(value).__name__}, "
                    "expected an object",
                    param=param,
                    line=number,
                )
            records.append((number, value))
    return records


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    with path.open(encoding="utf-8", newline="") as f:
        # Row numbers count data rows; the header is line 1 of the file.
        return [(number, dict(row)) for number, row in enumerate(csv.DictReader(f), start=1)]


def _read_parquet(path: Path, param: str) -> list[tuple[int, dict]]:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except pyarrow.ArrowException as err:
        raise InvalidArgument(
            f"{path.name} is not a readable Parquet file: {err}", param=param
        ) from err
    return list(enumerate(table.to_pylist(), start=1))


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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
