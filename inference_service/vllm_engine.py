"""The vLLM engine: the same requests as the native engine, with tokens from vLLM's server
(paged KV cache, prefix caching, chunked prefill, tensor parallelism, fused multi-LoRA).

Everything above the tokens stays ours (EngineBase): the prompt is rendered and tokenized
here and sent as token ids, so templates, chat templates and truncation are exactly the
native engine's; each token vLLM returns goes through the same `Sequence`, so stop
sequences, finish reasons, text and details are too. vLLM is told to stop only where we
stop by id (end-of-sequence and special-token stops); when our sequence ends on a stop
string first, closing the stream aborts the request in vLLM.
"""

import asyncio
import contextlib
import json
import logging
import math
import threading
from pathlib import Path

import httpx
import torch

from tuneyard.adapter_store import MERGED, AdapterStore, BaseQuantization
from tuneyard.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TuneyardError,
    Unavailable,
)
from tuneyard.modeling import (
    BaseModelRef,
    load_tokenizer,
    pick_device,
    pick_dtype,
    resolve_base_model,
)

from .engine_base import EngineBase, config_eos_ids
from .lora import MultiLora
from .metrics import Metrics
from .peft_files import LoraWeights
from .sequence import RequestCancelled, Sequence
from .settings import InferenceSettings
from .vllm_server import (
    SERVED_BASE,
    VllmServer,
    server_args,
    vllm_installed,
    vllm_lora_rank,
    vllm_python,
)

log = logging.getLogger(__name__)

_SWEEP_S = 0.05  # how often cancelled requests are looked for
_GAUGES_S = 2.0  # how often vLLM's own gauges are read


class VllmEngine(EngineBase):
    name = "vllm"

    def __init__(
        self,
        settings: InferenceSettings,
        base: BaseModelRef,
        tokenizer,
        device: str,
        dtype: torch.dtype,
        metrics: Metrics | None = None,
    ):
        structure = _structure(base)
        super().__init__(
            settings,
            base,
            tokenizer,
            vocab_size=structure.get_output_embeddings().weight.shape[0],
            eos_ids=config_eos_ids(_generation_config(base)),
            metrics=metrics,
        )
        self.device, self.dtype = device, dtype
        self.loras = VllmLoras(MultiLora(structure, 1), merged=bool(settings.merged_adapter))
        # vLLM's in-flight 4 bit is NF4 with double quantization (server_args checks).
        served_on = BaseQuantization.of(
            settings.quantization, "nf4", True, str(dtype).removeprefix("torch.")
        )
        self.adapters = self._adapter_cache(self.loras, threading.Lock(), served_on)
        model_path = base.path
        if settings.merged_adapter:
            # Checked against the base's structure like any adapter, then served as weights.
            version = self.adapters.store.resolve(settings.merged_adapter)
            own = (version.path / MERGED / "config.json").is_file()
            self.merged = self.adapters.read(version, merged_weights=own)
            model_path = merged_weights(base, self.merged.version.path, self.merged.key, settings)
        self._args = lambda rank: server_args(
            settings, model_path, device, str(dtype).removeprefix("torch."), rank
        )
        # The child's --max-lora-rank: the largest rank on the volume, grown by a planned
        # restart when a larger adapter comes (_fit_rank). A server someone else runs is
        # taken to be started for the largest rank allowed.
        if settings.vllm_url:
            self.lora_rank = vllm_lora_rank(settings.max_adapter_rank)
        else:
            cap = settings.max_adapter_rank
            ranks = [r for r in self.adapters.ranks_on_volume() if r <= cap]
            self.lora_rank = vllm_lora_rank(max(ranks, default=1))
        self.server = VllmServer(settings, self._args(self.lora_rank))
        self._admin = httpx.Client(base_url=self.server.url, timeout=120)
        self.loras.connect(self.adapters.store, self.server, self._admin, self)
        self._slots = threading.BoundedSemaphore(settings.max_queue + settings.max_batch_size)
        # Requests sent to vLLM and not yet answered, and whether a planned restart holds
        # new ones back: it waits for the first to reach 0.
        self._flow = threading.Condition()
        self._in_flight = 0
        self._restarting = False
        self._running: dict[Sequence, asyncio.Task] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-io", daemon=True)

    def start(self) -> None:
        """Its event loop's thread and the vLLM child: `load` starts them."""
        self._thread.start()
        self._http = asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()
        self.server.start()

    @classmethod
    def load(cls, settings: InferenceSettings, metrics: Metrics | None = None) -> "VllmEngine":
        if not vllm_installed(settings):
            raise FailedPrecondition(
                f"TUNEYARD_ENGINE=vllm, but {vllm_python(settings)} has no vLLM: run "
                "`make vllm`, or set TUNEYARD_VLLM_PYTHON to the Python of an environment "
                "with vLLM"
            )
        base = resolve_base_model(settings.resolved_base_model)
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device, cpu_bf16_if_native=True)
        log.info(
            "serving %s with vLLM on %s in %s (TUNEYARD_DTYPE=%s)",
            base.id,
            device,
            dtype,
            settings.dtype,
        )
        engine = cls(settings, base, load_tokenizer(base), device, dtype, metrics)
        engine.start()
        return engine

    def watch_readiness(self, callback) -> None:
        self.server.on_ready = callback
        callback(self.server.ready)

    def wait_ready(self, timeout: float) -> bool:
        return self.server.wait_ready(timeout)

    def stop(self) -> None:
        self.server.stop()
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._admin.close()

    def info(self) -> dict:
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        return self._info(str(self.dtype).removeprefix("torch."), device_type)

    def _chooser(self, params, seed, constraint) -> None:
        return None  # vLLM chooses the tokens

    def _queue(self, seq: Sequence) -> None:
        body = request_body(seq, seq.adapter_key or SERVED_BASE)
        if seq.adapter_key:
            self._fit_rank(self.loras.rank_of(seq.adapter_key))
        admitted = self._admit(seq.adapter_key)
        for _ in range(2):
            if admitted:
                break
            # Loaded outside `_flow`: every stream's end takes it, from the event loop. A
            # restart that begins meanwhile fails the load; `_admit` waits for it.
            try:
                self.loras.ensure(seq.adapter_key)
            except Unavailable as err:
                log.info("adapter %s not loaded yet: %s", seq.adapter_key, err.message)
            admitted = self._admit(seq.adapter_key)
        if not admitted:
            raise Unavailable(f"vLLM did not load adapter {seq.adapter_key}; retry shortly")
        asyncio.run_coroutine_threadsafe(self._start(seq, body), self._loop)

    def _admit(self, adapter_key: str | None) -> bool:
        """Count a request in flight, once no planned restart holds new ones back and the
        child has its adapter; False: load the adapter first (again, if a restart came
        between)."""
        with self._flow:
            timeout = self.settings.vllm_start_timeout_s
            if not self._flow.wait_for(lambda: not self._restarting, timeout):
                raise Unavailable("the vllm engine is restarting; retry shortly")
            if not self.server.ready:
                raise Unavailable("the vllm engine is starting or restarting; retry shortly")
            if adapter_key and not self.loras.loaded(adapter_key):
                return False
            if not self._slots.acquire(blocking=False):
                raise ResourceExhausted(
                    f"{self.settings.max_queue + self.settings.max_batch_size} requests are "
                    "in flight; retry later"
                )
            self._in_flight += 1
            return True

    def _fit_rank(self, rank: int) -> None:
        """Restart the vLLM child with a larger --max-lora-rank when an adapter needs one:
        new requests wait, those in flight finish first, then the child restarts (adapters
        are loaded again on their next use). Only one restart runs at a time."""
        needed = vllm_lora_rank(rank)
        with self._flow:
            while needed > self.lora_rank and self._restarting:
                self._flow.wait()
            if needed <= self.lora_rank:
                return
            if self.settings.vllm_url:
                raise FailedPrecondition(
                    f"adapter rank {rank} needs --max-lora-rank {needed}, and the vLLM "
                    f"server at {self.server.url} is not ours to restart"
                )
            self._restarting = True
            self._flow.wait_for(lambda: self._in_flight == 0)
        try:
            log.info("restarting vLLM for adapters of rank %d (was %d)", needed, self.lora_rank)
            self.server.restart(self._args(needed))
            if not self.server.wait_ready(self.settings.vllm_start_timeout_s):
                raise Unavailable("the vllm engine did not come back after its restart")
            self.lora_rank = needed
        finally:
            with self._flow:
                self._restarting = False
                self._flow.notify_all()

    # The event loop's side.

    async def _open(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        http = httpx.AsyncClient(base_url=self.server.url, timeout=None, limits=limits)
        self._background = [
            asyncio.create_task(self._sweep_cancelled()),
            asyncio.create_task(self._read_gauges()),
        ]
        return http

    async def _close(self) -> None:
        for task in [*self._background, *self._running.values()]:
            task.cancel()
        await self._http.aclose()

    async def _start(self, seq: Sequence, body: dict) -> None:
        self._running[seq] = asyncio.current_task()
        try:
            await self._generate(seq, body)
        except asyncio.CancelledError:
            seq.fail(RequestCancelled("the request was cancelled"))
        except httpx.HTTPError as err:
            seq.fail(Unavailable(f"the vllm engine dropped the request: {err!r}"))
        except TuneyardError as err:
            seq.fail(err)
        except Exception as err:  # a malformed reply must not leave a client waiting
            log.exception("vLLM reply not understood")
            seq.fail(err)
        finally:
            self._running.pop(seq, None)
            self._slots.release()
            with self._flow:
                self._in_flight -= 1
                self._flow.notify_all()

    async def _generate(self, seq: Sequence, body: dict) -> None:
        if not body["stream"]:
            response = await self._http.post("/v1/completions", json=body)
            if response.status_code != 200:
                raise vllm_error(response.status_code, response.content)
            for choice in response.json()["choices"]:
                feed(seq, choice)
        else:
            async with self._http.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    raise vllm_error(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line.removeprefix("data: "))
                    if "error" in chunk:
                        raise vllm_error(chunk["error"].get("code") or 500, line)
                    for choice in chunk.get("choices", []):
                        feed(seq, choice)
                    if seq.done:
                        return  # leaving the block closes the stream: vLLM aborts the request
        if not seq.done:
            raise Unavailable("the vllm engine ended the request before its last token")

    async def _sweep_cancelled(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_S)
            for seq, task in list(self._running.items()):
                if seq.cancelled.is_set():
                    task.cancel()

    async def _read_gauges(self) -> None:
        m = self.metrics
        while True:
            await asyncio.sleep(_GAUGES_S)
            if not self.server.ready:
                continue
            try:
                text = (await self._http.get("/metrics", timeout=5)).text
            except httpx.HTTPError:
                continue
            values = vllm_gauges(text)
            m.running_requests.set(values.get("vllm:num_requests_running", 0))
            m.queue_size.set(values.get("vllm:num_requests_waiting", 0))
            m.kv_cache_usage.set(values.get("vllm:kv_cache_usage_perc", 0))


class VllmLoras:
    """The adapter cache's LoRA backend on the vLLM engine. A version is checked here
    against the base's structure (modules and shapes, on the meta device: no weights), then
    loaded into vLLM under its "name@version"; after vLLM restarts, it is loaded again on
    its next use."""

    def __init__(self, shapes: MultiLora, merged: bool = False):
        self.shapes = shapes
        self.merged = merged  # the one adapter is served merged into the weights (by PEFT)
        self.store: AdapterStore | None = None
        self.server: VllmServer | None = None
        self.admin: httpx.Client | None = None
        self._loaded_in: dict[str, int] = {}  # key -> the vLLM generation that has it
        self._ranks: dict[str, int] = {}  # key -> its rank, once read
        self._lock = threading.Lock()

    def connect(
        self, store: AdapterStore, server: VllmServer, admin: httpx.Client, engine: "VllmEngine"
    ) -> None:
        self.store, self.server, self.admin, self.engine = store, server, admin, engine

    def check(self, weights: LoraWeights) -> None:
        if weights.tokens is not None:
            raise FailedPrecondition(
                "vLLM does not serve adapters that add tokens (it dropped LoRA extra "
                "vocabulary): serve it with the native engine (TUNEYARD_ENGINE=native)"
            )
        self.shapes.check(weights)
        if weights.dora and not self.merged:
            raise FailedPrecondition(
                "vLLM does not serve DoRA adapters unmerged: serve it with the native engine "
                "(TUNEYARD_ENGINE=native), or merged (TUNEYARD_MERGED_ADAPTER)"
            )

    def prepare(self, key: str, weights: LoraWeights) -> None:
        """Checked already (AdapterCache.read), outside the cache's lock: vLLM reads the
        version's own folder. One larger than the child's rank is loaded after its
        restart, by the first request for it, as is one read while the child restarts."""
        self._ranks[key] = weights.rank
        if vllm_lora_rank(weights.rank) <= self.engine.lora_rank:
            with contextlib.suppress(Unavailable):  # not ready: its first use loads it
                self.ensure(key)

    def add(self, key: str, weights: LoraWeights) -> None:
        """Loaded by `prepare` already (an HTTP call, which must not hold the cache's lock)."""

    def rank_of(self, key: str) -> int:
        return self._ranks[key]

    def loaded(self, key: str) -> bool:
        """vLLM's child as it runs now has the version."""
        return self._loaded_in.get(key) == self.server.generation

    def ensure(self, key: str) -> None:
        with self._lock:
            if self.loaded(key):
                return
            if not self.server.ready:
                raise Unavailable("the vllm engine is starting or restarting; retry shortly")
            path = self.store.resolve(key).path
            body = {"lora_name": key, "lora_path": str(path), "load_inplace": True}
            reply = self._post("/v1/load_lora_adapter", body)
            if reply.status_code != 200:
                raise FailedPrecondition(f"vLLM refused adapter {key}: {_message(reply)}")
            self._loaded_in[key] = self.server.generation

    def remove(self, key: str) -> None:
        with self._lock:
            if self._loaded_in.pop(key, None) == self.server.generation:
                reply = self._post("/v1/unload_lora_adapter", {"lora_name": key})
                if reply.status_code not in (200, 404):
                    log.warning("vLLM did not unload %s: %s", key, _message(reply))

    def _post(self, path: str, body: dict) -> httpx.Response:
        try:
            return self.admin.post(path, json=body)
        except httpx.HTTPError as err:
            raise Unavailable(f"the vllm engine is not reachable: {err!r}") from err


def request_body(seq: Sequence, model: str) -> dict:
    """vLLM's completion request for a sequence; a parameter vLLM cannot honour with the
    native engine's meaning is refused here, naming it."""
    p = seq.params
    if p.typical_p is not None:
        raise InvalidArgument(
            "typical_p is not supported by the vllm engine (TUNEYARD_ENGINE=vllm); "
            "use top_p or top_k",
            param="typical_p",
        )
    body = {
        "model": model,
        "prompt": seq.prompt_ids,
        "max_tokens": seq.max_new_tokens,
        # vLLM returns prompt logprobs only in whole replies (TGI streams no prefill either).
        "stream": not p.decoder_input_details,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
        "logprobs": p.top_n_tokens or 0,
        # vLLM stops by id where our sequence does; stop strings are ours alone.
        "stop_token_ids": sorted(seq.eos_ids | seq.stop_token_ids),
        "temperature": (p.temperature or 1.0) if p.sampling else 0.0,
    }
    if p.sampling:
        body.update(seed=seq.seed, top_p=p.top_p or 1.0, top_k=p.top_k or 0)
    if p.repetition_penalty is not None:
        body["repetition_penalty"] = p.repetition_penalty
    if p.presence_penalty:
        body["presence_penalty"] = p.presence_penalty
    if p.frequency_penalty:
        body["frequency_penalty"] = p.frequency_penalty
    if p.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in p.logit_bias.items()}
    if p.decoder_input_details:
        body["prompt_logprobs"] = p.top_n_tokens or 0
    if p.grammar:
        kind, value = p.grammar
        body["structured_outputs"] = (
            {"json": json.loads(value), "disable_any_whitespace": True}
            if kind == "json"
            else {"regex": value}
        )
    return body


def feed(seq: Sequence, choice: dict) -> None:
    """Hand one streamed choice's tokens (ids, logprobs, alternatives) to the sequence."""
    prompt_logprobs = choice.get("prompt_logprobs")
    n = seq.params.top_n_tokens or 0
    if prompt_logprobs and seq.params.decoder_input_details and not seq.prefill:
        # Each entry holds the prompt's token and the n likeliest: {id: {"logprob", ...}}.
        entries = prompt_logprobs[1:]
        seq.set_prefill(
            [
                entry[str(token_id)]["logprob"]
                for token_id, entry in zip(seq.prompt_ids[1:], entries, strict=True)
            ],
            [
                sorted(((int(k), v["logprob"]) for k, v in entry.items()), key=lambda p: -p[1])[:n]
                for entry in entries
            ]
            if n
            else (),
        )
    logprobs = choice.get("logprobs") or {}
    token_logprobs = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    for i, token_id in enumerate(choice.get("token_ids") or []):
        if seq.done:
            return
        logprob = token_logprobs[i] if i < len(token_logprobs) else math.nan
        top = []
        if n and i < len(tops):
            pairs = [(int(k.removeprefix("token_id:")), v) for k, v in tops[i].items()]
            top = sorted(pairs, key=lambda pair: -pair[1])[:n]
        seq.add(token_id, logprob, top)


def vllm_error(status: int, body: bytes | str) -> TuneyardError:
    """vLLM's error reply as ours: its message, and the field it names."""
    try:
        error = json.loads(body).get("error", {})
        message, param = error.get("message", ""), error.get("param") or ""
    except (ValueError, AttributeError):
        message, param = (body.decode() if isinstance(body, bytes) else body)[:500], ""
    message = f"vllm engine: {message}"
    if status == 400:
        return InvalidArgument(message, param=param)
    if status == 404:
        return NotFound(message, param=param)
    return Unavailable(message)


def vllm_gauges(text: str) -> dict[str, float]:
    """Unlabelled sums of the gauges in a Prometheus exposition, by metric name."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("vllm:") and " " in line:
            name, _, value = line.rpartition(" ")
            name = name.split("{", 1)[0]
            try:
                values[name] = values.get(name, 0.0) + float(value)
            except ValueError:
                continue
    return values


def _message(reply: httpx.Response) -> str:
    try:
        body = reply.json()
        return str(body.get("error", {}).get("message") or body.get("message") or body)
    except ValueError:
        return reply.text[:500]


def _structure(base: BaseModelRef):
    """The base model's modules and shapes, with no weights (the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base.path)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _generation_config(base: BaseModelRef):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(base.path)
    except OSError:  # no generation_config.json
        return None


def merged_weights(
    base: BaseModelRef, adapter_dir: Path, key: str, settings: InferenceSettings
) -> Path:
    """Base + adapter as one model folder for vLLM: the version's own `merged/` when the
    job wrote one, else merged here once and kept under TUNEYARD_HOME."""
    if (adapter_dir / MERGED / "config.json").is_file():
        return adapter_dir / MERGED
    out = settings.home / "merged" / key
    if (out / "config.json").is_file():
        return out
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    log.info("merging %s into the base weights for vLLM (once)", adapter_dir)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    staging = out.with_name(out.name + ".partial")
    merged.save_pretrained(staging, safe_serialization=True)
    load_tokenizer(base).save_pretrained(staging)
    staging.rename(out)
    return out
