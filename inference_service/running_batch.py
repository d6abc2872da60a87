"""What the scheduler asks of the running batch, whichever decode path keeps it (the dynamic
KV cache or the static buffers), as TGI's servers share one abstract `Batch`."""

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

from .sequence import Sequence

if TYPE_CHECKING:
    from .dynamic_batch import DynamicBatch


class RunningBatch(ABC):
    """Rows decoding together, one token per row and step, with their KV. `rows[i]` is the
    request of row i of the logits `decode` returns; an empty batch takes rows again."""

    rows: list[Sequence]

    @abstractmethod
    def joinable(self) -> bool:
        """Whether rows may join the running ones now."""

    @abstractmethod
    def extend(self, prefilled: "DynamicBatch") -> None:
        """Take the rows of a freshly prefilled batch, with their KV cache."""

    @abstractmethod
    def keep(self, indices: list[int]) -> None:
        """Keep the rows at these indices and drop the others with their KV; `rows` may be
        reordered."""

    @abstractmethod
    def decode(self, next_ids: list[int]) -> torch.Tensor:
        """Feed each row its newest token and return the logits of the next, [rows, vocab].
        The caller holds the model lock; the rows' adapters are routed here."""
