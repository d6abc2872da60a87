"""What the worker reads from its environment (set by the executor, see worker_env)."""

from tuneyard.config import CommonSettings


class WorkerSettings(CommonSettings):
    trainer_device: str = "auto"
