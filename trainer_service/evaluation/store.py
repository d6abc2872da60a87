"""Evaluations in SQLite (their own file beside the jobs DB), so they survive a restart.
The spec is kept as the proto's JSON, the result as plain JSON."""

import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from trainer_service import sqlite
from tuneyard.errors import NotFound
from tuneyard.projects import DEFAULT_PROJECT, visible
from tuneyard.statuses import QUEUED, TERMINAL


@dataclass
class Evaluation:
    id: str
    status: str
    spec: dict  # EvaluationSpec as proto JSON (field names as in the proto)
    created_at: float
    started_at: float = 0.0
    finished_at: float = 0.0
    error: str = ""
    adapter_id: str = ""
    eval_source: str = ""
    rows: int = 0
    done_requests: int = 0
    total_requests: int = 0
    result: dict = field(default_factory=dict)  # runner.Result as a dict: arms, examples
    report_markdown: str = ""
    report_html: str = ""
    # The job whose spec asked for this evaluation: its reports join the job's result_files
    # when it ends, after a trainer restart too.
    for_job: str = ""
    project: str = DEFAULT_PROJECT  # evaluations from before projects are the default's

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id TEXT PRIMARY KEY,
    ord INTEGER NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS evaluations_by_status ON evaluations (status);
"""


def new_evaluation_id() -> str:
    return "eval-" + secrets.token_hex(12)


class EvaluationStore:
    """The whole record as one JSON body: evaluations are few and written a few times each."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite.connect(self.path, _SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, spec: dict, **fields) -> Evaluation:
        evaluation = Evaluation(new_evaluation_id(), QUEUED, spec, time.time(), **fields)
        with self._lock:
            self._db.execute(
                "INSERT INTO evaluations (id, ord, status, body) VALUES "
                "(?, (SELECT COALESCE(MAX(ord), 0) + 1 FROM evaluations), ?, ?)",
                (evaluation.id, evaluation.status, json.dumps(asdict(evaluation))),
            )
        return evaluation

    def get(self, evaluation_id: str, project: str | None = None) -> Evaluation:
        """NOT_FOUND as well for another project's evaluation than `project`'s (None: any)."""
        with self._lock:
            evaluation = self._get(evaluation_id)
        if not visible(project, evaluation.project):
            raise NotFound(f"evaluation {evaluation_id!r} not found", param="evaluation_id")
        return evaluation

    def update(self, evaluation_id: str, **fields) -> Evaluation:
        """Progress and result fields; the status only through `set_status`."""
        if "status" in fields:
            raise ValueError("the status is written by set_status")
        with self._lock:
            return self._write(replace(self._get(evaluation_id), **fields))

    def set_status(
        self, evaluation_id: str, expected: tuple[str, ...], status: str, **fields
    ) -> Evaluation | None:
        """Compare and set: to `status` (with `fields`) from one of `expected`; None, and
        nothing written, when another writer moved it on first."""
        with self._lock:
            evaluation = self._get(evaluation_id)
            if evaluation.status not in expected:
                return None
            return self._write(replace(evaluation, status=status, **fields))

    def _write(self, evaluation: Evaluation) -> Evaluation:
        self._db.execute(
            "UPDATE evaluations SET status = ?, body = ? WHERE id = ?",
            (evaluation.status, json.dumps(asdict(evaluation)), evaluation.id),
        )
        return evaluation

    def _get(self, evaluation_id: str) -> Evaluation:
        row = self._db.execute(
            "SELECT body FROM evaluations WHERE id = ?", (evaluation_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"evaluation {evaluation_id!r} not found", param="evaluation_id")
        return Evaluation(**json.loads(row[0]))

    def list_evaluations(
        self, limit: int = 20, after: str = "", project: str | None = None
    ) -> tuple[list[Evaluation], bool]:
        """Newest first; `after` is the id of the last one of the previous page; with
        `project`, that project's only."""
        query, args = "SELECT body FROM evaluations WHERE 1", []
        if after:
            self.get(after, project)
            query += " AND ord < (SELECT ord FROM evaluations WHERE id = ?)"
            args.append(after)
        if project is not None:
            query += " AND COALESCE(json_extract(body, '$.project'), ?) = ?"
            args += [DEFAULT_PROJECT, project]
        query += " ORDER BY ord DESC LIMIT ?"
        args.append(limit + 1)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [Evaluation(**json.loads(r[0])) for r in rows[:limit]], len(rows) > limit

    def with_status(self, *statuses: str) -> list[Evaluation]:
        """Oldest first."""
        marks = ",".join("?" * len(statuses))
        with self._lock:
            rows = self._db.execute(
                f"SELECT body FROM evaluations WHERE status IN ({marks}) ORDER BY ord", statuses
            ).fetchall()
        return [Evaluation(**json.loads(r[0])) for r in rows]
