"""The engine thread: continuous batching. Between two decode steps, waiting requests are
prefilled together and merged into the running batch; every row then decodes one token per
step with the KV cache, rows on different adapters side by side.

Rows are left-padded; each row's positions count its own tokens only. A row that finishes
or whose client has gone is dropped from the batch (and from the KV cache) at once, so each
request joins and leaves on its own.
"""

import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tuneyard.errors import ResourceExhausted, Unavailable

from .lora import MultiLora
from .sampling import greedy_picks
from .sequence import RequestCancelled, Sequence
from .static_batch import StaticBatch

log = logging.getLogger(__name__)


class Batch:
    """Rows decoding together, with their KV cache, attention mask and positions.

    The cache and the mask are left-aligned to the same length: row i's tokens sit at the
    right end, zeros in the mask before them. `keep` drops rows (and padding columns no row
    needs any more); `extend` appends the rows of a freshly prefilled batch, padding the
    shorter of the two on the left, as TGI's filter/concatenate do.
    """

    def __init__(self, rows: list[Sequence], cache, attention_mask, positions):
        self.rows = rows
        self.cache = cache
        self.attention_mask = attention_mask
        self.positions = positions  # [rows] the position of each row's next token

    def keep(self, indices: list[int]) -> None:
        if len(indices) == len(self.rows):
            return
        if not indices:
            self.rows = []
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

    def extend(self, other: "Batch") -> None:
        width = max(self.attention_mask.shape[1], other.attention_mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat(
                [_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)]
            )
            mine.values = torch.cat(
                [_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)]
            )
        self.attention_mask = torch.cat(
            [_pad_left(self.attention_mask, width, 1), _pad_left(other.attention_mask, width, 1)]
        )
        self.positions = torch.cat([self.positions, other.positions])
        self.rows = self.rows + other.rows

    def joinable(self) -> bool:
        """Only plain dynamic layers (full attention) can be padded, trimmed and
        concatenated; a batch of another cache (sliding windows) takes no new rows."""
        return all(type(layer) is DynamicLayer for layer in self.cache.layers)


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class Scheduler:
    def __init__(
        self,
        model,
        lora: MultiLora,
        model_lock: threading.Lock,
        *,
        static: StaticBatch | None,
        pad_token_id: int,
        max_batch_size: int,
        max_batch_wait_s: float,
        max_queue: int,
        on_batch: Callable[[int], None] = lambda size: None,
    ):
        self.model = model
        self.lora = lora
        # With a static batch, running rows live in it (CUDA graphs); else in a `Batch`.
        self.static = static
        self.model_lock = model_lock
        self.pad_token_id = pad_token_id
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_s
        self.on_batch = on_batch
        self.device = next(model.parameters()).device
        self.waiting: queue.Queue[Sequence] = queue.Queue(maxsize=max_queue)
        forward_args = inspect.signature(model.forward).parameters
        # transformers renamed past_key_values to cache in 5.2x; the GPU image has 5.17.
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self._takes_positions = "position_ids" in forward_args
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        while not self.waiting.empty():
            self.waiting.get_nowait().fail(Unavailable("the inference service is stopping"))

    def submit(self, seq: Sequence) -> None:
        try:
            self.waiting.put_nowait(seq)
        except queue.Full:
            raise ResourceExhausted(
                f"the request queue is full ({self.waiting.maxsize} waiting); retry later"
            ) from None

    @property
    def queue_size(self) -> int:
        return self.waiting.qsize()

    def _run(self) -> None:
        batch: Batch | StaticBatch | None = None
        while not self._stop.is_set():
            new = self._next_rows(batch)
            try:
                batch = self._step(batch, new)
            except Exception as err:  # one bad step must not stop the engine thread
                rows = (batch.rows if batch else []) + new
                log.exception("engine step failed; failing its %d rows", len(rows))
                for seq in rows:
                    if not seq.done:
                        seq.fail(err)
                if self.static is not None:
                    self.static.keep([])
                batch = None
        for seq in batch.rows if batch else []:
            seq.fail(Unavailable("the inference service is stopping"))

    def _next_rows(self, batch: Batch | StaticBatch | None) -> list[Sequence]:
        """Requests to prefill now. With nothing running, wait for a first one, then up to
        max_batch_wait for company; with a batch running, take what is waiting, at once."""
        room = self.max_batch_size - (len(batch.rows) if batch else 0)
        if room <= 0 or (batch is not None and not batch.joinable()):
            return []
        rows = []
        if batch is None:
            try:
                rows.append(self.waiting.get(timeout=0.1))
            except queue.Empty:
                return []
        deadline = time.monotonic() + (self.max_batch_wait_s if batch is None else 0)
        while len(rows) < room:
            try:
                rows.append(self.waiting.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return [seq for seq in rows if not self._dropped(seq)]

    @torch.inference_mode()
    def _step(self, batch, new: list[Sequence]):
        """Prefill the new rows into the batch, then decode one token for every row."""
        if new:
            batch = self._join(batch, self._prefill(new))
        if batch is None or not batch.rows:
            return None
        self.on_batch(len(batch.rows))
        next_ids = [seq.ids[-1] for seq in batch.rows]
        if batch is self.static:
            with self.model_lock:
                logits = batch.decode(next_ids)
        else:
            batch.attention_mask = torch.cat(
                [batch.attention_mask, batch.attention_mask.new_ones(len(batch.rows), 1)], dim=1
            )
            ids = torch.tensor(next_ids, device=self.device)[:, None]
            logits = self._forward(batch, ids, batch.positions[:, None])[:, -1]
            batch.positions = batch.positions + 1
        self._choose(batch, logits)
        return batch if batch.rows else None

    def _join(self, batch, joining: Batch):
        if not joining.rows:
            return batch
        if self.static is not None:
            self.static.extend(joining)
            return self.static
        if batch is None or not batch.rows:
            return joining
        batch.extend(joining)
        return batch

    def _prefill(self, rows: list[Sequence]) -> Batch:
        width = max(len(seq.prompt_ids) for seq in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, seq in enumerate(rows):
            n = len(seq.prompt_ids)
            ids[i, width - n :] = torch.tensor(seq.prompt_ids)
            mask[i, width - n :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        batch = Batch(rows, DynamicCache(config=self.model.config), mask, positions[:, -1] + 1)
        want_prefill = any(seq.params.decoder_input_details for seq in rows)
        logits = self._forward(batch, ids, positions, all_logits=want_prefill)
        if want_prefill:
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for i, seq in enumerate(rows):
                if seq.params.decoder_input_details:
                    n = len(seq.prompt_ids)
                    targets = ids[i, width - n + 1 :]
                    picked = logprobs[i, width - n : -1].gather(1, targets[:, None])[:, 0]
                    seq.set_prefill(picked.tolist())
        self._choose(batch, logits[:, -1])
        return batch

    def _forward(self, batch: Batch, ids, positions, all_logits: bool = False):
        kwargs = {self._cache_arg: batch.cache}
        if self._takes_positions:
            kwargs["position_ids"] = positions
        with self.model_lock:
            slots = [self.lora.slot(seq.adapter_key) for seq in batch.rows]
            self.lora.routing.set_rows(slots, self.device)
            out = self.model(
                input_ids=ids,
                attention_mask=batch.attention_mask,
                use_cache=True,
                logits_to_keep=0 if all_logits else 1,
                **kwargs,
            )
        return out.logits

    def _choose(self, batch: Batch, logits: torch.Tensor) -> None:
        """Give each row its next token; keep the rows that go on."""
        picks = greedy_picks([seq.chooser for seq in batch.rows], logits)
        keep = []
        for i, seq in enumerate(batch.rows):
            if self._dropped(seq):
                continue
            pick = picks.get(i) or seq.chooser(logits[i], seq.prompt_ids, seq.ids)
            seq.add(*pick)
            if not seq.done:
                keep.append(i)
        batch.keep(keep)

    @staticmethod
    def _dropped(seq: Sequence) -> bool:
        if seq.cancelled.is_set() and not seq.done:
            seq.fail(RequestCancelled("the client cancelled the request"))
        return seq.done
