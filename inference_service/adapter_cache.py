"""Adapters from the adapters volume, validated, loaded on first use and kept in an LRU.

A cache key is "name@version". A request for "name" resolves to the newest version on disk
at that moment, so a newly published version is a new key (hot reload) while requests in
flight keep the version they started with. Loaded adapters in use by a request are pinned
and never evicted. A version deleted from the volume no longer resolves, so no new request
gets it even while it is still loaded; unloading it then frees its slot (at once, or when
the last request using it ends).
"""

import copy
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import jinja2.meta

from tuneyard.adapter_store import (
    AdapterId,
    AdapterStore,
    AdapterVersion,
    BaseQuantization,
    Manifest,
)
from tuneyard.errors import FailedPrecondition, NotFound, ResourceExhausted, TuneyardError
from tuneyard.modeling import BaseModelRef, public_name
from tuneyard.templates import PromptTemplate, parse

from .adapter_tokenizer import adapter_tokenizer
from .lora import MultiLora
from .peft_files import LoraWeights, configured_lora, read_adapter

log = logging.getLogger(__name__)


@dataclass
class LoadedAdapter:
    version: AdapterVersion
    manifest: Manifest
    weights: LoraWeights
    size_bytes: int
    faithful: bool | None = None  # served on the base as it trained; None: not recorded
    tokenizer: object | None = None  # its own, when it adds tokens; None: the base's
    last_used_at: float = 0.0
    in_use: int = 0

    @property
    def key(self) -> str:
        return self.version.id

    @functools.cached_property
    def template(self) -> PromptTemplate:
        """Compiled once per loaded version, not per request (the sandbox checks its AST)."""
        return PromptTemplate(self.manifest.template_prompt, self.manifest.template_response)


@dataclass
class AdapterInfo:
    """What ListAdapters reports about one adapter version."""

    id: str
    name: str
    version: str
    state: str  # available, loaded, failed, or deleted (from the volume, now unloaded)
    rank: int = 0
    target_modules: list[str] = field(default_factory=list)
    size_bytes: int = 0
    last_used_at: float = 0.0
    base_model: str = ""
    created_at: float = 0.0
    recipe: str = ""
    template_fields: list[str] = field(default_factory=list)
    error: str = ""
    trained_on: str = ""  # the base's quantization while it trained ("unknown": not recorded)
    served_on: str = ""  # the base's quantization on this service
    faithful: bool | None = None  # the two hold the same weights; None: not known
    gate: str = ""  # its parity gate's state; "" when it has none
    live: bool = True  # its name may mean it: no gate, passed, skipped, or promoted

    @property
    def loaded(self) -> bool:
        return self.state == "loaded"


def template_fields(manifest: Manifest) -> list[str]:
    """What a request's `fields` fill in the adapter's prompt template, so a client (the
    console) can ask for them; none for a chat adapter, whose manifest has no response
    template (it takes `messages`)."""
    if not manifest.template_response:
        return []
    return sorted(jinja2.meta.find_undeclared_variables(parse(manifest.template_prompt)))


@dataclass
class _PendingLoad:
    """One version's read in progress, which other requests for it wait on."""

    done: threading.Event = field(default_factory=threading.Event)
    error: TuneyardError | None = None


class AdapterCache:
    """`model_lock` is held by the engine around each forward; adding or removing an
    adapter's layers takes it too, so a forward never sees half an adapter.

    `served_on` is how the engine holds the base; an adapter whose manifest says it trained
    on a base held otherwise (QLoRA's 4 bit served on 16 bit...) is unfaithful, and
    `quant_mismatch` says what then: allow, warn (a log line at load) or refuse."""

    def __init__(
        self,
        store: AdapterStore,
        lora: MultiLora,
        base: BaseModelRef,
        *,
        base_name: str = "",
        max_loaded: int,
        max_rank: int,
        model_lock: threading.Lock,
        served_on: BaseQuantization,
        quant_mismatch: str = "warn",
        tokenizer=None,
        on_change: Callable[[int], None] = lambda num_loaded: None,
        on_evict: Callable[[], None] = lambda: None,
        on_load: Callable[[str, float], None] = lambda key, seconds: None,
    ):
        self.store = store
        self.lora = lora
        self.base = base
        self.base_name = base_name or public_name(base.id)
        self.max_loaded = max_loaded
        self.max_rank = max_rank
        self.model_lock = model_lock
        self.served_on = served_on
        self.quant_mismatch = quant_mismatch
        self.tokenizer = tokenizer  # the base's: adapters' own are checked against it
        self.on_change = on_change
        self.on_evict = on_evict
        self.on_load = on_load
        self._loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()  # least recent first
        self._failed: dict[str, str] = {}
        self._doomed: set[str] = set()  # deleted from the volume; removed once released
        self._loading: dict[str, _PendingLoad] = {}  # versions being read, by id
        self._lock = threading.RLock()

    def acquire(self, adapter_id: str) -> LoadedAdapter:
        """Resolve, load if needed and pin an adapter for one request; `release` it after."""
        return self._load(self.store.resolve(adapter_id), pin=True)

    def release(self, adapter: LoadedAdapter) -> None:
        with self._lock:
            adapter.in_use -= 1
            if not adapter.in_use and adapter.key in self._doomed:
                self._doomed.discard(adapter.key)
                if self._loaded.get(adapter.key) is adapter:
                    self._remove(adapter.key)

    def load(self, adapter_id: str) -> AdapterInfo:
        version = self.store.resolve(adapter_id)
        self._load(version)
        return self._info(version)

    def unload(self, adapter_id: str) -> AdapterInfo:
        """'name@version' unloads that version; 'name' every loaded version of the name."""
        wanted = AdapterId.parse(adapter_id)
        try:
            version = self.store.resolve(adapter_id)
        except NotFound as err:
            return self._unload_deleted(adapter_id, err)
        except FailedPrecondition:  # a name none of whose versions is live (parity gate)
            version = self.store.versions(wanted.name)[-1]
        with self._lock:
            keys = (
                [version.id]
                if wanted.version is not None
                else [key for key, a in self._loaded.items() if a.version.name == version.name]
            )
            busy = [key for key in keys if key in self._loaded and self._loaded[key].in_use]
            if busy:
                raise FailedPrecondition(
                    f"adapter {', '.join(busy)} is in use by a running request; retry later"
                )
            for key in keys:
                if key in self._loaded:
                    self._remove(key)
        return self._info(version)

    def _unload_deleted(self, adapter_id: str, not_found: NotFound) -> AdapterInfo:
        """Versions gone from the volume but still loaded: those in use are removed when
        their last request releases them (none can take them again meanwhile)."""
        wanted = AdapterId.parse(adapter_id)
        with self._lock:
            keys = sorted(
                (key for key, a in self._loaded.items() if wanted.matches(a.version)),
                key=lambda key: int(self._loaded[key].version.version),
            )
            if not keys:
                raise not_found
            last = self._loaded[keys[-1]].version
            for key in keys:
                if self._loaded[key].in_use:
                    self._doomed.add(key)
                else:
                    self._remove(key)
                self._failed.pop(key, None)
            return AdapterInfo(id=last.id, name=last.name, version=last.version, state="deleted")

    def ranks_on_volume(self) -> list[int]:
        """The rank of every version on the volume trained on this base, from its config
        (no weights read); versions that cannot be read are left out."""
        ranks = []
        for version in self.store.all_versions():
            try:
                if self._on_this_base(version.manifest()):
                    ranks.append(configured_lora(version.path)[0])
            except (OSError, ValueError):
                continue
        return ranks

    def list(self) -> list[AdapterInfo]:
        with self._lock:
            loaded, failed = dict(self._loaded), dict(self._failed)
        return [
            self._info(v, (loaded.get(v.id), failed.get(v.id))) for v in self.store.all_versions()
        ]

    @property
    def num_loaded(self) -> int:
        return len(self._loaded)

    def read(self, version: AdapterVersion, merged_weights: bool = False) -> LoadedAdapter:
        """Read and validate a version against the served base model (not cached).
        `merged_weights`: the engine serves the version's own merged weights, so the base
        it holds is the one they were merged into (`merged_on`), not its own."""
        try:
            manifest = version.manifest()
        except (OSError, ValueError) as err:
            raise FailedPrecondition(
                f"adapter {version.id} has no readable manifest: {err}"
            ) from err
        if not self._on_this_base(manifest):
            raise FailedPrecondition(
                f"adapter {version.id} was trained on {public_name(manifest.base_model)!r} "
                f"(revision {manifest.base_model_revision or '?'}), but this service serves "
                f"{self.base_name!r} (revision {self.base.revision})"
            )
        served_on = self.served_on
        if merged_weights and manifest.merged_on is not None and served_on.mode == "none":
            served_on = manifest.merged_on.model_copy(update={"dtype": served_on.dtype})
        trained_on, faithful = self._quantization(manifest, served_on)
        if faithful is False:
            reason = (
                f"adapter {version.id} was trained on a {trained_on} base, but this service "
                f"serves it on {served_on.describe()}"
            )
            if self.quant_mismatch == "refuse":
                raise FailedPrecondition(
                    f"{reason} (TUNEYARD_ADAPTER_QUANT_MISMATCH=refuse): serve the base as it "
                    "was trained (TUNEYARD_QUANTIZATION, TUNEYARD_QUANT_TYPE, "
                    "TUNEYARD_DOUBLE_QUANT), or allow the mismatch"
                )
            if self.quant_mismatch == "warn":
                log.warning("%s: its outputs may differ from those it was evaluated on", reason)
        weights = read_adapter(version.path, self.max_rank)
        self.lora.check(weights)
        added = manifest.added_tokens
        if (weights.tokens is not None) != bool(added):
            raise FailedPrecondition(
                f"adapter {version.id}: its manifest's added_tokens {added} and its weights' "
                "added token rows disagree"
            )
        tokenizer = adapter_tokenizer(version.path, self.tokenizer, added)
        return LoadedAdapter(
            version,
            manifest,
            weights,
            size_bytes=version.size_bytes(),
            faithful=faithful,
            tokenizer=tokenizer,
        )

    def _quantization(
        self, manifest: Manifest, served_on: BaseQuantization
    ) -> tuple[str, bool | None]:
        """(how the base was held while the adapter trained, whether `served_on` holds it
        the same way); ('unknown', None) when its manifest does not say."""
        trained = manifest.base_quantization()
        if trained is None:
            return "unknown", None
        return trained.describe(), trained.same_weights(served_on)

    def _load(self, version: AdapterVersion, pin: bool = False) -> LoadedAdapter:
        """The loaded adapter, read first if it is not. The read (disk, tokenizer, the
        backend's own loading) runs outside the lock, which the engine takes as rows end:
        a load must not stall the running batch. One read per version at a time; others
        asking for it wait for that read only. `pin`: counted in use before any eviction
        can see it."""
        while True:
            with self._lock:
                adapter = self._loaded.get(version.id)
                if adapter is not None:
                    if pin:
                        adapter.in_use += 1
                        adapter.last_used_at = time.time()
                    self._loaded.move_to_end(adapter.key)
                    return adapter
                pending = self._loading.get(version.id)
                if pending is None:
                    pending = self._loading[version.id] = _PendingLoad()
                    break
            pending.done.wait()
            if pending.error is not None:
                raise copy.copy(pending.error)  # each waiter its own traceback
        try:
            return self._read_and_insert(version, pin)
        except TuneyardError as err:
            pending.error = err
            raise
        finally:
            with self._lock:
                del self._loading[version.id]
            pending.done.set()

    def _read_and_insert(self, version: AdapterVersion, pin: bool) -> LoadedAdapter:
        start = time.perf_counter()
        try:
            adapter = self.read(version)
            self.lora.prepare(adapter.key, adapter.weights)
        except TuneyardError as err:
            with self._lock:
                self._failed[version.id] = err.message
            log.warning("adapter %s refused: %s", version.id, err.message)
            raise
        with self._lock:
            try:
                self._make_room()
            except ResourceExhausted:
                self.lora.remove(adapter.key)  # what prepare loaded into the backend
                raise
            with self.model_lock:
                self.lora.add(adapter.key, adapter.weights)
            self._loaded[adapter.key] = adapter
            self._failed.pop(adapter.key, None)
            if pin:
                adapter.in_use += 1
                adapter.last_used_at = time.time()
            self.on_change(len(self._loaded))
        seconds = time.perf_counter() - start
        log.info(
            "adapter %s loaded in %.3f s (rank %d)", adapter.key, seconds, adapter.weights.rank
        )
        self.on_load(adapter.key, seconds)
        return adapter

    def _make_room(self) -> None:
        while len(self._loaded) >= self.max_loaded:
            idle = next((key for key, a in self._loaded.items() if not a.in_use), None)
            if idle is None:
                raise ResourceExhausted(
                    f"all {self.max_loaded} loaded adapters are in use; retry later"
                )
            self._remove(idle)
            self.on_evict()
            log.info("adapter %s evicted", idle)

    def _remove(self, key: str) -> None:
        with self.model_lock:
            self.lora.remove(key)
        del self._loaded[key]
        self.on_change(len(self._loaded))

    def _on_this_base(self, manifest) -> bool:
        same_revision = bool(manifest.base_model_revision) and (
            manifest.base_model_revision == self.base.revision
        )
        return same_revision or manifest.base_model == self.base.id

    def _info(
        self, version: AdapterVersion, state: tuple[LoadedAdapter | None, str | None] | None = None
    ) -> AdapterInfo:
        """From the volume, outside the lock (a listing reads every manifest); `state`:
        the version's (loaded adapter, failure) as the caller saw them, else read now."""
        if state is None:
            with self._lock:
                state = self._loaded.get(version.id), self._failed.get(version.id)
        loaded, failed = state
        info = AdapterInfo(
            id=version.id, name=version.name, version=version.version, state="available"
        )
        try:
            manifest = loaded.manifest if loaded else version.manifest()
            info.recipe = manifest.recipe
            info.base_model = (
                self.base_name if self._on_this_base(manifest) else public_name(manifest.base_model)
            )
            info.created_at = manifest.created_at
            info.size_bytes = version.size_bytes()
            info.template_fields = template_fields(manifest)
            if not loaded:
                info.rank, info.target_modules = configured_lora(version.path)
            info.trained_on, info.faithful = self._quantization(manifest, self.served_on)
            info.served_on = self.served_on.describe()
            # From the volume even when loaded: the trainer judges the gate, and promotes,
            # after a version is loaded.
            gate = version.manifest().gate if loaded else manifest.gate
            if gate is not None:
                info.gate, info.live = gate.state, gate.live
        except (OSError, ValueError, jinja2.TemplateSyntaxError) as err:
            info.state, info.error = "failed", f"unreadable manifest or adapter config: {err}"
        if loaded:
            info.state = "loaded"
            info.rank = loaded.weights.rank
            info.target_modules = loaded.weights.target_modules
            info.last_used_at = loaded.last_used_at
        elif failed is not None:
            info.state, info.error = "failed", failed
        return info
