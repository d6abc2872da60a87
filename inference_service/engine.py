"""The inference engine: one base model, its tokenizer, the adapter cache and the batching
scheduler. `submit` turns a request into a validated, tokenized `Sequence` and queues it;
the caller waits on the sequence (`result()` or `stream()`) and may `cancel()` it."""

import logging
import random
import threading
import time

import tuneyard
from tuneyard.adapter_store import AdapterStore
from tuneyard.errors import FailedPrecondition, InvalidArgument, TuneyardError
from tuneyard.metrics import BASE_LABEL, OTHER_LABEL
from tuneyard.modeling import (
    BaseModelRef,
    load_model,
    load_tokenizer,
    pick_device,
    pick_dtype,
    public_name,
    resolve_base_model,
)

from .adapter_cache import AdapterCache, LoadedAdapter
from .grammar import Grammars
from .lora import MultiLora
from .metrics import Metrics
from .params import GenerateInput
from .sampling import NextTokenChooser
from .scheduler import Scheduler
from .sequence import Sequence
from .settings import InferenceSettings
from .static_batch import StaticBatch, unsupported_reason

log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        settings: InferenceSettings,
        base: BaseModelRef,
        model,
        tokenizer,
        metrics: Metrics | None = None,
    ):
        self.settings = settings
        self.base = base
        self.served_name = settings.served_model_name or public_name(base.id)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.metrics = metrics or Metrics(settings.metrics_max_adapters)
        self.device = next(model.parameters()).device
        # Read before LoRA may wrap the output layer: the logits' width.
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.grammars = Grammars(tokenizer, self.vocab_size)
        self.lora = MultiLora(model, settings.max_loaded_adapters)
        model_lock = threading.Lock()
        self.adapters = AdapterCache(
            AdapterStore(settings.resolved_adapters_dir),
            self.lora,
            base,
            base_name=self.served_name,
            max_loaded=settings.max_loaded_adapters,
            max_rank=settings.max_adapter_rank,
            model_lock=model_lock,
            on_change=self.metrics.adapters_loaded.set,
            on_evict=self.metrics.adapter_evictions.inc,
            on_load=self.metrics.observe_load,
        )
        self.eos_ids = self._eos_ids()
        self.merged: LoadedAdapter | None = None
        if settings.merged_adapter:
            self.merged = self.adapters.read(self.adapters.store.resolve(settings.merged_adapter))
            self.lora.merge(self.merged.weights)
            log.info("serving adapter %s merged into the base weights", self.merged.key)
        self.scheduler = Scheduler(
            model,
            self.lora,
            model_lock,
            static=self._static_batch(),
            pad_token_id=tokenizer.pad_token_id,
            max_batch_size=settings.max_batch_size,
            max_batch_wait_s=settings.max_batch_wait_ms / 1000,
            max_queue=settings.max_queue,
            on_batch=self.metrics.batch_size.observe,
        )
        self.metrics.queue_size.set_function(lambda: self.scheduler.queue_size)
        self.scheduler.start()

    def _static_batch(self) -> StaticBatch | None:
        mode = self.settings.decode
        if mode == "dynamic" or (mode == "auto" and self.device.type != "cuda"):
            return None
        reason = unsupported_reason(self.model, self.settings.max_total_tokens)
        if reason is not None:
            if mode == "static":
                raise FailedPrecondition(f"TUNEYARD_DECODE=static cannot serve {reason}")
            log.info("decoding with a dynamic KV cache: no static batch for %s", reason)
            return None
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
    def load(cls, settings: InferenceSettings, metrics: Metrics | None = None) -> "Engine":
        base = resolve_base_model(settings.resolved_base_model)
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device, cpu_bf16_if_native=True)
        log.info("loading %s on %s (%s)", base.id, device, dtype)
        model = load_model(base, device=device, dtype=dtype, quantization=settings.quantization)
        return cls(settings, base, model, load_tokenizer(base), metrics)

    def stop(self) -> None:
        self.scheduler.stop()

    def submit(self, request: GenerateInput, route: str = "Generate") -> Sequence:
        """Validate and queue a request (`route`, the RPC, labels its metrics). Raises
        InvalidArgument, NotFound, FailedPrecondition or ResourceExhausted; the request is
        then not queued."""
        adapter = None
        try:
            request.check_one_input()
            request.parameters.validate(max_input_tokens=self.settings.max_input_tokens)
            adapter, manifest_adapter = self._adapter(request.adapter_id)
            seq = self._sequence(request, adapter, manifest_adapter, route)
            self.scheduler.submit(seq)
        except TuneyardError as err:
            if adapter is not None:
                self.adapters.release(adapter)
            # Only adapters that exist take one of the capped label values.
            label = self.metrics.adapter_label(adapter.key) if adapter else OTHER_LABEL
            if not request.adapter_id:
                label = BASE_LABEL
            self.metrics.requests.labels(route, err.code.lower(), label).inc()
            raise
        return seq

    def _adapter(self, adapter_id: str):
        """(adapter to route rows to, adapter whose manifest applies) for a request."""
        if self.merged is not None:
            if adapter_id not in (self.merged.version.name, self.merged.key):
                raise FailedPrecondition(
                    f"this deployment serves only adapter {self.merged.key}, merged into the "
                    f"base weights; asked for {adapter_id or 'the base model'!r}",
                    param="adapter_id",
                )
            return None, self.merged
        if not adapter_id:
            return None, None
        adapter = self.adapters.acquire(adapter_id)
        return adapter, adapter

    def _sequence(self, request: GenerateInput, adapter, manifest_adapter, route: str) -> Sequence:
        params = request.parameters
        unknown = sorted(t for t in params.logit_bias if not 0 <= t < self.vocab_size)
        if unknown:
            raise InvalidArgument(
                f"logit_bias names tokens outside the vocabulary (0 to {self.vocab_size - 1}): "
                f"{unknown}",
                param="logit_bias",
            )
        prompt, add_special = self._prompt(request, manifest_adapter)
        ids = self.tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
        if not ids:
            raise InvalidArgument("the input is empty after tokenization", param="inputs")
        if params.truncate is not None:
            ids = ids[-params.truncate :]
        limit = self.settings.max_input_tokens
        if len(ids) > limit:
            raise InvalidArgument(
                f"the input has {len(ids)} tokens, more than max_input_tokens={limit}; "
                "shorten it or set truncate",
                param="inputs",
            )
        room = self.settings.max_total_tokens - len(ids)
        max_new = params.max_new_tokens
        if max_new is not None and max_new > room:
            raise InvalidArgument(
                f"input tokens ({len(ids)}) + max_new_tokens ({max_new}) exceeds "
                f"max_total_tokens={self.settings.max_total_tokens}",
                param="max_new_tokens",
            )
        if room < 1:
            raise InvalidArgument(
                f"the input leaves no room for new tokens under "
                f"max_total_tokens={self.settings.max_total_tokens}",
                param="inputs",
            )
        constraint = self.grammars.constraint(*params.grammar) if params.grammar else None
        seed = None
        if params.sampling:
            seed = params.seed if params.seed is not None else random.getrandbits(63)
        eos_ids = set(self.eos_ids)
        if manifest_adapter is not None and manifest_adapter.manifest.eos_token:
            eos_id = self.tokenizer.convert_tokens_to_ids(manifest_adapter.manifest.eos_token)
            if isinstance(eos_id, int) and eos_id != self.tokenizer.unk_token_id:
                eos_ids.add(eos_id)
        return Sequence(
            tokenizer=self.tokenizer,
            prompt_text=prompt,
            prompt_ids=ids,
            params=params,
            max_new_tokens=max_new or min(self.settings.default_max_new_tokens, room),
            eos_ids=eos_ids,
            chooser=NextTokenChooser(params, seed or 0, self.device, constraint),
            seed=seed,
            adapter_key=adapter.key if adapter else None,
            answered_by=manifest_adapter.key if manifest_adapter else "",
            on_close=lambda seq, status: self._closed(seq, status, adapter, route),
        )

    def _prompt(self, request: GenerateInput, adapter: LoadedAdapter | None) -> tuple[str, bool]:
        """The prompt text and whether the tokenizer should add its special tokens."""
        if request.inputs:
            return request.inputs, True
        if request.fields:
            if adapter is None:
                raise InvalidArgument(
                    "fields need an adapter (its manifest holds the template); "
                    "the base model takes inputs or messages",
                    param="fields",
                )
            return adapter.template.render_prompt(request.fields), True
        if not self.tokenizer.chat_template:
            raise InvalidArgument(
                "the base model's tokenizer has no chat template; send inputs", param="messages"
            )
        for i, message in enumerate(request.messages):
            if not message.get("role"):
                raise InvalidArgument(f"messages[{i}] has no role", param="messages")
        try:
            prompt = self.tokenizer.apply_chat_template(
                request.messages,
                tools=request.tools or None,
                tokenize=False,
                add_generation_prompt=True,
            )
        except Exception as err:  # the template's own Jinja may raise anything
            raise InvalidArgument(
                f"the chat template does not render: {err}", param="messages"
            ) from err
        # Chat templates write their own special tokens.
        return prompt, False

    def _closed(
        self, seq: Sequence, status: str, adapter: LoadedAdapter | None, route: str
    ) -> None:
        if adapter is not None:
            self.adapters.release(adapter)
        m = self.metrics
        label = m.adapter_label(seq.answered_by)
        m.requests.labels(route, status, label).inc()
        m.prompt_tokens.labels(label).inc(len(seq.prompt_ids))
        m.generated_tokens.labels(label).inc(len(seq.ids))
        now = time.monotonic()
        if seq.first_token_at is not None:
            m.time_to_first_token.labels(label).observe(seq.first_token_at - seq.created_at)
            if len(seq.ids) > 1:
                per_token = (now - seq.first_token_at) / (len(seq.ids) - 1)
                m.time_per_output_token.labels(label).observe(per_token)
        m.request_duration.labels(route).observe(now - seq.created_at)

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        config_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if config_eos is not None:
            ids |= set(config_eos) if isinstance(config_eos, list) else {config_eos}
        return {i for i in ids if i is not None}

    def tokenize(self, text: str) -> list[tuple[int, str, int, int]]:
        """(id, text, start, stop) of each token of a raw input, special tokens added as
        generation adds them; start/stop are character offsets in `text`."""
        if not text:
            raise InvalidArgument("inputs cannot be empty", param="inputs")
        encoded = self.tokenizer(text, return_offsets_mapping=True)
        return [
            (token_id, text[start:stop], start, stop)
            for token_id, (start, stop) in zip(
                encoded["input_ids"], encoded["offset_mapping"], strict=True
            )
        ]

    def info(self) -> dict:
        return {
            "model_id": self.served_name,
            "model_dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "model_device_type": self.device.type,
            "max_input_tokens": self.settings.max_input_tokens,
            "max_total_tokens": self.settings.max_total_tokens,
            "max_batch_size": self.settings.max_batch_size,
            "max_loaded_adapters": self.settings.max_loaded_adapters,
            "version": tuneyard.__version__,
            "eos_token": self.tokenizer.eos_token or "",
        }
