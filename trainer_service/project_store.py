"""Projects, their service accounts and API keys, their rate limits and their usage, in one
SQLite file the trainer owns (the gateway replicas reach it through ProjectService, so a
deleted key or a used-up limit is the same answer on every replica).

Keys are stored as HMAC-SHA256 under a server secret, never as themselves. A slow hash
(bcrypt, scrypt) protects guessable passwords; these keys are 256 random bits, which no
one guesses, and each request must be checked in microseconds, by a digest the store can
look up. The secret means a copy of the database alone cannot check a candidate key."""

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from trainer_service import sqlite
from tuneyard.errors import InvalidArgument, NotFound, Unauthenticated
from tuneyard.projects import DEFAULT_PROJECT, DEFAULT_PROJECT_NAME

KEY_PREFIX = "sk-proj-"
FINE_TUNING_LIMIT = "rl-fine-tuning"
MAX_NAME = 128
MAX_LIST = 100
MINUTE_S = 60


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    created_at: float
    archived_at: float

    @property
    def status(self) -> str:
        return "archived" if self.archived_at else "active"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    redacted_value: str
    created_at: float
    last_used_at: float
    project_id: str
    service_account_id: str
    service_account_name: str
    value: str = ""  # only when just created


@dataclass(frozen=True)
class ServiceAccount:
    id: str
    name: str
    role: str
    created_at: float
    project_id: str
    api_key: ApiKey | None = None


@dataclass(frozen=True)
class RateLimit:
    """`max_*` None: no limit."""

    id: str
    model: str
    max_requests_per_1_minute: int | None = None
    max_tokens_per_1_minute: int | None = None
    max_concurrent_jobs: int | None = None
    max_trained_tokens_per_1_day: int | None = None


@dataclass(frozen=True)
class LimitState:
    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True)
class Admission:
    allowed: bool
    requests: LimitState | None
    tokens: LimitState | None


LIMIT_FIELDS = (
    "max_requests_per_1_minute",
    "max_tokens_per_1_minute",
    "max_concurrent_jobs",
    "max_trained_tokens_per_1_day",
)
MODEL_LIMITS = LIMIT_FIELDS[:2]
TRAINING_LIMITS = LIMIT_FIELDS[2:]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    archived_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS service_accounts (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at REAL NOT NULL,
    deleted_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL,
    service_account_id TEXT NOT NULL,
    service_account_name TEXT NOT NULL,
    name TEXT NOT NULL,
    redacted_value TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used_at REAL NOT NULL DEFAULT 0,
    deleted_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rate_limits (
    project_id TEXT NOT NULL,
    model TEXT NOT NULL,
    max_requests_per_1_minute INTEGER,
    max_tokens_per_1_minute INTEGER,
    max_concurrent_jobs INTEGER,
    max_trained_tokens_per_1_day INTEGER,
    PRIMARY KEY (project_id, model)
);
CREATE TABLE IF NOT EXISTS usage (
    project_id TEXT NOT NULL,
    model TEXT NOT NULL,
    window_start REAL NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, model, window_start)
);
"""


def rate_limit_id(model: str) -> str:
    """OpenAI's `rl-<model>`, from the model's last path component."""
    return "rl-" + model.rstrip("/").rsplit("/", 1)[-1]


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


def _name(name: str, what: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidArgument(
            f"a {what} needs a name of 1-{MAX_NAME} printable characters", param="name"
        )
    return name


class ProjectStore:
    """One SQLite connection shared by all threads behind a lock, as the job store's."""

    def __init__(self, path: Path, secret: bytes, window_s: float = MINUTE_S):
        """`window_s`: the rate limits' window, OpenAI's minute unless a test shortens it."""
        self.path = Path(path)
        self.window_s = window_s
        self._secret = secret
        self._lock = threading.Lock()
        self._db = sqlite.connect(self.path, _SCHEMA)
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO projects (id, seq, name, created_at) VALUES (?, 0, ?, ?)",
                (DEFAULT_PROJECT, DEFAULT_PROJECT_NAME, time.time()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- projects ------------------------------------------------------------------------
    def create_project(self, name: str) -> Project:
        project = Project(_new_id("proj_"), _name(name, "project"), time.time(), 0)
        with self._lock:
            self._db.execute(
                "INSERT INTO projects (id, seq, name, created_at) "
                "VALUES (?, (SELECT MAX(seq) + 1 FROM projects), ?, ?)",
                (project.id, project.name, project.created_at),
            )
        return project

    def get_project(self, project_id: str) -> Project:
        with self._lock:
            row = self._db.execute("SELECT * FROM projects WHERE id = ?", (project_id,)).fetchone()
        if row is None:
            raise NotFound(f"project {project_id!r} not found", param="project_id")
        return _project(row)

    def list_projects(
        self, after: str = "", limit: int = 20, include_archived: bool = False
    ) -> tuple[list[Project], bool]:
        """Oldest first, as OpenAI lists them; `after` is the last id of the previous page."""
        query, args = "SELECT * FROM projects WHERE 1", []
        if after:
            query += " AND seq > ?"
            args.append(self._seq("projects", after, "after"))
        if not include_archived:
            query += " AND archived_at = 0"
        query += " ORDER BY seq LIMIT ?"
        args.append(_limit(limit) + 1)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [_project(r) for r in rows[: _limit(limit)]], len(rows) > _limit(limit)

    def rename_project(self, project_id: str, name: str) -> Project:
        name = _name(name, "project")
        self._active(project_id)
        with self._lock:
            self._db.execute("UPDATE projects SET name = ? WHERE id = ?", (name, project_id))
        return self.get_project(project_id)

    def archive_project(self, project_id: str) -> Project:
        if project_id == DEFAULT_PROJECT:
            raise InvalidArgument("the default project cannot be archived", param="project_id")
        project = self.get_project(project_id)
        if not project.archived_at:
            with self._lock:
                self._db.execute(
                    "UPDATE projects SET archived_at = ? WHERE id = ?", (time.time(), project_id)
                )
        return self.get_project(project_id)

    def _active(self, project_id: str) -> Project:
        project = self.get_project(project_id)
        if project.archived_at:
            raise InvalidArgument(
                f"project {project_id!r} is archived; it can no longer change",
                param="project_id",
            )
        return project

    # --- service accounts and their keys -------------------------------------------------
    def create_service_account(self, project_id: str, name: str) -> ServiceAccount:
        self._active(project_id)
        now = time.time()
        account = ServiceAccount(
            _new_id("svc_acct_"), _name(name, "service account"), "member", now, project_id
        )
        value = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=_new_id("key_"),
            name="Secret key",
            redacted_value=f"{KEY_PREFIX}****{value[-4:]}",
            created_at=now,
            last_used_at=0,
            project_id=project_id,
            service_account_id=account.id,
            service_account_name=account.name,
            value=value,
        )
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO service_accounts (id, seq, project_id, name, role, created_at) "
                "VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM service_accounts), ?, ?, ?, ?)",
                (account.id, project_id, account.name, account.role, now),
            )
            self._db.execute(
                "INSERT INTO api_keys (id, seq, digest, project_id, service_account_id, "
                "service_account_name, name, redacted_value, created_at) "
                "VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM api_keys), ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    self._digest(value),
                    project_id,
                    account.id,
                    account.name,
                    key.name,
                    key.redacted_value,
                    now,
                ),
            )
        return ServiceAccount(**{**account.__dict__, "api_key": key})

    def get_service_account(self, project_id: str, account_id: str) -> ServiceAccount:
        self.get_project(project_id)
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM service_accounts WHERE id = ? AND project_id = ? AND deleted_at = 0",
                (account_id, project_id),
            ).fetchone()
        if row is None:
            raise NotFound(f"service account {account_id!r} not found", param="service_account_id")
        return _account(row)

    def list_service_accounts(
        self, project_id: str, after: str = "", limit: int = 20
    ) -> tuple[list[ServiceAccount], bool]:
        rows, more = self._page("service_accounts", project_id, after, limit)
        return [_account(r) for r in rows], more

    def delete_service_account(self, project_id: str, account_id: str) -> ServiceAccount:
        account = self.get_service_account(project_id, account_id)
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE service_accounts SET deleted_at = ? WHERE id = ?", (now, account_id)
            )
            self._db.execute(
                "UPDATE api_keys SET deleted_at = ? WHERE service_account_id = ? "
                "AND deleted_at = 0",
                (now, account_id),
            )
        return account

    def list_api_keys(
        self, project_id: str, after: str = "", limit: int = 20
    ) -> tuple[list[ApiKey], bool]:
        rows, more = self._page("api_keys", project_id, after, limit)
        return [_key(r) for r in rows], more

    def delete_api_key(self, project_id: str, key_id: str) -> ApiKey:
        self.get_project(project_id)
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM api_keys WHERE id = ? AND project_id = ? AND deleted_at = 0",
                (key_id, project_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"API key {key_id!r} not found", param="key_id")
            self._db.execute(
                "UPDATE api_keys SET deleted_at = ? WHERE id = ?", (time.time(), key_id)
            )
        return _key(row)

    def authenticate(self, value: str) -> tuple[ApiKey, Project]:
        """The live key `value` is and its active project; Unauthenticated otherwise."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM api_keys WHERE digest = ? AND deleted_at = 0",
                (self._digest(value),),
            ).fetchone()
            if row is not None:
                self._db.execute(
                    "UPDATE api_keys SET last_used_at = ? WHERE id = ?", (time.time(), row["id"])
                )
        if row is None:
            raise Unauthenticated("invalid API key")
        project = self.get_project(row["project_id"])
        if project.archived_at:
            raise Unauthenticated("invalid API key: its project is archived")
        return _key(row), project

    def _digest(self, value: str) -> str:
        return hmac.new(self._secret, value.encode(), hashlib.sha256).hexdigest()

    def _page(self, table: str, project_id: str, after: str, limit: int):
        self.get_project(project_id)
        query = f"SELECT * FROM {table} WHERE project_id = ? AND deleted_at = 0"
        args: list = [project_id]
        if after:
            query += " AND seq > ?"
            args.append(self._seq(table, after, "after"))
        query += " ORDER BY seq LIMIT ?"
        args.append(_limit(limit) + 1)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return rows[: _limit(limit)], len(rows) > _limit(limit)

    def _seq(self, table: str, row_id: str, param: str) -> int:
        with self._lock:
            row = self._db.execute(f"SELECT seq FROM {table} WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            raise InvalidArgument(f"{param} {row_id!r} is not an id of this list", param=param)
        return row["seq"]

    # --- rate limits and usage -----------------------------------------------------------
    def rate_limits(self, project_id: str, models: list[str]) -> list[RateLimit]:
        """One per model in `models`, then the fine-tuning one."""
        self.get_project(project_id)
        return [self.rate_limit(project_id, m) for m in [*models, FINE_TUNING_LIMIT]]

    def rate_limit(self, project_id: str, model: str) -> RateLimit:
        limit_id = FINE_TUNING_LIMIT if model == FINE_TUNING_LIMIT else rate_limit_id(model)
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM rate_limits WHERE project_id = ? AND model = ?",
                (project_id, model),
            ).fetchone()
        fields = MODEL_LIMITS if model != FINE_TUNING_LIMIT else TRAINING_LIMITS
        values = {f: row[f] for f in fields} if row else {}
        return RateLimit(limit_id, "" if model == FINE_TUNING_LIMIT else model, **values)

    def update_rate_limit(
        self, project_id: str, limit_id: str, models: list[str], changes: dict[str, int]
    ) -> RateLimit:
        """`changes`: field -> new limit, 0 to remove it."""
        self._active(project_id)
        by_id = {rate_limit_id(m): m for m in models} | {FINE_TUNING_LIMIT: FINE_TUNING_LIMIT}
        model = by_id.get(limit_id)
        if model is None:
            raise NotFound(f"rate limit {limit_id!r} not found", param="rate_limit_id")
        allowed = TRAINING_LIMITS if model == FINE_TUNING_LIMIT else MODEL_LIMITS
        for field in changes:
            if field not in allowed:
                raise InvalidArgument(
                    f"{field} is not a limit of {limit_id}; it has {', '.join(allowed)}",
                    param=field,
                )
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR IGNORE INTO rate_limits (project_id, model) VALUES (?, ?)",
                (project_id, model),
            )
            for field, value in changes.items():
                self._db.execute(
                    f"UPDATE rate_limits SET {field} = ? WHERE project_id = ? AND model = ?",
                    (value or None, project_id, model),
                )
        return self.rate_limit(project_id, model)

    def admit(self, project_id: str, model: str, now: float | None = None) -> Admission:
        """Counts one request in this minute's window if the project's limits allow it.
        A fixed window, the same on every replica since they all ask here."""
        now = time.time() if now is None else now
        window = self._window(now)
        reset_s = window + self.window_s - now
        limit = self.rate_limit(project_id, model)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT requests, tokens FROM usage WHERE project_id = ? AND model = ? "
                "AND window_start = ?",
                (project_id, model, window),
            ).fetchone()
            used_requests, used_tokens = (row["requests"], row["tokens"]) if row else (0, 0)
            max_requests = limit.max_requests_per_1_minute
            max_tokens = limit.max_tokens_per_1_minute
            allowed = (max_requests is None or used_requests < max_requests) and (
                max_tokens is None or used_tokens < max_tokens
            )
            if allowed:
                used_requests += 1
                self._db.execute(
                    "INSERT INTO usage (project_id, model, window_start, requests) "
                    "VALUES (?, ?, ?, 1) ON CONFLICT DO UPDATE SET requests = requests + 1",
                    (project_id, model, window),
                )
                self._db.execute(
                    "DELETE FROM usage WHERE project_id = ? AND window_start < ?",
                    (project_id, window - self.window_s),
                )
        return Admission(
            allowed,
            None
            if max_requests is None
            else LimitState(max_requests, max(0, max_requests - used_requests), reset_s),
            None
            if max_tokens is None
            else LimitState(max_tokens, max(0, max_tokens - used_tokens), reset_s),
        )

    def _window(self, now: float) -> float:
        return (now // self.window_s) * self.window_s

    def record_usage(self, project_id: str, model: str, tokens: int, now: float | None = None):
        window = self._window(time.time() if now is None else now)
        with self._lock:
            self._db.execute(
                "INSERT INTO usage (project_id, model, window_start, tokens) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET tokens = tokens + excluded.tokens",
                (project_id, model, window, tokens),
            )


def _limit(limit: int) -> int:
    return min(limit or 20, MAX_LIST)


def _project(row: sqlite3.Row) -> Project:
    return Project(row["id"], row["name"], row["created_at"], row["archived_at"])


def _key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        redacted_value=row["redacted_value"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        project_id=row["project_id"],
        service_account_id=row["service_account_id"],
        service_account_name=row["service_account_name"],
    )


def _account(row: sqlite3.Row) -> ServiceAccount:
    return ServiceAccount(row["id"], row["name"], row["role"], row["created_at"], row["project_id"])


def key_secret(path: Path) -> bytes:
    """The server secret keys are hashed under: made once, kept beside the store (0600)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".staging")
        staging.write_bytes(secrets.token_bytes(32))
        staging.chmod(0o600)
        staging.replace(path)
    return path.read_bytes()
