"""The multi-LoRA layers alone: every routing path gives each row what its own adapter
alone would (W x + scaling * B A x), whichever slots the batch's adapters sit in."""

import copy

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


def test_a_mixed_batch_sees_adapters_added_and_removed_after_it_ran():
    """The stacked B the mixed path reads is kept up to date slot by slot, not rebuilt:
    a batch after a load, an unload and a reuse of the slot gets each row's own adapter."""
    torch.manual_seed(0)
    model = nn.Module()
    model.proj = nn.Linear(IN, OUT)
    lora = MultiLora(model, max_adapters=3)
    loaded = {"a": weights(1, 4), "b": weights(2, 2)}
    for key, adapter in loaded.items():
        lora.add(key, adapter)
    x = torch.randn(4, 1, IN)

    def check(rows):
        lora.route(rows, "cpu")
        with torch.inference_mode():  # as the engine runs
            got = model.proj(x[: len(rows)])
        for i, key in enumerate(rows):
            want = expected(model, x[i], loaded[key] if key else None)
            torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)

    check(["a", "b", None])
    loaded["c"] = weights(3, 4)
    lora.add("c", loaded["c"])
    check(["c", "a", "b"])
    lora.remove("a")
    check(["c", None, "b"])
    loaded["a"] = weights(4, 3)  # into the slot "a" left
    lora.add("a", loaded["a"])
    check(["a", "c", "b", None])


def peft_adapter(base: nn.Module, seed: int, rank: int, **config):
    """A PEFT adapter on a copy of `base` (its `proj` targeted) with random weights, and a
    DoRA magnitude away from its initial norm: PEFT's own module, and its LoraWeights."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    tuned = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=["proj"], init_lora_weights=False, **config
        ),
    ).eval()
    layer = tuned.base_model.model.proj
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    magnitudes = {}
    if config.get("use_dora"):
        magnitude = layer.lora_magnitude_vector["default"].weight
        with torch.no_grad():
            magnitude.mul_(torch.rand(OUT) + 0.5)
        magnitudes["proj"] = magnitude.detach().clone()
    weights = LoraWeights(rank, layer.scaling["default"], ["proj"], {"proj": (a, b)}, magnitudes)
    return tuned, weights


@pytest.mark.parametrize("path", ["one adapter", "mixed", "per-row slots"])
def test_dora_and_rslora_rows_equal_peft(path):
    """DoRA (magnitude over the weight norm, the bias kept out of it), rsLoRA (alpha over
    sqrt(r)) and plain LoRA rows next to base rows, each as PEFT computes it alone."""
    torch.manual_seed(0)
    base = Proj()
    tuned = {
        "dora": peft_adapter(base, 1, 4, use_dora=True),
        "plain": peft_adapter(base, 2, 2),
        "rslora": peft_adapter(base, 3, 4, use_rslora=True),
        "dora-rs": peft_adapter(base, 4, 2, use_dora=True, use_rslora=True),
    }
    assert tuned["rslora"][1].scaling == 2 * 4 / 4**0.5
    model = copy.deepcopy(base)
    lora = MultiLora(model, max_adapters=4)
    for key, (_, weights) in tuned.items():
        lora.add(key, weights)
    rows = {
        "one adapter": ["dora", "dora"],
        "mixed": ["dora", None, "plain", "rslora", "dora-rs", "dora"],
        "per-row slots": ["rslora", "dora", None, "plain", "dora-rs"],
    }[path]
    x = torch.randn(len(rows), 3 if path != "per-row slots" else 1, IN)
    buffer = torch.zeros(len(rows), dtype=torch.long) if path == "per-row slots" else None
    lora.route(rows, "cpu", buffer)
    with torch.no_grad():
        got = model.proj(x)
        for i, key in enumerate(rows):
            want = tuned[key][0](x[i]) if key else base.proj(x[i])
            torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)
    # The magnitude matters: the same A and B as plain LoRA give another output.
    dora = tuned["dora"][1]
    as_plain = LoraWeights(dora.rank, dora.scaling, ["proj"], dora.modules)
    assert not torch.allclose(got[0], expected(model, x[0], as_plain), atol=1e-3)


class Proj(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(IN, OUT)  # with a bias, which DoRA does not scale

    def forward(self, x):
        return self.proj(x)
