"""Adapters that add tokens after the base's vocabulary, served next to others.

An adapter's added ids follow the base's (its tokenizer is the base's plus them), so ids of
different adapters overlap: row r's id `vocab + i` means the i-th added token of r's own
adapter. Per slot, the added rows' embeddings and output rows sit in stacks [slots, K,
hidden]. The embedding and the output layer are wrapped once the first such adapter loads:
a row's ids at or past `vocab` take its slot's embedding rows, and the logits gain K
columns, a row's own adapter's output rows there and -inf in the columns it does not own
(every column for the base's and other adapters' rows). Batches with no such row skip both
on the eager paths; the fixed-shape decode (CUDA graphs) always takes them once they exist.
"""

import torch
from torch import nn

from tuneyard.errors import FailedPrecondition

from .peft_files import AddedTokenRows


def check_added(model: nn.Module, rows: AddedTokenRows) -> None:
    """Refuse added rows this module cannot serve on `model` (its layers unwrapped or
    wrapped): ids must follow the base's embedding rows, on a plain embedding and output
    layer (a scaled embedding would need its scale)."""
    embedding, output = model.get_input_embeddings(), model.get_output_embeddings()
    if isinstance(embedding, _Embedding):
        embedding, output = embedding.base, output.base
    if (
        type(embedding) is not nn.Embedding
        or type(output) is not nn.Linear
        or output.bias is not None
    ):
        raise FailedPrecondition(
            "added tokens are served on a plain embedding and output layer, not "
            f"{type(embedding).__name__} / {type(output).__name__}"
        )
    vocab, hidden = embedding.num_embeddings, embedding.embedding_dim
    if rows.ids != list(range(vocab, vocab + len(rows.ids))) or rows.embedding.shape[1] != hidden:
        raise FailedPrecondition(
            f"the adapter adds token ids {rows.ids[0]}..{rows.ids[-1]} of "
            f"{rows.embedding.shape[1]} values; served: ids from {vocab} (after the base's "
            f"embedding rows) of {hidden} values"
        )


class AddedTokens:
    """The added rows of every slot, and the wrapped embedding and output layer."""

    def __init__(self, model: nn.Module, routing, num_slots: int):
        embedding, output = model.get_input_embeddings(), model.get_output_embeddings()
        self.routing = routing
        self.vocab = embedding.num_embeddings
        self.counts: dict[int, int] = {}  # slot -> how many tokens it added
        hidden = embedding.embedding_dim
        self.inputs = embedding.weight.new_zeros(num_slots, 1, hidden)
        self.outputs = output.weight.new_zeros(num_slots, 1, hidden)
        self.owned = torch.zeros(num_slots, 1, dtype=torch.bool, device=output.weight.device)
        model.set_input_embeddings(_Embedding(embedding, self))
        model.set_output_embeddings(_Logits(output, self))

    def put(self, slot: int, rows: AddedTokenRows) -> bool:
        """The rows into `slot` (checked: `check_added`); True when the stacks were
        replaced (graphs must be recaptured)."""
        count = len(rows.ids)
        grown = count > self.inputs.shape[1]
        if grown:
            self._resize(self.inputs.shape[0], 1 << (count - 1).bit_length())
        self.clear(slot)
        self.inputs[slot, :count] = rows.embedding.to(self.inputs.dtype)
        output = rows.output if rows.output is not None else rows.embedding
        self.outputs[slot, :count] = output.to(self.outputs.dtype)
        self.owned[slot, :count] = True
        self.counts[slot] = count
        return grown

    def clear(self, slot: int) -> None:
        if self.counts.pop(slot, None) is not None:
            self.inputs[slot].zero_()
            self.outputs[slot].zero_()
            self.owned[slot] = False

    def grow(self, num_slots: int) -> None:
        self._resize(num_slots, self.inputs.shape[1])

    def _resize(self, num_slots: int, width: int) -> None:
        def grown(old: torch.Tensor) -> torch.Tensor:
            new = old.new_zeros(num_slots, width, *old.shape[2:])
            new[: old.shape[0], : old.shape[1]] = old
            return new

        self.inputs, self.outputs, self.owned = map(grown, (self.inputs, self.outputs, self.owned))

    def row_slots(self, rows: int) -> torch.Tensor | None:
        """[rows] slot ids when some row may use added tokens, else None (skip them)."""
        routing = self.routing
        if routing.slots is not None:
            return routing.slots[:rows]
        if routing.only is not None:
            if routing.only not in self.counts:
                return None
            return torch.full((rows,), routing.only, device=self.inputs.device)
        if routing.mixed and not self.counts.keys().isdisjoint(range(*routing.span)):
            return routing.row_slots
        return None


class _Embedding(nn.Module):
    def __init__(self, base: nn.Embedding, tokens: AddedTokens):
        super().__init__()
        self.base, self.tokens = base, tokens

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        slots = self.tokens.row_slots(ids.shape[0])
        if slots is None:
            return self.base(ids)
        vocab = self.tokens.vocab
        added = ids >= vocab
        out = self.base(ids.masked_fill(added, 0))
        local = (ids - vocab).clamp(0, self.tokens.inputs.shape[1] - 1)
        rows = self.tokens.inputs[slots.view(-1, *[1] * (ids.dim() - 1)), local]
        return torch.where(added[..., None], rows.to(out.dtype), out)


class _Logits(nn.Module):
    def __init__(self, base: nn.Linear, tokens: AddedTokens):
        super().__init__()
        self.base, self.tokens = base, tokens

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.base(hidden)
        slots = self.tokens.row_slots(hidden.shape[0])
        if slots is None:
            return logits
        rows = self.tokens.outputs[slots].to(hidden.dtype)  # [rows, K, hidden]
        extra = hidden @ rows.transpose(1, 2)  # [rows, positions, K]
        owned = self.tokens.owned[slots][:, None, :]
        extra = extra.masked_fill(~owned, -float("inf"))
        return torch.cat([logits, extra.to(logits.dtype)], dim=-1)
