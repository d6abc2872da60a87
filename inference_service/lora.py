"""Many LoRA adapters on one base model, without PEFT's injection.

Each targeted nn.Linear of the base is wrapped once in a `LoraLinear`. Every loaded adapter
has a slot (slot 0 is the base model: zeros) in stacked tensors A [slots, rank, in] and
B [slots, out, rank], B scaled, ranks zero-padded. Before each forward the engine tells the
shared `LoraRouting`, through `MultiLora.route` alone, which adapter each batch row uses; a
layer then takes one of three paths:

- one adapter for the whole batch: its A and B, no row indexing;
- a mix (of adapters, and of base rows): the LoRA product of every slot from the batch's
  lowest to its highest in two matmuls over slices of the stacks, each row keeping its own
  slot's (PEFT's mixed-adapter batches were about 7x slower here); any shapes, used for
  prefill and the dynamic batch;
- per-row slots: a slot index per row and one batched matmul pair over gathered A/B, whose
  shapes do not depend on which adapters are in the batch, so a CUDA graph can replay it.

DoRA adapters are served unmerged on every path, as PEFT computes them: per layer and slot
one vector `mag` = magnitude / ||W + scaling B A|| (the norm of each output row of the
weight, computed once at load), and a row's output is mag * (W x + its LoRA output) + bias.
Rows of plain LoRA adapters and of the base have mag 1, so a layer holds that stack only
once a DoRA adapter has weights in it.
"""

import torch
from torch import nn

from tuneyard.errors import FailedPrecondition

from .added_tokens import AddedTokens, check_added
from .peft_files import LoraWeights

BASE_SLOT = 0


class LoraRouting:
    """Which adapter slot each row of the next forward uses: one adapter for the whole
    batch (`only`), no adapter at all, a mix, where each layer computes the LoRA product of
    every slot in `span` (the batch's adapters, lowest to highest slot) for every row in
    two matmuls and keeps each row's own slot (`mask`), or a fixed buffer of per-row slot
    ids (`slots`) that a CUDA graph reads. `MultiLora.route` is its only writer."""

    def __init__(self):
        self.only: int | None = None  # the one slot of a batch that is all one adapter
        self.mixed = False
        self.span = (0, 0)  # mixed: the slots [first, last + 1) each layer computes
        self.slots: torch.Tensor | None = None  # [rows] slot ids; set for fixed-shape decode
        self.row_slots: torch.Tensor | None = None  # mixed: [rows] slot ids
        self._masks: dict[torch.dtype, torch.Tensor] = {}

    def set_rows(self, slots: list[int], device, fixed: torch.Tensor | None) -> None:
        self._masks = {}
        if fixed is not None:
            # Rows past the batch's own pad a shape bucket: the base model.
            padded = slots + [BASE_SLOT] * (len(fixed) - len(slots))
            fixed.copy_(torch.tensor(padded, dtype=torch.long))
            self.slots, self.only, self.mixed = fixed, None, False
            return
        self.slots = None
        adapters = set(slots) - {BASE_SLOT}
        uniform = len(adapters) == 1 and BASE_SLOT not in slots
        # The common case: the whole batch on one adapter needs no row indexing.
        self.only = next(iter(adapters)) if uniform else None
        self.mixed = bool(adapters) and not uniform
        if self.mixed:
            self.span = (min(adapters), max(adapters) + 1)
            self.row_slots = torch.tensor(slots, device=device)

    def mask(self, dtype: torch.dtype) -> torch.Tensor:
        """[rows, span]: 1 at each row's slot (none for a base row). Built once per
        forward, not per layer."""
        if dtype not in self._masks:
            span = torch.arange(*self.span, device=self.row_slots.device)
            self._masks[dtype] = (self.row_slots[:, None] == span[None, :]).to(dtype)
        return self._masks[dtype]


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, routing: LoraRouting, num_slots: int, rank: int):
        super().__init__()
        self.base = base
        self.routing = routing
        self.ranks: dict[int, int] = {}  # the slots this layer has weights in, and their rank
        dtype, device = _compute_dtype(base), base.weight.device
        self.a = torch.zeros(num_slots, rank, base.in_features, dtype=dtype, device=device)
        self.b = torch.zeros(num_slots, base.out_features, rank, dtype=dtype, device=device)
        self._bt: torch.Tensor | None = None  # every slot's B, as [slots * rank, out]
        # DoRA: [slots, out] magnitude / weight norm, ones for other slots; None until the
        # first DoRA adapter (a new tensor: MultiLora bumps its version).
        self.mag: torch.Tensor | None = None
        self.dora: set[int] = set()  # the slots holding a DoRA adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        slots = self.routing.slots
        if slots is not None:
            # x [rows, 1, in]: every row through its own slot's A and B (zeros for the base).
            xa = torch.bmm(x.to(self.a.dtype), self.a[slots].transpose(1, 2))
            delta = torch.bmm(xa, self.b[slots].transpose(1, 2))
            if self.mag is None:
                return out + delta.to(out.dtype)
            return self._dora(out, delta, self.mag[slots][:, None, :])
        only = self.routing.only
        if only is not None:
            rank = self.ranks.get(only)
            if rank is None:
                return out
            a, b = self.a[only, :rank], self.b[only, :, :rank]
            delta = x.to(a.dtype) @ a.T @ b.T
            if only in self.dora:
                return self._dora(out, delta, self.mag[only])
            return out + delta.to(out.dtype)
        if not self.routing.mixed or not self.ranks:
            return out
        # A mix of adapters (and the base): x A of every slot in the batch's span for every
        # row in one matmul, zero all but the row's own slot, then one matmul with those
        # slots' B. The extra work (span x rank columns) is small next to the base layer;
        # the per-adapter gathers and index_adds it replaces cost more on a CPU than their
        # arithmetic. Slices of the stacks, not gathers: no copy per layer.
        first, end = self.routing.span
        slots, rank = end - first, self.a.shape[1]
        xa = x.to(self.a.dtype) @ self.a[first:end].reshape(slots * rank, -1).T
        mask = self.routing.mask(xa.dtype)
        shape = xa.shape
        xa = xa.view(*shape[:-1], slots, rank) * mask.view(
            shape[0], *([1] * (xa.dim() - 2)), slots, 1
        )
        b_t = self._stacked_bt()[first * rank : end * rank]
        delta = xa.view(shape) @ b_t
        if self.dora.isdisjoint(range(first, end)):
            return out + delta.to(out.dtype)
        mag = self.mag[self.routing.row_slots]
        return self._dora(out, delta, mag.view(shape[0], *([1] * (delta.dim() - 2)), -1))

    def _dora(self, out: torch.Tensor, delta: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
        """PEFT's DoRA output from the base output `out` (W x + bias) and the LoRA output
        `delta`: mag * (W x + delta) + bias, written as PEFT writes it, so a row whose mag
        is 1 gets exactly out + delta."""
        bias = self.base.bias
        plain = out if bias is None else out - bias
        return out + ((mag - 1) * plain + mag * delta).to(out.dtype)

    def _stacked_bt(self) -> torch.Tensor:
        if self._bt is None:
            slots, out_features, rank = self.b.shape
            self._bt = self.b.transpose(1, 2).reshape(slots * rank, out_features).contiguous()
        return self._bt

    def put(
        self,
        slot: int,
        a: torch.Tensor,
        b: torch.Tensor,
        scaling: float,
        magnitude: torch.Tensor | None = None,
    ) -> None:
        """An adapter's A and B into `slot`; with `magnitude`, DoRA's vector over this
        layer's weight norm (with the adapter's delta) goes into `mag`."""
        rank = a.shape[0]
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.a[slot, :rank] = a.to(self.a.dtype)
        self.b[slot, :, :rank] = (b.float() * scaling).to(self.b.dtype)
        self.ranks[slot] = rank
        self._restack(slot)
        if magnitude is not None:
            if self.mag is None:
                # float32 whatever the compute dtype: values near 1 that bf16 would round.
                self.mag = torch.ones(
                    self.a.shape[0], self.b.shape[1], dtype=torch.float32, device=self.a.device
                )
            delta = (b.float() @ a.float()) * scaling
            self.mag[slot] = dora_scale(self.base, delta, magnitude)
            self.dora.add(slot)
        else:
            self._plain(slot)

    def clear(self, slot: int) -> None:
        if self.ranks.pop(slot, None) is not None:
            self.a[slot].zero_()
            self.b[slot].zero_()
            self._restack(slot)
            self._plain(slot)

    def _restack(self, slot: int) -> None:
        """The slot's rows of the stacked B, in place: restacking every slot at the next
        forward copied all of them (600 MB at rank 512 with 13 slots) on the engine's
        thread at each adapter load."""
        if self._bt is not None:
            rank = self.b.shape[2]
            with torch.inference_mode():  # the engine's forward made it: an inference tensor
                self._bt[slot * rank : (slot + 1) * rank] = self.b[slot].T

    def _plain(self, slot: int) -> None:
        if slot in self.dora:
            self.mag[slot] = 1
            self.dora.discard(slot)

    def resize(self, num_slots: int, rank: int) -> None:
        """Grow the stacks, keeping what they hold (new tensors: graphs must be recaptured)."""
        a = self.a.new_zeros(num_slots, rank, self.a.shape[2])
        b = self.b.new_zeros(num_slots, self.b.shape[1], rank)
        old_slots, old_rank = self.a.shape[0], self.a.shape[1]
        a[:old_slots, :old_rank] = self.a
        b[:old_slots, :, :old_rank] = self.b
        self.a, self.b, self._bt = a, b, None
        if self.mag is not None:
            mag = self.mag.new_ones(num_slots, self.mag.shape[1])
            mag[:old_slots] = self.mag
            self.mag = mag


class MultiLora:
    """The base model with LoraLinear wrappers put in place on demand, and the slot of each
    loaded adapter. `version` changes whenever a layer is wrapped or the stacks grow, i.e.
    when tensors a captured CUDA graph points at are replaced."""

    def __init__(self, model: nn.Module, max_adapters: int):
        self.model = model
        self.routing = LoraRouting()
        self.version = 0
        self._layers: dict[str, LoraLinear] = {}
        self._slots: dict[str, int] = {}  # adapter key -> slot
        self._num_slots = max_adapters + 1  # slot 0 is the base model
        self._rank = 8
        self.tokens: AddedTokens | None = None  # once an adapter that adds tokens loads

    def slot(self, key: str | None) -> int:
        return BASE_SLOT if key is None else self._slots[key]

    def route(
        self, adapter_keys: list[str | None], device, fixed: torch.Tensor | None = None
    ) -> None:
        """Say which adapter (None: the base) each row of the next forward uses; every
        forward is routed here first. With `fixed`, a [rows] buffer at least as long as the
        keys whose address a CUDA graph keeps, rows take the per-row slot path; without,
        rows are grouped by adapter (any shapes)."""
        self.routing.set_rows([self.slot(key) for key in adapter_keys], device, fixed)

    def check(self, weights: LoraWeights) -> None:
        """Refuse an adapter whose modules the base lacks or whose shapes do not fit."""
        for path, (a, b) in weights.modules.items():
            layer = self._linear(path)
            if (a.shape[1], b.shape[0]) != (layer.in_features, layer.out_features):
                raise FailedPrecondition(
                    f"adapter module {path} is {a.shape[1]}->{b.shape[0]} but the base layer "
                    f"is {layer.in_features}->{layer.out_features}: another base model?"
                )
        if weights.tokens is not None:
            check_added(self.model, weights.tokens)

    def prepare(self, key: str, weights: LoraWeights) -> None:
        """Nothing to do before the insert (`add`): the copy into the stacked slots is it."""

    def add(self, key: str, weights: LoraWeights) -> None:
        self.check(weights)
        used = set(self._slots.values())
        slot = next((s for s in range(1, self._num_slots) if s not in used), None)
        if slot is None or weights.rank > self._rank:
            self._grow(self._num_slots + (slot is None), weights.rank)
            slot = slot or self._num_slots - 1
        for path, (a, b) in weights.modules.items():
            layer = self._wrap(path)
            first_dora = layer.mag is None and path in weights.magnitudes
            layer.put(slot, a, b, weights.scaling, weights.magnitudes.get(path))
            if first_dora:
                self.version += 1  # a new tensor the CUDA graphs must read
        if weights.tokens is not None:
            if self.tokens is None:
                self.tokens = AddedTokens(self.model, self.routing, self._num_slots)
                self.version += 1
            if self.tokens.put(slot, weights.tokens):
                self.version += 1
        self._slots[key] = slot

    def remove(self, key: str) -> None:
        slot = self._slots.pop(key, None)
        if slot is not None:
            for layer in self._layers.values():
                layer.clear(slot)
            if self.tokens is not None:
                self.tokens.clear(slot)

    def merge(self, weights: LoraWeights) -> None:
        """Fold an adapter into the base weights for good: W += scaling * B @ A, and for
        DoRA, as PEFT merges it, W = mag * (W + scaling * B @ A) row by row."""
        self.check(weights)
        if weights.tokens is not None:
            raise FailedPrecondition("an adapter that adds tokens is served unmerged only")
        with torch.no_grad():
            for path, (a, b) in weights.modules.items():
                linear = self._linear(path)
                if type(linear) is not nn.Linear:
                    raise FailedPrecondition(
                        f"cannot merge into {path}: {type(linear).__name__} (a quantized base?)"
                    )
                delta = (b.float() @ a.float()) * weights.scaling
                magnitude = weights.magnitudes.get(path)
                if magnitude is None:
                    linear.weight += delta.to(linear.weight.device, linear.weight.dtype)
                    continue
                mag = dora_scale(linear, delta, magnitude)
                merged = (linear.weight.float() + delta.to(mag.device)) * mag[:, None]
                linear.weight.copy_(merged.to(linear.weight.dtype))

    def _grow(self, num_slots: int, rank: int) -> None:
        self._num_slots = num_slots
        self._rank = max(self._rank, 1 << (rank - 1).bit_length())  # powers of two
        for layer in self._layers.values():
            layer.resize(self._num_slots, self._rank)
        if self.tokens is not None:
            self.tokens.grow(self._num_slots)
        self.version += 1

    def _linear(self, path: str) -> nn.Linear:
        if path in self._layers:
            return self._layers[path].base
        try:
            module = self.model.get_submodule(path)
        except AttributeError as err:
            raise FailedPrecondition(f"the base model has no module {path}") from err
        if not isinstance(module, nn.Linear):
            raise FailedPrecondition(
                f"base module {path} is a {type(module).__name__}, not a Linear layer"
            )
        return module

    def _wrap(self, path: str) -> LoraLinear:
        if path not in self._layers:
            parent_path, _, child = path.rpartition(".")
            parent = self.model.get_submodule(parent_path) if parent_path else self.model
            layer = LoraLinear(getattr(parent, child), self.routing, self._num_slots, self._rank)
            setattr(parent, child, layer)
            self._layers[path] = layer
            self.version += 1
        return self._layers[path]


def dora_scale(linear: nn.Module, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA's magnitude / ||W + delta|| (float32, on the layer's device): the L2 norm of
    each output row of the layer's weight [out, in] plus the scaled delta B A, the base
    weight dequantized as PEFT dequantizes it; a constant, as PEFT detaches it."""
    with torch.no_grad():
        weight = _dense_weight(linear).float()
        norm = torch.linalg.norm(weight + delta.to(weight.device), dim=1)
        return magnitude.to(weight.device, torch.float32) / norm


def _dense_weight(linear: nn.Module) -> torch.Tensor:
    """The layer's weight [out, in]; bitsandbytes' 4-bit and int8 weights dequantized with
    the functions PEFT calls for DoRA (not PEFT's helper itself: on a CPU it replaces the
    int8 weight, which drops its scales)."""
    weight = linear.weight
    kind = type(weight).__name__
    if kind not in ("Params4bit", "Int8Params"):
        return weight
    import bitsandbytes as bnb

    if kind == "Params4bit":
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
    scales = weight.SCB if weight.SCB is not None else linear.state.SCB  # moved by a forward
    return bnb.functional.int8_vectorwise_dequant(weight.data, scales.to(weight.device))


def _compute_dtype(linear: nn.Linear) -> torch.dtype:
    """Quantized layers store int8/uint8 weights; their deltas run in their compute dtype."""
    if linear.weight.dtype.is_floating_point:
        return linear.weight.dtype
    return getattr(linear, "compute_dtype", None) or torch.float32
