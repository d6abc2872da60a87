"""The worker's event channel: JSON lines on the original stdout, flushed one by one.

Everything else a library prints (transformers, tqdm, warnings) goes to stderr, which the
executor keeps in the job's worker.log."""

import json
import os
import sys
from typing import TextIO


class EventWriter:
    def __init__(self, stream: TextIO):
        self._stream = stream

    def message(self, message: str, level: str = "info") -> None:
        self._write({"type": "message", "level": level, "message": message})

    def metrics(self, metrics: dict) -> None:
        self._write({"type": "metrics", "metrics": metrics})

    def checkpoint(self, step: int, path: str, metrics: dict) -> None:
        self._write({"type": "checkpoint", "step": step, "path": path, "metrics": metrics})

    def result(
        self, fine_tuned_model: str, result_files: list[str], trained_tokens: int, metrics: dict
    ) -> None:
        self._write(
            {
                "type": "result",
                "fine_tuned_model": fine_tuned_model,
                "result_files": result_files,
                "trained_tokens": trained_tokens,
                "metrics": metrics,
            }
        )

    def _write(self, event: dict) -> None:
        self._stream.write(json.dumps(event) + "\n")
        self._stream.flush()


def take_stdout() -> EventWriter:
    """Keep file descriptor 1 for events and point fd 1 and sys.stdout at stderr."""
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return EventWriter(channel)
