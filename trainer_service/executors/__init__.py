"""Executors run a job's worker; `make_executor` picks one from the settings."""

from trainer_service.executors.base import Executor
from trainer_service.settings import TrainerSettings
from tuneyard.errors import InvalidArgument


def make_executor(settings: TrainerSettings) -> Executor:
    if settings.executor == "local":
        from trainer_service.executors.local import LocalExecutor

        return LocalExecutor(settings)
    if settings.executor == "kubernetes":
        from trainer_service.executors.kubernetes import (
            KubernetesExecutor,
            KubernetesExecutorSettings,
        )

        return KubernetesExecutor(KubernetesExecutorSettings())
    raise InvalidArgument(
        f"unknown executor {settings.executor!r}; known: local, kubernetes", param="executor"
    )
