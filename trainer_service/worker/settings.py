"""What the worker reads from its environment (set by the executor, see worker_env)."""

from pydantic import Field

from tuneyard.config import CommonSettings


class WorkerSettings(CommonSettings):
    trainer_device: str = "auto"
    worker_parent_pid: int = Field(
        0, description="The local trainer's pid: the worker stops once it is gone; 0 = not."
    )
