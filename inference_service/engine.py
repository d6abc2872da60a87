"""The native engine: one base model in this process, its LoRA slots and the batching
scheduler. `submit` (EngineBase) turns a request into a validated, tokenized `Sequence` and
queues it; the caller waits on the sequence (`result()` or `stream()`) and may `cancel()` it."""

import logging
import threading
from pathlib import Path

import torch

from tuneyard.adapter_store import MERGED, AdapterStore, BaseQuantization
from tuneyard.errors import FailedPrecondition
from tuneyard.modeling import (
    BaseModelRef,
    load_model,
    load_tokenizer,
    pick_device,
    pick_dtype,
    resolve_base_model,
)

from .dynamic_batch import DynamicBatch, EagerForward
from .engine_base import EngineBase, config_eos_ids
from .lora import MultiLora
from .metrics import Metrics
from .running_batch import RunningBatch
from .sampling import NextTokenChooser
from .scheduler import BatchScheduler
from .sequence import Sequence
from .settings import InferenceSettings
from .static_batch import StaticBatch, unsupported_reason

log = logging.getLogger(__name__)


class NativeEngine(EngineBase):
    """The native engine: our PyTorch multi-LoRA model, batched by our scheduler."""

    name = "native"

    def __init__(
        self,
        settings: InferenceSettings,
        base: BaseModelRef,
        model,
        tokenizer,
        metrics: Metrics | None = None,
        merged_weights: bool = False,
    ):
        """`merged_weights`: `model` holds the merged adapter's own merged weights (its
        `merged/` folder) rather than the base's."""
        self.model = model.eval()
        self.device = next(model.parameters()).device
        super().__init__(
            settings,
            base,
            tokenizer,
            # Read before LoRA may wrap the output layer: the logits' width.
            vocab_size=model.get_output_embeddings().weight.shape[0],
            eos_ids=config_eos_ids(getattr(model, "generation_config", None)),
            metrics=metrics,
        )
        self.lora = MultiLora(model, settings.max_loaded_adapters)
        model_lock = threading.Lock()
        served_on = BaseQuantization.of(
            settings.quantization,
            settings.quant_type,
            settings.double_quant,
            str(model.dtype).removeprefix("torch."),
        )
        self.adapters = self._adapter_cache(self.lora, model_lock, served_on)
        if settings.merged_adapter:
            version = self.adapters.store.resolve(settings.merged_adapter)
            self.merged = self.adapters.read(version, merged_weights=merged_weights)
            if merged_weights:
                log.info("serving adapter %s from its merged weights", self.merged.key)
            else:
                self.lora.merge(self.merged.weights)
                log.info("serving adapter %s merged into the base weights", self.merged.key)
        forward = EagerForward(model, self.lora)
        self.scheduler = BatchScheduler(
            forward,
            self._running_batch(forward),
            model_lock,
            pad_token_id=tokenizer.pad_token_id,
            max_batch_size=settings.max_batch_size,
            max_batch_wait_s=settings.max_batch_wait_ms / 1000,
            max_queue=settings.max_queue,
            threads=settings.engine_threads or torch.get_num_threads(),
            on_batch=self.metrics.batch_size.observe,
        )
        self.metrics.queue_size.set_function(lambda: self.scheduler.queue_size)

    def start(self) -> None:
        """The engine's thread: `load` starts it; a constructed engine runs nothing yet."""
        self.scheduler.start()

    def _running_batch(self, forward: EagerForward) -> RunningBatch:
        """The decode path: static buffers where the settings, device and model allow."""
        mode = self.settings.decode
        if mode == "dynamic" or (mode == "auto" and self.device.type != "cuda"):
            return DynamicBatch(forward)
        reason = unsupported_reason(self.model, self.settings.max_total_tokens)
        if reason is not None:
            if mode == "static":
                raise FailedPrecondition(f"TUNEYARD_DECODE=static cannot serve {reason}")
            log.info("decoding with a dynamic KV cache: no static batch for %s", reason)
            return DynamicBatch(forward)
        log.info("decoding over static KV buffers (CUDA graphs: %s)", self.settings.cuda_graphs)
        return StaticBatch(
            self.model,
            self.lora,
            max_rows=self.settings.max_batch_size,
            max_total_tokens=self.settings.max_total_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            cuda_graphs=self.settings.cuda_graphs,
        )

    @classmethod
    def load(cls, settings: InferenceSettings, metrics: Metrics | None = None) -> "NativeEngine":
        base = resolve_base_model(settings.resolved_base_model)
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device, cpu_bf16_if_native=True)
        merged = own_merged_weights(settings)
        log.info(
            "loading %s on %s in %s (TUNEYARD_DTYPE=%s)",
            merged or base.id,
            device,
            dtype,
            settings.dtype,
        )
        model = load_model(
            BaseModelRef(base.id, merged, base.revision) if merged else base,
            device=device,
            dtype=dtype,
            quantization=settings.quantization,
            quant_type=settings.quant_type,
            double_quant=settings.double_quant,
        )
        engine = cls(
            settings, base, model, load_tokenizer(base), metrics, merged_weights=bool(merged)
        )
        engine.start()
        return engine

    def stop(self) -> None:
        self.scheduler.stop()

    def _queue(self, seq: Sequence) -> None:
        self.scheduler.submit(seq)

    def _chooser(self, params, seed, constraint) -> NextTokenChooser:
        return NextTokenChooser(params, seed, self.device, constraint)

    def info(self) -> dict:
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return self._info(dtype, self.device.type)


def own_merged_weights(settings: InferenceSettings) -> Path | None:
    """The merged adapter's own merged weights (its job's `merge`, checked against base +
    adapter when published, merged into the base it trained on with `merge_dequantized`),
    served as they are on an unquantized base, as the vllm engine serves them."""
    if not settings.merged_adapter or settings.quantization != "none":
        return None
    store = AdapterStore(settings.resolved_adapters_dir)
    folder = store.resolve(settings.merged_adapter).path / MERGED
    return folder if (folder / "config.json").is_file() else None
