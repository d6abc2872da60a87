"""The model called eagerly through transformers over a growing KV cache: every prefill, and
the decode path of models (or devices) the static batch does not serve.

Rows are left-padded; each row's positions count its own tokens only.
"""

import inspect

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .lora import MultiLora
from .running_batch import RunningBatch
from .sequence import Sequence


class EagerForward:
    """One forward of the transformers model over a `DynamicBatch`, its rows' adapters
    routed first. The caller holds the model lock."""

    def __init__(self, model, lora: MultiLora):
        self.model = model
        self.lora = lora
        self.device = next(model.parameters()).device
        forward_args = inspect.signature(model.forward).parameters
        # transformers renamed past_key_values to cache in 5.2x; the GPU image has 5.17.
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self._takes_positions = "position_ids" in forward_args

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    def __call__(
        self, batch: "DynamicBatch", ids, positions, all_logits: bool = False
    ) -> torch.Tensor:
        """Logits [rows, 1, vocab] of the last position, or of every one with all_logits."""
        kwargs = {self._cache_arg: batch.cache}
        if self._takes_positions:
            kwargs["position_ids"] = positions
        self.lora.route([seq.adapter_key for seq in batch.rows], self.device)
        out = self.model(
            input_ids=ids,
            attention_mask=batch.attention_mask,
            use_cache=True,
            logits_to_keep=0 if all_logits else 1,
            **kwargs,
        )
        return out.logits


class DynamicBatch(RunningBatch):
    """Rows decoding together, with their KV cache, attention mask and positions; also what
    a prefill hands to the running batch, whichever kind that is.

    The cache and the mask are left-aligned to the same length: row i's tokens sit at the
    right end, zeros in the mask before them. `keep` drops rows (and padding columns no row
    needs any more); `extend` appends the rows of a freshly prefilled batch, padding the
    shorter of the two on the left, as TGI's filter/concatenate do. An empty batch holds no
    cache.
    """

    def __init__(
        self,
        forward: EagerForward,
        rows: list[Sequence] | None = None,
        cache: DynamicCache | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ):
        self.forward = forward
        self.rows = rows or []
        self.cache = cache
        self.attention_mask = attention_mask
        self.positions = positions  # [rows] the position of each row's next token

    def joinable(self) -> bool:
        """Only plain dynamic layers (full attention) can be padded, trimmed and
        concatenated; a batch of another cache (sliding windows) takes no new rows."""
        return self.cache is None or all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def keep(self, indices: list[int]) -> None:
        if not indices:
            self.rows, self.cache, self.attention_mask, self.positions = [], None, None, None
            return
        if len(indices) == len(self.rows):
            return
        index = torch.tensor(indices, device=self.attention_mask.device)
        self.rows = [self.rows[i] for i in indices]
        self.cache.batch_select_indices(index)
        self.attention_mask = self.attention_mask[index]
        self.positions = self.positions[index]
        unused = int(self.attention_mask.any(0).int().argmax())  # leading all-padding columns
        if unused and self.joinable():
            self.attention_mask = self.attention_mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def extend(self, prefilled: "DynamicBatch") -> None:
        if not self.rows:
            self.rows, self.cache = prefilled.rows, prefilled.cache
            self.attention_mask, self.positions = prefilled.attention_mask, prefilled.positions
            return
        width = max(self.attention_mask.shape[1], prefilled.attention_mask.shape[1])
        for mine, theirs in zip(self.cache.layers, prefilled.cache.layers, strict=True):
            mine.keys = torch.cat(
                [_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)]
            )
            mine.values = torch.cat(
                [_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)]
            )
        self.attention_mask = torch.cat(
            [
                _pad_left(self.attention_mask, width, 1),
                _pad_left(prefilled.attention_mask, width, 1),
            ]
        )
        self.positions = torch.cat([self.positions, prefilled.positions])
        self.rows = self.rows + prefilled.rows

    def decode(self, next_ids: list[int]) -> torch.Tensor:
        self.attention_mask = torch.cat(
            [self.attention_mask, self.attention_mask.new_ones(len(self.rows), 1)], dim=1
        )
        ids = torch.tensor(next_ids, device=self.forward.device)[:, None]
        logits = self.forward(self, ids, self.positions[:, None])[:, -1]
        self.positions = self.positions + 1
        return logits


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
