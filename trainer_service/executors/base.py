"""How a job's worker runs: the contract between the scheduler and an executor.

Every executor runs the same worker entrypoint (`worker_command`): a child process locally,
a `batch/v1` Job on Kubernetes. The worker reports on its standard output, one JSON object
per line (a pod's log on Kubernetes), and nothing else is read from it:

    {"type": "message", "level": "info", "message": "loading base model"}
    {"type": "metrics", "metrics": {"step": 3, "total_steps": 40, "loss": 2.1, ...}}
    {"type": "checkpoint", "step": 20, "path": ".../trainer/checkpoint-20", "metrics": {...}}
    {"type": "result", "fine_tuned_model": "name@2", "result_files": [...],
     "trained_tokens": 12345}

Checkpoints go to `workdir/trainer/checkpoint-<step>/`; a worker started on a workdir that
holds one resumes from the newest, so the workdir must outlive the worker (a volume on
Kubernetes) for jobs to resume after a restart. Uploaded files are read from
TUNEYARD_HOME/files.

Exit status 0 means published; CANCELLED_EXIT means it stopped on SIGTERM and published
nothing; anything else is a failure, explained by the last "error" message. A failure
without one is a death (killed by a signal: the OOM killer, a lost node, an eviction), which
the scheduler resumes from the job's last checkpoint. So an executor reports a reason of its
own that must end the job for good (a deadline, a Job deleted behind its back) as an "error"
message too, and what merely goes with a death (a Job's BackoffLimitExceeded) as a "warn".
"""

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

CANCELLED_EXIT = 143  # 128 + SIGTERM, as a shell would report it


def worker_command(job_id: str, workdir: Path, python: str = sys.executable) -> list[str]:
    """The worker's command line; `workdir` holds spec.json and receives the outputs."""
    return [python, "-m", "trainer_service.worker", "--job-id", job_id, "--workdir", str(workdir)]


def parse_event_line(line: str) -> dict | None:
    """One worker output line as an event; stray non-JSON lines become plain messages."""
    line = line.strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return {"type": "message", "level": "info", "message": line}
    return event if isinstance(event, dict) and "type" in event else None


class ExecutionHandle(Protocol):
    def events(self) -> Iterator[dict]:
        """Worker events as they come; ends when the worker's output ends."""

    def cancel(self) -> None:
        """Ask the worker to stop (SIGTERM locally, delete the Job on Kubernetes)."""

    def wait(self) -> int:
        """Block until the worker ends; its exit status."""


class Executor(Protocol):
    def start(self, job_id: str, workdir: Path) -> ExecutionHandle:
        """Start the worker for a job whose spec is already in workdir/spec.json."""


def worker_env(settings) -> dict[str, str]:
    """The environment variables the worker reads its settings from (`WorkerSettings`);
    an executor adds them to the worker's environment."""
    env = {
        "TUNEYARD_HOME": str(settings.home),
        "TUNEYARD_ADAPTERS_DIR": str(settings.resolved_adapters_dir),
        "TUNEYARD_ADAPTERS_MODE": f"{settings.adapters_mode:04o}",
        "TUNEYARD_TRAINER_DEVICE": settings.trainer_device,
        "TUNEYARD_LOG_LEVEL": settings.log_level,
    }
    if settings.base_model:
        env["TUNEYARD_BASE_MODEL"] = settings.base_model
    return env
