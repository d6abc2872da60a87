"""Fixtures of the inference tests: real PEFT adapters published to a real adapter store,
and one engine on tiny_llama shared by a module."""

from pathlib import Path

import pytest

from tests.support.adapters import make_adapter
from tests.support.engines import make_engine


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def two_adapters(tiny_llama, adapters_dir):
    return (
        make_adapter(tiny_llama, adapters_dir, "alpha", seed=1),
        make_adapter(
            tiny_llama,
            adapters_dir,
            "beta",
            seed=2,
            r=8,
            target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"),
        ),
    )


@pytest.fixture(scope="module")
def dora_and_rslora(tiny_llama, adapters_dir, two_adapters):
    """A DoRA adapter (its magnitudes away from the weight norms: B grew after PEFT set
    them), an rsLoRA one (alpha / sqrt(r)), and one that is both."""
    return (
        make_adapter(tiny_llama, adapters_dir, "dora", seed=3, use_dora=True),
        make_adapter(tiny_llama, adapters_dir, "rslora", seed=4, r=8, use_rslora=True),
        make_adapter(
            tiny_llama,
            adapters_dir,
            "dora-rs",
            seed=5,
            target_modules=("q_proj", "o_proj", "gate_proj"),
            use_dora=True,
            use_rslora=True,
        ),
    )


@pytest.fixture(scope="module", params=["dynamic", "static"])
def engine(request, tiny_llama, adapters_dir):
    """The engine on both decode paths: a growing KV cache, and the static KV buffers that
    a GPU replays as CUDA graphs (the same step without the graphs on the CPU)."""
    engine = make_engine(tiny_llama, adapters_dir, decode=request.param)
    yield engine
    engine.stop()
