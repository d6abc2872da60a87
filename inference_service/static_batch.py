"""Decoding over preallocated KV buffers, with CUDA graphs on a GPU.

On a GPU, one decode step of a ~1B model in eager PyTorch is mostly kernel launches from
Python (about a thousand per token), which caps one stream far below what the memory
bandwidth allows. A step whose tensors keep their shapes and addresses can instead be
captured once as a CUDA graph and replayed. `StaticBatch` keeps the running batch in such
tensors:

- K and V of every layer live in one buffer [layers, 2, max_rows, kv_heads, width, head_dim];
  a row keeps its slot while it runs, and a row that leaves is replaced by the last one;
- as in the dynamic batch, every row's newest token sits in the same column `t`; a row's
  tokens are the columns [start, t), so the attention mask is built from `starts` and `t`
  inside the step;
- LoRA goes through the per-row slot path of `lora.py`;
- graphs are captured lazily, one per (rows, columns) bucket: the rows are padded to the next
  bucket with dummy rows, the attention reads the first `columns` columns only.

The step is written out for Llama-shaped decoders (Llama, Mistral, Qwen2: pre-norm, rotary,
grouped-query attention) from the model's own modules; other models keep the dynamic batch.
Prefill stays eager (its shapes vary) and its KV is copied in when rows join.
"""

import logging

import torch
import torch.nn.functional as F

from .dynamic_batch import DynamicBatch
from .lora import MultiLora
from .running_batch import RunningBatch
from .sequence import Sequence

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
ROW_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
MIN_COLUMN_BUCKET = 128


def unsupported_reason(model, max_total_tokens: int) -> str | None:
    """Why this model cannot use the static batch, or None when it can."""
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {config.model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < max_total_tokens:
        return f"sliding-window attention ({window} < max_total_tokens)"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope"):
        return f"rope type {rope.get('rope_type')!r} changes with the sequence length"
    if any(not p.dtype.is_floating_point for p in model.parameters()):
        return "a quantized base model"
    return None


class StaticBatch(RunningBatch):
    """The running batch in preallocated KV buffers, its decode step a CUDA graph per
    (rows, columns) bucket on a GPU."""

    def __init__(
        self,
        model,
        lora: MultiLora,
        *,
        max_rows: int,
        max_total_tokens: int,
        pad_token_id: int,
        cuda_graphs: bool,
    ):
        config = model.config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.model, self.lora = model, lora
        self.layers = model.model.layers
        self.head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.pad_token_id = pad_token_id
        # A running row holds at most max_total_tokens - 1 tokens before its last step.
        self.width = -(-max_total_tokens // MIN_COLUMN_BUCKET) * MIN_COLUMN_BUCKET
        self.max_rows = max_rows
        self.kv = torch.zeros(
            (len(self.layers), 2, max_rows, self.num_kv_heads, self.width, self.head_dim),
            dtype=self.dtype,
            device=self.device,
        )
        # Per-row inputs of a step: newest token, its position, first column, LoRA slot.
        self.input_ids, self.positions, self.starts, self.slots = torch.zeros(
            (4, max_rows), dtype=torch.long, device=self.device
        )
        self.t = torch.zeros((), dtype=torch.long, device=self.device)  # the write column
        self.columns = torch.arange(self.width, device=self.device)
        self.rows: list[Sequence] = []
        self._t = 0
        self._starts: list[int] = []
        self._positions: list[int] = []
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._graphs_version = lora.version

    def joinable(self) -> bool:
        return True

    # --- rows join and leave --------------------------------------------------------------
    def extend(self, prefilled: DynamicBatch) -> None:
        """Copy in the KV of the prefilled rows (left-padded to the prefill's width)."""
        n, width = len(prefilled.rows), prefilled.attention_mask.shape[1]
        if len(self.rows) + n > self.max_rows:
            raise RuntimeError("more rows than the static batch holds")
        if width > self._t:
            self._shift(width - self._t)
        first, end = len(self.rows), len(self.rows) + n
        for i, layer in enumerate(prefilled.cache.layers):
            self.kv[i, 0, first:end, :, self._t - width : self._t] = layer.keys
            self.kv[i, 1, first:end, :, self._t - width : self._t] = layer.values
        lengths = prefilled.attention_mask.sum(1).tolist()
        self._starts += [self._t - length for length in lengths]
        self._positions += prefilled.positions.tolist()
        self.rows += prefilled.rows

    def keep(self, indices: list[int]) -> None:
        keep = set(indices)
        for i in reversed(range(len(self.rows))):
            if i in keep:
                continue
            last = len(self.rows) - 1
            if i != last:  # the last row takes the leaving row's slot
                self.kv[:, :, i] = self.kv[:, :, last]
                self.rows[i] = self.rows[last]
                self._starts[i] = self._starts[last]
                self._positions[i] = self._positions[last]
            self.rows.pop()
            self._starts.pop()
            self._positions.pop()
        if not self.rows:
            self._t = 0

    def _shift(self, columns: int) -> None:
        """Move every row's tokens `columns` to the right (negative: to the left)."""
        t, kv = self._t, self.kv[:, :, : len(self.rows)]
        if columns > 0:
            kv[..., columns : t + columns, :] = kv[..., :t, :].clone()
        else:
            kv[..., : t + columns, :] = kv[..., -columns:t, :].clone()
        self._t += columns
        self._starts = [start + columns for start in self._starts]

    # --- one decode step ------------------------------------------------------------------
    def decode(self, next_ids: list[int]) -> torch.Tensor:
        """Write each row's newest token at column t, attend, return logits [rows, vocab]."""
        if self._t == self.width:
            # Free the columns no running row uses any more; a row never fills the width.
            unused = min(self._starts)
            if unused == 0:
                raise RuntimeError(f"a row has filled all {self.width} KV columns")
            self._shift(-unused)
        n = len(self.rows)
        rows = min(next((b for b in ROW_BUCKETS if b >= n), n), self.max_rows)
        columns = self._column_bucket(self._t + 1)
        pad = rows - n
        self._fill(self.input_ids, next_ids + [self.pad_token_id] * pad)
        self._fill(self.positions, self._positions + [0] * pad)
        # Dummy rows see only their own column, so no row attends to nothing.
        self._fill(self.starts, self._starts + [self._t] * pad)
        self.lora.route([seq.adapter_key for seq in self.rows], self.device, self.slots[:rows])
        self.t.fill_(self._t)
        logits = self._run(rows, columns)[:n]
        self._t += 1
        self._positions = [p + 1 for p in self._positions]
        return logits

    def _column_bucket(self, needed: int) -> int:
        columns = MIN_COLUMN_BUCKET
        while columns < needed:
            columns *= 2
        return min(columns, self.width)

    def _fill(self, buffer: torch.Tensor, values: list[int]) -> None:
        buffer[: len(values)].copy_(torch.tensor(values, dtype=torch.long))

    def _run(self, rows: int, columns: int) -> torch.Tensor:
        if not self.cuda_graphs:
            return self._step(rows, columns)
        if self._graphs_version != self.lora.version:
            self._graphs.clear()  # LoRA stacks were replaced: the graphs point at old ones
            self._graphs_version = self.lora.version
        if (rows, columns) not in self._graphs:
            self._graphs[(rows, columns)] = self._capture(rows, columns)
        graph, logits = self._graphs[(rows, columns)]
        graph.replay()
        return logits

    def _capture(self, rows: int, columns: int):
        log.info("capturing a CUDA graph for %d rows, %d columns", rows, columns)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up outside the capture, as torch asks
            for _ in range(2):
                self._step(rows, columns)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: request threads may touch CUDA (a sampling generator) meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            logits = self._step(rows, columns)
        return graph, logits

    def _step(self, rows: int, columns: int) -> torch.Tensor:
        """The decode forward over the buffers, with no data-dependent Python."""
        inner = self.model.model
        hidden = inner.embed_tokens(self.input_ids[:rows])[:, None, :]  # [rows, 1, hidden]
        cos, sin = inner.rotary_emb(hidden, self.positions[:rows, None])
        cos, sin = cos[:, None], sin[:, None]  # [rows, 1 (heads), 1, head_dim]
        visible = (self.columns[None, :columns] >= self.starts[:rows, None]) & (
            self.columns[None, :columns] <= self.t
        )
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask = mask.masked_fill(~visible, torch.finfo(self.dtype).min)[:, None, None, :]
        column = self.t.view(1)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(rows, 1, self.num_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(rows, 1, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(rows, 1, self.num_kv_heads, self.head_dim).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            keys, values = self.kv[i, 0, :rows], self.kv[i, 1, :rows]
            keys.index_copy_(2, column, k)
            values.index_copy_(2, column, v)
            out = F.scaled_dot_product_attention(
                q,
                keys[:, :, :columns],
                values[:, :, :columns],
                attn_mask=mask,
                scale=getattr(attn, "scaling", self.head_dim**-0.5),
                enable_gqa=self.num_heads != self.num_kv_heads,
            )
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(rows, 1, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.model.lm_head(inner.norm(hidden))[:, -1]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
