"""The native engine in-process on a tiny model, and what its metrics say."""

import shutil
import subprocess
from pathlib import Path

import pytest

from inference_service.engine import NativeEngine
from inference_service.settings import InferenceSettings


def make_engine(base_path: Path, adapters_dir: Path, **settings) -> NativeEngine:
    """float32 unless a test asks for another dtype: what a test compares must not depend on
    the CPU (auto serves bf16 where it is native) nor on TUNEYARD_DTYPE."""
    values = dict(
        base_model=str(base_path),
        adapters_dir=adapters_dir,
        device="cpu",
        dtype="float32",
        inference_metrics_port=0,
        max_batch_wait_ms=50,
    )
    values.update(settings)
    return NativeEngine.load(InferenceSettings(**values))


def submit_together(engine: NativeEngine, cases: list[tuple[str, str]], max_new_tokens: int):
    """Submit every (prompt, adapter) case at once: (their sequences, their results, the
    batch sizes the scheduler ran), so a test can check they were batched."""
    from inference_service.params import GenerateInput, Parameters

    batch_sizes, record = [], engine.scheduler.on_batch
    engine.scheduler.on_batch = lambda n: (batch_sizes.append(n), record(n))
    try:
        parameters = Parameters(max_new_tokens=max_new_tokens, details=True)
        seqs = [
            engine.submit(GenerateInput(inputs=p, adapter_id=a, parameters=parameters))
            for p, a in cases
        ]
        results = [s.result(60) for s in seqs]
    finally:
        engine.scheduler.on_batch = record
    return seqs, results, batch_sizes


def metric_total(registry, family: str, **labels: str) -> float:
    """The sum of a counter family's `_total` samples whose labels include `labels`."""
    return sum(
        sample.value
        for collected in registry.collect()
        if collected.name == family
        for sample in collected.samples
        if sample.name.endswith("_total") and labels.items() <= sample.labels.items()
    )


def count_requests(registry, status: str) -> float:
    """tuneyard_inference_requests_total with this status, over every route and adapter."""
    return metric_total(registry, "tuneyard_inference_requests", status=status)


def promtool_check(text: str) -> None:
    """`promtool check metrics` passes on an exposition (skips when promtool is missing)."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, text=True, capture_output=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
