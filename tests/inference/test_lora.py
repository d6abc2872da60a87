"""The multi-LoRA layers alone: every routing path gives each row what its own adapter
alone would (W x + scaling * B A x), whichever slots the batch's adapters sit in."""

import pytest
import torch
from torch import nn

from inference_service.lora import MultiLora
from inference_service.peft_files import LoraWeights

IN, OUT = 8, 6


def weights(seed: int, rank: int) -> LoraWeights:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(rank, IN, generator=generator)
    b = torch.randn(OUT, rank, generator=generator)
    return LoraWeights(rank, 0.5, ["proj"], {"proj": (a, b)})


def expected(model: nn.Module, x: torch.Tensor, adapter: LoraWeights | None) -> torch.Tensor:
    out = x @ model.proj.base.weight.T + model.proj.base.bias
    if adapter is None:
        return out
    a, b = adapter.modules["proj"]
    return out + adapter.scaling * (x @ a.T @ b.T)


@pytest.mark.parametrize("fixed", [False, True], ids=["mixed", "per-row slots"])
def test_each_row_of_a_mixed_batch_gets_its_own_adapter(fixed):
    torch.manual_seed(0)
    model = nn.Module()
    model.proj = nn.Linear(IN, OUT)
    lora = MultiLora(model, max_adapters=4)
    loaded = {"a": weights(1, 4), "b": weights(2, 2), "c": weights(3, 4)}
    for key, adapter in loaded.items():
        lora.add(key, adapter)
    lora.remove("a")  # slot 1 free: the batch's adapters sit in slots 2 and 3
    rows = ["c", None, "b", "c", None]
    x = torch.randn(len(rows), 1, IN)
    buffer = torch.zeros(len(rows), dtype=torch.long) if fixed else None
    lora.route(rows, "cpu", buffer)
    with torch.no_grad():
        got = model.proj(x)
    for i, key in enumerate(rows):
        want = expected(model, x[i], loaded.get(key) if key else None)
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)
