"""The embedded executor: each worker is a child process in its own process group, so
its memory (GPU included) is freed when it ends and a crash cannot take the service down."""

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from trainer_service.executors.base import parse_event_line, worker_command, worker_env
from trainer_service.settings import TrainerSettings

KILL_GRACE_S = 10.0
# The worker imports this project from the same source tree, installed or not.
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


class LocalHandle:
    def __init__(self, process: subprocess.Popen, log_file, kill_grace_s: float):
        self.process = process
        self._log_file = log_file
        self._kill_grace_s = kill_grace_s

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self) -> Iterator[dict]:
        for line in self.process.stdout:
            event = parse_event_line(line)
            if event is not None:
                yield event

    def cancel(self) -> None:
        """SIGTERM the worker's group; SIGKILL it if it is still there after the grace."""
        if self._signal(signal.SIGTERM):
            timer = threading.Timer(self._kill_grace_s, self._signal, (signal.SIGKILL,))
            timer.daemon = True
            timer.start()

    def wait(self) -> int:
        code = self.process.wait()
        self.process.stdout.close()
        self._log_file.close()
        return code

    def _signal(self, sig: int) -> bool:
        if self.process.poll() is not None:
            return False
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            return False
        return True


class LocalExecutor:
    def __init__(self, settings: TrainerSettings, kill_grace_s: float = KILL_GRACE_S):
        python_path = os.pathsep.join(p for p in (_PROJECT_ROOT, os.environ.get("PYTHONPATH")) if p)
        self._env = {
            **os.environ,
            **worker_env(settings),
            "PYTHONPATH": python_path,
            "PYTHONUNBUFFERED": "1",
            # The worker stops by itself if this process dies without cancelling it.
            "TUNEYARD_WORKER_PARENT_PID": str(os.getpid()),
        }
        self._kill_grace_s = kill_grace_s

    def start(self, job_id: str, workdir: Path) -> LocalHandle:
        log_file = open(Path(workdir) / "worker.log", "ab")  # noqa: SIM115 (the handle owns it)
        process = subprocess.Popen(
            worker_command(job_id, workdir),
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            env=self._env,
            cwd=workdir,
            start_new_session=True,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        return LocalHandle(process, log_file, self._kill_grace_s)
