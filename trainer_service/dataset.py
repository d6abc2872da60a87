"""Reading a job's JSONL data, shared by validation and the worker so both see the same
rows, the same column mapping and the same train/eval split."""

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tuneyard.errors import InvalidArgument


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line of the data file
    fields: dict


def read_rows(path: str | Path, columns: dict[str, str]) -> list[Row]:
    """Every non-blank line as a JSON object; `columns` (template field -> column) adds
    each mapped column under its field name. Raises InvalidArgument naming the line."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"data file {path} does not exist", param="data.path")
    rows = []
    try:
        with path.open(encoding="utf-8") as f:
            for number, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as err:
                    raise InvalidArgument(
                        f"{path.name} line {number} is not valid JSON: {err.msg}",
                        param="data.path",
                        line=number,
                    ) from err
                if not isinstance(value, dict):
                    raise InvalidArgument(
                        f"{path.name} line {number} is a JSON {type(value).__name__}, "
                        "expected an object",
                        param="data.path",
                        line=number,
                    )
                for field, column in columns.items():
                    if column in value:
                        value[field] = value[column]
                rows.append(Row(number, value))
    except UnicodeDecodeError as err:
        raise InvalidArgument(
            f"{path.name} is not UTF-8 text: {err.reason}", param="data.path"
        ) from err
    except OSError as err:
        raise InvalidArgument(
            f"cannot read data file {path}: {err.strerror}", param="data.path"
        ) from err
    return rows


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
