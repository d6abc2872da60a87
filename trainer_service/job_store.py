"""Jobs and their events in SQLite (WAL), so both survive a restart of the trainer.

Plain dataclasses go in and out (the spec typed, parsed once here); the servicer converts
them to proto messages. Writes come from the journal (trainer_service.journal), which
wakes watchers after each one.
"""

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer_service import sqlite
from tuneyard.errors import NotFound
from tuneyard.jobspec import JobSpec
from tuneyard.projects import DEFAULT_PROJECT, visible
from tuneyard.statuses import (
    CANCELLED,
    FAILED,
    PAUSED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    VALIDATING_FILES,
)

STATUSES = (VALIDATING_FILES, QUEUED, RUNNING, PAUSED, SUCCEEDED, FAILED, CANCELLED)


@dataclass
class JobError:
    code: str
    message: str
    param: str = ""
    line: int = 0


@dataclass
class Job:
    id: str
    status: str
    spec: JobSpec
    created_at: float
    started_at: float = 0.0
    finished_at: float = 0.0
    fine_tuned_model: str = ""
    error: JobError | None = None
    trained_tokens: int = 0
    estimated_finish: float = 0.0
    result_files: list[str] = field(default_factory=list)
    resumes: int = 0  # times resumed from a checkpoint (a trainer restart, a worker death)
    metadata: dict[str, str] = field(default_factory=dict)  # the client's (OpenAI's metadata)
    project: str = DEFAULT_PROJECT

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass
class Event:
    seq: int
    job_id: str
    created_at: float
    level: str
    message: str
    metrics: dict | None = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    rowid_order INTEGER,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0,
    fine_tuned_model TEXT NOT NULL DEFAULT '',
    error TEXT,
    trained_tokens INTEGER NOT NULL DEFAULT 0,
    estimated_finish REAL NOT NULL DEFAULT 0,
    result_files TEXT NOT NULL DEFAULT '[]',
    resumes INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}',
    project TEXT NOT NULL DEFAULT 'proj_default'
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    metrics TEXT
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
"""

# Columns a caller may change with `update`; JSON-valued ones are encoded on the way in.
_UPDATABLE = {
    "status",
    "started_at",
    "finished_at",
    "fine_tuned_model",
    "error",
    "trained_tokens",
    "estimated_finish",
    "result_files",
    "resumes",
}


def new_job_id() -> str:
    return "ftjob-" + secrets.token_hex(12)


class JobStore:
    """One SQLite connection shared by all threads behind a lock (writes are tiny)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite.connect(self.path, _SCHEMA)
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
        if "resumes" not in columns:  # a store written before resumes existed
            self._db.execute("ALTER TABLE jobs ADD COLUMN resumes INTEGER NOT NULL DEFAULT 0")
        if "metadata" not in columns:  # ... or before metadata did
            self._db.execute("ALTER TABLE jobs ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}'")
        if "project" not in columns:  # ... or before projects did
            self._db.execute(
                f"ALTER TABLE jobs ADD COLUMN project TEXT NOT NULL DEFAULT '{DEFAULT_PROJECT}'"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- jobs ----------------------------------------------------------------------------
    def create_job(
        self,
        spec: JobSpec,
        status: str = VALIDATING_FILES,
        metadata: dict | None = None,
        project: str = DEFAULT_PROJECT,
    ) -> Job:
        job = Job(
            id=new_job_id(),
            status=status,
            spec=spec,
            created_at=time.time(),
            metadata=dict(metadata or {}),
            project=project,
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, rowid_order, status, spec, created_at, metadata, project) "
                "VALUES (?, (SELECT COALESCE(MAX(rowid_order), 0) + 1 FROM jobs), ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.status,
                    spec.model_dump_json(),
                    job.created_at,
                    json.dumps(job.metadata),
                    job.project,
                ),
            )
        return job

    def get_job(self, job_id: str, project: str | None = None) -> Job:
        """NOT_FOUND as well for another project's job than `project`'s (None: any)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or not visible(project, row["project"]):
            raise NotFound(f"job {job_id!r} not found", param="job_id")
        return _job(row)

    def list_jobs(
        self,
        limit: int = 20,
        after: str = "",
        metadata: dict | None = None,
        project: str | None = None,
    ) -> tuple[list[Job], bool]:
        """Newest first; `after` is the id of the last job of the previous page; with
        `metadata`, only jobs that have every one of its key/values; with `project`, only
        that project's."""
        conditions, args = [], []
        if after:
            conditions.append("rowid_order < (SELECT rowid_order FROM jobs WHERE id = ?)")
            args.append(after)
            self.get_job(after, project)
        if project is not None:
            conditions.append("project = ?")
            args.append(project)
        for key, value in (metadata or {}).items():
            conditions.append(
                "EXISTS (SELECT 1 FROM json_each(jobs.metadata) WHERE key = ? AND value = ?)"
            )
            args += [key, value]
        query = "SELECT * FROM jobs"
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        query += " ORDER BY rowid_order DESC LIMIT ?"
        args.append(limit + 1)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [_job(r) for r in rows[:limit]], len(rows) > limit

    def jobs_with_status(self, *statuses: str) -> list[Job]:
        """Oldest first, so a recovered queue keeps its order."""
        marks = ",".join("?" * len(statuses))
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY rowid_order", statuses
            ).fetchall()
        return [_job(r) for r in rows]

    def unended_count(self, project: str) -> int:
        """A project's jobs that hold or wait for a training slot."""
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE project = ? AND status IN (?, ?, ?, ?)",
                (project, VALIDATING_FILES, QUEUED, RUNNING, PAUSED),
            ).fetchone()
        return count

    def trained_tokens_since(self, project: str, since: float) -> int:
        """Tokens a project's jobs trained that ran after `since`."""
        with self._lock:
            (total,) = self._db.execute(
                "SELECT COALESCE(SUM(trained_tokens), 0) FROM jobs WHERE project = ? "
                "AND (finished_at = 0 OR finished_at >= ?)",
                (project, since),
            ).fetchone()
        return total

    def count_by_status(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: n for status, n in rows})
        return counts

    def update(self, job_id: str, **fields) -> Job:
        assignments, values = _assignments(fields)
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ?", [*values, job_id]
            )
        if cursor.rowcount == 0:
            raise NotFound(f"job {job_id!r} not found", param="job_id")
        return self.get_job(job_id)

    def set_status(
        self, job_id: str, expected: str, status: str, event: tuple[str, str], **fields
    ) -> Job | None:
        """Compare and set: the job moves from `expected` to `status` with its `event`
        (message, level) and `fields`, in one transaction; None, and nothing written, when
        its status is no longer `expected` (another writer came first)."""
        assignments, values = _assignments({**fields, "status": status})
        message, level = event
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    f"UPDATE jobs SET {assignments} WHERE id = ? AND status = ?",
                    [*values, job_id, expected],
                )
                if cursor.rowcount:
                    self._db.execute(_INSERT_EVENT, (job_id, time.time(), level, message, None))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get_job(job_id) if cursor.rowcount else None

    # --- events --------------------------------------------------------------------------
    def add_event(
        self, job_id: str, message: str, level: str = "info", metrics: dict | None = None
    ) -> Event:
        now = time.time()
        with self._lock:
            cursor = self._db.execute(
                _INSERT_EVENT,
                (job_id, now, level, message, json.dumps(metrics) if metrics else None),
            )
        return Event(cursor.lastrowid, job_id, now, level, message, metrics)

    def events(self, job_id: str, after_seq: int = 0, limit: int = 0) -> list[Event]:
        query = "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq"
        args: list = [job_id, after_seq]
        if limit:
            query += " LIMIT ?"
            args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [
            Event(
                r["seq"],
                r["job_id"],
                r["created_at"],
                r["level"],
                r["message"],
                json.loads(r["metrics"]) if r["metrics"] else None,
            )
            for r in rows
        ]


_INSERT_EVENT = (
    "INSERT INTO events (job_id, created_at, level, message, metrics) VALUES (?, ?, ?, ?, ?)"
)


def _assignments(fields: dict) -> tuple[str, list]:
    """An UPDATE's "column = ?, ..." for `fields`, and their encoded values."""
    if unknown := set(fields) - _UPDATABLE:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    encoded = {k: _encode(k, v) for k, v in fields.items()}
    return ", ".join(f"{k} = ?" for k in encoded), list(encoded.values())


def _encode(key: str, value):
    if key == "error":
        return json.dumps(value.__dict__) if value else None
    if key == "result_files":
        return json.dumps(list(value))
    return value


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        status=row["status"],
        spec=JobSpec.model_validate_json(row["spec"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        fine_tuned_model=row["fine_tuned_model"],
        error=JobError(**json.loads(row["error"])) if row["error"] else None,
        trained_tokens=row["trained_tokens"],
        estimated_finish=row["estimated_finish"],
        result_files=json.loads(row["result_files"]),
        resumes=row["resumes"],
        metadata=json.loads(row["metadata"]),
        project=row["project"],
    )
