"""What every engine does above its token source: check a request, resolve its adapter,
render its prompt (the adapter's template, the chat template), tokenize it, wrap it in a
`Sequence` and count it in the metrics. The native engine and the vLLM engine differ only
in where a sequence's tokens come from, so the gateway, the trainer and the evaluation
cannot tell them apart."""

import random
import time

import tuneyard
from tuneyard.adapter_store import AdapterStore, BaseQuantization
from tuneyard.errors import FailedPrecondition, InvalidArgument, TuneyardError
from tuneyard.metrics import BASE_LABEL, OTHER_LABEL
from tuneyard.modeling import BaseModelRef, public_name

from .adapter_cache import AdapterCache, LoadedAdapter
from .grammar import Constraint, Grammars
from .metrics import Metrics
from .params import GenerateInput, Parameters
from .sampling import NextTokenChooser
from .sequence import Sequence
from .settings import InferenceSettings


class EngineBase:
    """Subclasses make `self.adapters` (an AdapterCache over their LoRA backend) and
    implement `_queue`, `_chooser`, `info` and `stop`."""

    name = ""  # "native" or "vllm": named in errors about what one engine cannot do

    def __init__(
        self,
        settings: InferenceSettings,
        base: BaseModelRef,
        tokenizer,
        vocab_size: int,
        eos_ids: set[int],
        metrics: Metrics | None,
    ):
        self.settings = settings
        self.base = base
        self.served_name = settings.served_model_name or public_name(base.id)
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size  # the logits' width
        self.eos_ids = {i for i in eos_ids | {tokenizer.eos_token_id} if i is not None}
        self.metrics = metrics or Metrics(settings.metrics_max_adapters)
        self.grammars = Grammars(tokenizer, vocab_size)
        self.merged: LoadedAdapter | None = None

    def _adapter_cache(self, lora, model_lock, served_on: BaseQuantization) -> AdapterCache:
        """`served_on`: how this engine holds the base's weights."""
        return AdapterCache(
            AdapterStore(self.settings.resolved_adapters_dir),
            lora,
            self.base,
            base_name=self.served_name,
            max_loaded=self.settings.max_loaded_adapters,
            max_rank=self.settings.max_adapter_rank,
            model_lock=model_lock,
            served_on=served_on,
            quant_mismatch=self.settings.adapter_quant_mismatch,
            tokenizer=self.tokenizer,
            on_change=self.metrics.adapters_loaded.set,
            on_evict=self.metrics.adapter_evictions.inc,
            on_load=self.metrics.observe_load,
        )

    def _queue(self, seq: Sequence) -> None:
        raise NotImplementedError

    def watch_readiness(self, callback) -> None:
        """Call `callback(ready)` now and whenever readiness changes."""
        callback(True)

    def _chooser(
        self, params: Parameters, seed: int, constraint: Constraint | None
    ) -> NextTokenChooser | None:
        raise NotImplementedError

    def info(self) -> dict:
        raise NotImplementedError

    def start(self) -> None:
        """Start what serves requests (threads, a child process); construction starts none."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def submit(self, request: GenerateInput, route: str = "Generate") -> Sequence:
        """Validate and queue a request (`route`, the RPC, labels its metrics). Raises
        InvalidArgument, NotFound, FailedPrecondition, ResourceExhausted or Unavailable;
        the request is then not queued."""
        adapter = None
        try:
            request.check_one_input()
            request.parameters.validate(max_input_tokens=self.settings.max_input_tokens)
            adapter, manifest_adapter = self._adapter(request.adapter_id)
            seq = self._sequence(request, adapter, manifest_adapter, route)
            self._queue(seq)
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
        tokenizer = self._tokenizer(manifest_adapter)
        vocab = max(self.vocab_size, len(tokenizer))  # an adapter's added tokens count
        if unknown := sorted({t for t in request.continuation_ids if not 0 <= t < vocab}):
            raise InvalidArgument(
                f"continuation_ids names tokens outside the vocabulary (0 to {vocab - 1}): "
                f"{unknown}",
                param="continuation_ids",
            )
        prompt, add_special = self._prompt(request, manifest_adapter, tokenizer)
        ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
        if not ids:
            raise InvalidArgument("the input is empty after tokenization", param="inputs")
        if params.truncate is not None:
            ids = ids[-params.truncate :]
        ids = ids + request.continuation_ids
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
            eos_id = tokenizer.convert_tokens_to_ids(manifest_adapter.manifest.eos_token)
            if isinstance(eos_id, int) and eos_id != tokenizer.unk_token_id:
                eos_ids.add(eos_id)
        return Sequence(
            tokenizer=tokenizer,
            prompt_text=prompt,
            prompt_ids=ids,
            params=params,
            max_new_tokens=max_new or min(self.settings.default_max_new_tokens, room),
            eos_ids=eos_ids,
            chooser=self._chooser(params, seed or 0, constraint),
            seed=seed,
            adapter_key=adapter.key if adapter else None,
            answered_by=manifest_adapter.key if manifest_adapter else "",
            on_close=lambda seq, status: self._closed(
                seq, status, adapter, manifest_adapter, route
            ),
        )

    def _tokenizer(self, adapter: LoadedAdapter | None):
        """The adapter's own tokenizer where it adds tokens, else the base's."""
        if adapter is not None and adapter.tokenizer is not None:
            return adapter.tokenizer
        return self.tokenizer

    def _prompt(
        self, request: GenerateInput, adapter: LoadedAdapter | None, tokenizer
    ) -> tuple[str, bool]:
        """The prompt text and whether `tokenizer` should add its special tokens."""
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
        if not tokenizer.chat_template:
            raise InvalidArgument(
                "the base model's tokenizer has no chat template; send inputs", param="messages"
            )
        for i, message in enumerate(request.messages):
            if not message.get("role"):
                raise InvalidArgument(f"messages[{i}] has no role", param="messages")
        try:
            prompt = tokenizer.apply_chat_template(
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
        self,
        seq: Sequence,
        status: str,
        adapter: LoadedAdapter | None,
        manifest_adapter: LoadedAdapter | None,
        route: str,
    ) -> None:
        if adapter is not None:
            self.adapters.release(adapter)
        m = self.metrics
        label = m.adapter_label(seq.answered_by)
        m.requests.labels(route, status, label).inc()
        if manifest_adapter is not None and manifest_adapter.faithful is False:
            m.unfaithful_requests.labels(label).inc()
        m.prompt_tokens.labels(label).inc(len(seq.prompt_ids))
        m.generated_tokens.labels(label).inc(len(seq.ids))
        now = time.monotonic()
        if seq.first_token_at is not None:
            m.time_to_first_token.labels(label).observe(seq.first_token_at - seq.created_at)
            if len(seq.ids) > 1:
                per_token = (now - seq.first_token_at) / (len(seq.ids) - 1)
                m.time_per_output_token.labels(label).observe(per_token)
        m.request_duration.labels(route).observe(now - seq.created_at)

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

    def _info(self, dtype: str, device_type: str) -> dict:
        return {
            "model_id": self.served_name,
            "model_dtype": dtype,
            "model_device_type": device_type,
            "max_input_tokens": self.settings.max_input_tokens,
            "max_total_tokens": self.settings.max_total_tokens,
            "max_batch_size": self.settings.max_batch_size,
            "max_loaded_adapters": self.settings.max_loaded_adapters,
            "version": tuneyard.__version__,
            "eos_token": self.tokenizer.eos_token or "",
        }


def config_eos_ids(generation_config) -> set[int]:
    """The end-of-sequence ids a model's generation config names (an int or a list)."""
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list) else {eos}
