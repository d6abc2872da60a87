"""Trainer service settings (environment variables with the TUNEYARD_ prefix)."""

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from tuneyard.config import CommonSettings


class TrainerSettings(CommonSettings):
    trainer_host: str = "127.0.0.1"
    trainer_port: int = Field(50051, ge=0, le=65535)
    trainer_metrics_port: int = Field(9101, ge=0, le=65535, description="0 turns it off.")
    trainer_db: Path | None = Field(None, description="SQLite file; default home/trainer/jobs.db")
    trainer_workdir: Path | None = Field(None, description="Job folders; default home/trainer/jobs")
    key_hash_secret_file: Path | None = Field(
        None,
        description="The secret API keys are hashed under (a mounted secret); default "
        "home/trainer/key-hash-secret, made on first start.",
    )
    rate_limit_window_s: float = Field(
        60.0,
        gt=0,
        description="The window of the projects' per-minute rate limits: a minute, as "
        "OpenAI's; shorter only to test them.",
    )
    max_concurrent_jobs: int = Field(1, ge=1)
    max_resumes: int = Field(
        3,
        ge=0,
        description="Times a job resumes from its last checkpoint after a trainer restart or "
        "its worker's death (killed by a signal: OOM killer, lost node).",
    )
    inference_addr: str = Field("", description="host:port to notify of new adapters; '' = none.")
    trainer_device: str = Field("auto", description="Worker device: auto, cpu, cuda, cuda:1...")
    max_row_bytes: int = Field(
        1024 * 1024,
        ge=1,
        description="Largest row an uploaded training file may have (a JSONL line, a CSV row).",
    )
    data_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders (separated by ':') that a job's data.path or an evaluation's "
        "files may be under; default: the uploads folder and the bundled examples.",
    )
    executor: str = Field(
        "local",
        description="How workers run: local (a child process) or kubernetes (a batch/v1 Job each).",
    )

    @field_validator("data_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value):
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part.strip()]
        return value

    @property
    def resolved_trainer_db(self) -> Path:
        return self.trainer_db or self.home / "trainer" / "jobs.db"

    @property
    def resolved_projects_db(self) -> Path:
        return self.resolved_trainer_db.with_name("projects.db")

    @property
    def resolved_audit_db(self) -> Path:
        return self.resolved_trainer_db.with_name("audit.db")

    @property
    def resolved_key_hash_secret_file(self) -> Path:
        return self.key_hash_secret_file or self.resolved_trainer_db.with_name("key-hash-secret")

    @property
    def resolved_trainer_workdir(self) -> Path:
        return self.trainer_workdir or self.home / "trainer" / "jobs"
