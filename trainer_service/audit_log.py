"""Every mutating call through the gateway (who, what, when, with what result), in an
append-only SQLite table: triggers refuse any UPDATE or DELETE, so not even the trainer's
own code can rewrite what happened."""

import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from trainer_service import sqlite
from tuneyard.errors import InvalidArgument

MAX_LIST = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    effective_at REAL NOT NULL,
    project_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_project ON audit_events (project_id, seq);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True)
class AuditEvent:
    id: str
    type: str
    effective_at: float
    project_id: str
    key_id: str
    method: str
    path: str
    status_code: int
    result: str


class AuditLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite.connect(self.path, _SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(
        self,
        type: str,
        project_id: str,
        key_id: str,
        method: str,
        path: str,
        status_code: int,
    ) -> AuditEvent:
        if not type or not method or not path:
            raise InvalidArgument("an audit event needs a type, a method and a path", param="type")
        event = AuditEvent(
            id="audit_log-" + secrets.token_hex(8),
            type=type,
            effective_at=time.time(),
            project_id=project_id,
            key_id=key_id,
            method=method,
            path=path,
            status_code=status_code,
            result="success" if status_code < 400 else "failure",
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO audit_events (id, type, effective_at, project_id, key_id, method, "
                "path, status_code, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.id,
                    event.type,
                    event.effective_at,
                    event.project_id,
                    event.key_id,
                    event.method,
                    event.path,
                    event.status_code,
                    event.result,
                ),
            )
        return event

    def list(
        self,
        project_ids: list[str] | None = None,
        types: list[str] | None = None,
        after: str = "",
        limit: int = 20,
    ) -> tuple[list[AuditEvent], bool]:
        """Newest first, as OpenAI lists them; `after` is the last id of the previous page."""
        limit = min(limit or 20, MAX_LIST)
        query, args = "SELECT * FROM audit_events WHERE 1", []
        if project_ids:
            query += f" AND project_id IN ({','.join('?' * len(project_ids))})"
            args += project_ids
        if types:
            query += f" AND type IN ({','.join('?' * len(types))})"
            args += types
        if after:
            with self._lock:
                row = self._db.execute(
                    "SELECT seq FROM audit_events WHERE id = ?", (after,)
                ).fetchone()
            if row is None:
                raise InvalidArgument(f"after {after!r} is not an audit event id", param="after")
            query += " AND seq < ?"
            args.append(row["seq"])
        query += " ORDER BY seq DESC LIMIT ?"
        args.append(limit + 1)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        events = [AuditEvent(**{k: r[k] for k in AuditEvent.__dataclass_fields__}) for r in rows]
        return events[:limit], len(events) > limit
