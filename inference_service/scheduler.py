"""The engine thread: continuous batching. Between two decode steps, waiting requests are
prefilled together and merged into the running batch; every row then decodes one token per
step with the KV cache, rows on different adapters side by side.

A row that finishes or whose client has gone is dropped from the batch (and from the KV
cache) at once, so each request joins and leaves on its own. Which kind of batch runs (the
dynamic cache or the static buffers) is the engine's choice; the scheduler only sees a
`RunningBatch`.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable

import torch

from tuneyard.errors import ResourceExhausted, Unavailable

from .compute_threads import claim_cores
from .dynamic_batch import DynamicBatch, EagerForward
from .running_batch import RunningBatch
from .sampling import greedy_picks
from .sequence import RequestCancelled, Sequence

log = logging.getLogger(__name__)


class BatchScheduler:
    """Queues requests and runs the engine thread that prefills them into `batch` and
    decodes it."""

    def __init__(
        self,
        forward: EagerForward,
        batch: RunningBatch,
        model_lock: threading.Lock,
        *,
        pad_token_id: int,
        max_batch_size: int,
        max_batch_wait_s: float,
        max_queue: int,
        threads: int,
        on_batch: Callable[[int], None] = lambda size: None,
    ):
        self.forward = forward  # prefills, whichever batch runs
        self.batch = batch
        self.model_lock = model_lock
        self.pad_token_id = pad_token_id
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_s
        self.threads = threads  # the engine thread's torch threads
        self.on_batch = on_batch
        self.waiting: queue.Queue[Sequence] = queue.Queue(maxsize=max_queue)
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
        claim_cores(self.threads)
        batch = self.batch
        while not self._stop.is_set():
            new = self._next_rows()
            try:
                self._step(new)
            except Exception as err:  # one bad step must not stop the engine thread
                rows = batch.rows + new
                log.exception("engine step failed; failing its %d rows", len(rows))
                for seq in rows:
                    if not seq.done:
                        seq.fail(err)
                batch.keep([])
        for seq in batch.rows:
            seq.fail(Unavailable("the inference service is stopping"))

    def _next_rows(self) -> list[Sequence]:
        """Requests to prefill now. With nothing running, wait for a first one, then up to
        max_batch_wait for company; with a batch running, take what is waiting, at once."""
        running = bool(self.batch.rows)
        room = self.max_batch_size - len(self.batch.rows)
        if room <= 0 or not self.batch.joinable():
            return []
        rows = []
        if not running:
            try:
                rows.append(self.waiting.get(timeout=0.1))
            except queue.Empty:
                return []
        deadline = time.monotonic() + (0 if running else self.max_batch_wait_s)
        while len(rows) < room:
            try:
                rows.append(self.waiting.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return [seq for seq in rows if not self._dropped(seq)]

    @torch.inference_mode()
    def _step(self, new: list[Sequence]) -> None:
        """Prefill the new rows into the batch, then decode one token for every row."""
        batch = self.batch
        if new:
            prefilled = self._prefill(new)
            if prefilled.rows:
                batch.extend(prefilled)
        if not batch.rows:
            return
        self.on_batch(len(batch.rows))
        next_ids = [seq.ids[-1] for seq in batch.rows]
        with self.model_lock:
            logits = batch.decode(next_ids)
        self._choose(batch, logits)

    def _prefill(self, rows: list[Sequence]) -> DynamicBatch:
        width = max(len(seq.prompt_ids) for seq in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, seq in enumerate(rows):
            n = len(seq.prompt_ids)
            ids[i, width - n :] = torch.tensor(seq.prompt_ids)
            mask[i, width - n :] = 1
        ids, mask = ids.to(self.forward.device), mask.to(self.forward.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        batch = DynamicBatch(
            self.forward, rows, self.forward.new_cache(), mask, positions[:, -1] + 1
        )
        want_prefill = any(seq.params.decoder_input_details for seq in rows)
        with self.model_lock:
            logits = self.forward(batch, ids, positions, all_logits=want_prefill)
        if want_prefill:
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for i, seq in enumerate(rows):
                if seq.params.decoder_input_details:
                    n = len(seq.prompt_ids)
                    targets = ids[i, width - n + 1 :]
                    scored = logprobs[i, width - n : -1]
                    picked = scored.gather(1, targets[:, None])[:, 0]
                    tops = []
                    if top_n := seq.params.top_n_tokens:
                        values, top_ids = torch.topk(scored, min(top_n, scored.shape[-1]))
                        tops = [
                            list(zip(t, v, strict=True))
                            for t, v in zip(top_ids.tolist(), values.tolist(), strict=True)
                        ]
                    seq.set_prefill(picked.tolist(), tops)
        self._choose(batch, logits[:, -1])
        return batch

    def _choose(self, batch: RunningBatch, logits: torch.Tensor) -> None:
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
