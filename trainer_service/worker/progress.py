"""A TrainerCallback that turns the Trainer's logs into metrics events, keeps the loss
curve, and stops training at the next step boundary once a stop is asked for."""

import resource
import threading
import time

import torch
from transformers import TrainerCallback

from trainer_service.checkpoints import LOGGED
from trainer_service.worker.events import EventWriter


def peak_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class ProgressCallback(TrainerCallback):
    def __init__(self, events: EventWriter, stop: threading.Event, device: str):
        self.events = events
        self.stop = stop
        self.device = device
        self.losses: list[tuple[int, float]] = []
        self.eval_losses: list[tuple[int, float]] = []
        self.last: dict = {}
        self._start = time.monotonic()
        self._tokens_at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.monotonic()
        self._tokens_at_start = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.is_set():
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False

    def on_save(self, args, state, control, **kwargs):
        """A checkpoint folder is complete: announce it with the latest metrics."""
        path = f"{args.output_dir}/checkpoint-{state.global_step}"
        self.events.checkpoint(state.global_step, path, dict(self.last))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "train_loss" in logs:  # the end-of-training summary, not a step
            return
        step = state.global_step
        elapsed = max(time.monotonic() - self._start, 1e-6)
        metrics = {"step": step, "total_steps": state.max_steps, "epoch": state.epoch}
        metrics.update({n: float(logs[k]) for k, n in LOGGED.items() if logs.get(k) is not None})
        metrics["trained_tokens"] = int(state.num_input_tokens_seen)
        metrics["tokens_per_second"] = (
            state.num_input_tokens_seen - self._tokens_at_start
        ) / elapsed
        if step:
            metrics["eta_seconds"] = elapsed / step * max(state.max_steps - step, 0)
        metrics["peak_memory_bytes"] = peak_memory_bytes(self.device)
        if "loss" in metrics:
            self.losses.append((step, metrics["loss"]))
        if "eval_loss" in metrics:
            self.eval_losses.append((step, metrics["eval_loss"]))
        self.last.update(metrics)
        self.events.metrics(metrics)
