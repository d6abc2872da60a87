"""Adapter validation, the LRU and hot reload, through a real adapter store."""

import concurrent.futures
import threading
import time

import pytest

from inference_service.adapter_cache import template_fields
from inference_service.params import GenerateInput, Parameters
from tests.support.adapters import edit_adapter_config, make_adapter
from tests.support.engines import make_engine
from tuneyard.adapter_store import Manifest
from tuneyard.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted


@pytest.fixture(scope="module")
def small_engine(tiny_llama, adapters_dir):
    """max_loaded_adapters=2, max_adapter_rank=8."""
    engine = make_engine(tiny_llama, adapters_dir, max_loaded_adapters=2, max_adapter_rank=8)
    yield engine
    engine.stop()


def generate(engine, adapter_id: str):
    return engine.submit(
        GenerateInput(
            inputs="Hi there", adapter_id=adapter_id, parameters=Parameters(max_new_tokens=4)
        )
    ).result(60)


def test_unknown_adapter_is_not_found(small_engine, tiny_llama, adapters_dir):
    with pytest.raises(NotFound, match="'ghost' not found"):
        generate(small_engine, "ghost")
    make_adapter(tiny_llama, adapters_dir, "known")
    with pytest.raises(NotFound, match="no version 7; versions: 1"):
        generate(small_engine, "known@7")


@pytest.mark.parametrize("adapter_id", ["../escape", "a/b", "", "x@y"])
def test_names_cannot_escape_the_store(small_engine, adapter_id):
    with pytest.raises(InvalidArgument):
        small_engine.adapters.load(adapter_id)


def refused(engine, version, match: str):
    with pytest.raises(FailedPrecondition, match=match):
        engine.adapters.load(version.id)
    info = next(a for a in engine.adapters.list() if a.id == version.id)
    assert info.state == "failed" and info.error
    # The service goes on serving.
    assert generate(engine, "").details.generated_tokens == 4


def test_wrong_base_model(small_engine, tiny_llama, adapters_dir):
    version = make_adapter(tiny_llama, adapters_dir, "wrongbase", base_model="other/model")
    refused(small_engine, version, "trained on 'other/model'")


def test_rank_too_high(small_engine, tiny_llama, adapters_dir):
    refused(
        small_engine,
        make_adapter(tiny_llama, adapters_dir, "bigrank", r=16),
        "rank 16 exceeds max_adapter_rank 8",
    )


def test_missing_target_module(small_engine, tiny_llama, tiny_bloom, adapters_dir):
    # Trained on BLOOM but claiming the Llama base: its modules do not exist here.
    version = make_adapter(
        tiny_bloom,
        adapters_dir,
        "bloomonllama",
        target_modules=("query_key_value",),
        base_model=str(tiny_llama),
    )
    refused(small_engine, version, "has no module .*query_key_value")


def test_target_not_linear(small_engine, tiny_llama, adapters_dir):
    from safetensors.torch import load_file, save_file

    version = make_adapter(tiny_llama, adapters_dir, "notlinear")
    weights = version.path / "adapter_model.safetensors"
    tensors = {
        key.replace("self_attn.q_proj", "input_layernorm"): t
        for key, t in load_file(weights).items()
    }
    save_file(tensors, weights)
    refused(small_engine, version, "input_layernorm is a LlamaRMSNorm, not a Linear layer")


def test_embedding_adapter_refused(small_engine, tiny_llama, adapters_dir):
    version = make_adapter(tiny_llama, adapters_dir, "embeds", target_modules=("embed_tokens",))
    refused(small_engine, version, "unexpected tensor .*embed_tokens")


def test_pickle_weights_refused(small_engine, tiny_llama, adapters_dir):
    version = make_adapter(tiny_llama, adapters_dir, "pickled")
    weights = version.path / "adapter_model.safetensors"
    weights.rename(version.path / "adapter_model.bin")
    refused(small_engine, version, r"no adapter_model.safetensors \(found adapter_model.bin")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"use_dora": True}, "use_dora, but .* has no DoRA magnitude vector"),
        ({"bias": "all"}, "bias 'all'"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ],
)
def test_unsupported_configs(small_engine, tiny_llama, adapters_dir, change, match):
    version = make_adapter(tiny_llama, adapters_dir, f"cfg-{next(iter(change))}")
    edit_adapter_config(version, **change)
    refused(small_engine, version, match)


def test_missing_manifest_is_not_a_version(small_engine, tiny_llama, adapters_dir):
    version = make_adapter(tiny_llama, adapters_dir, "nomanifest")
    (version.path / "tuneyard.json").unlink()
    with pytest.raises(NotFound):
        generate(small_engine, "nomanifest")


def test_corrupt_manifest(small_engine, tiny_llama, adapters_dir):
    version = make_adapter(tiny_llama, adapters_dir, "badmanifest")
    (version.path / "tuneyard.json").write_text("{not json")
    refused(small_engine, version, "no readable manifest")


def test_lru_evicts_least_recently_used(small_engine, tiny_llama, adapters_dir):
    for name in ("lru-a", "lru-b", "lru-c"):
        make_adapter(tiny_llama, adapters_dir, name)
    cache = small_engine.adapters
    generate(small_engine, "lru-a")
    generate(small_engine, "lru-b")
    generate(small_engine, "lru-a")  # b is now the least recently used
    generate(small_engine, "lru-c")
    states = {a.name: a.state for a in cache.list()}
    assert (states["lru-a"], states["lru-b"], states["lru-c"]) == ("loaded", "available", "loaded")
    assert cache.num_loaded == 2


def test_adapters_in_use_are_not_evicted(small_engine, tiny_llama, adapters_dir):
    for name in ("pin-a", "pin-b", "pin-c"):
        make_adapter(tiny_llama, adapters_dir, name)
    cache = small_engine.adapters
    a, b = cache.acquire("pin-a"), cache.acquire("pin-b")
    try:
        with pytest.raises(ResourceExhausted, match="in use"):
            cache.acquire("pin-c")
        with pytest.raises(FailedPrecondition, match="in use"):
            cache.unload("pin-a")
    finally:
        cache.release(a)
        cache.release(b)
    assert generate(small_engine, "pin-c").details.adapter == "pin-c@1"


def test_hot_reload_new_version(small_engine, tiny_llama, adapters_dir):
    make_adapter(tiny_llama, adapters_dir, "hot", seed=1)
    v1 = generate(small_engine, "hot")
    assert v1.details.adapter == "hot@1"
    in_flight = small_engine.submit(
        GenerateInput(inputs="Hi", adapter_id="hot", parameters=Parameters(max_new_tokens=40))
    )
    next(in_flight.stream(60))
    make_adapter(tiny_llama, adapters_dir, "hot", seed=99)
    v2 = generate(small_engine, "hot")
    assert v2.details.adapter == "hot@2"
    assert v2.generated_text != v1.generated_text
    assert generate(small_engine, "hot@1").generated_text == v1.generated_text
    # The request that started on version 1 finishes on it.
    assert in_flight.result(60).details.adapter == "hot@1"


def test_load_unload_list(small_engine, tiny_llama, adapters_dir):
    make_adapter(tiny_llama, adapters_dir, "admin", r=8)
    cache = small_engine.adapters
    info = cache.load("admin")
    assert (info.id, info.state, info.rank, info.version) == ("admin@1", "loaded", 8, "1")
    assert info.size_bytes > 0 and info.base_model == tiny_llama.name
    assert info.target_modules == ["q_proj", "v_proj"]
    assert info.template_fields == ["description", "product"]  # the email template's
    unloaded = cache.unload("admin@1")
    assert unloaded.state == "available"
    # Not loaded, it still says what it is (from its adapter_config.json).
    assert (unloaded.rank, unloaded.target_modules) == (8, ["q_proj", "v_proj"])
    with pytest.raises(NotFound):
        cache.unload("never-there")


def test_the_base_model_is_named_not_located(tiny_llama, adapters_dir):
    """TUNEYARD_SERVED_MODEL_NAME names the base model in answers; by default a local
    folder is named by its name. Adapters trained on it show the same name."""
    make_adapter(tiny_llama, adapters_dir, "named")
    engine = make_engine(tiny_llama, adapters_dir, served_model_name="acme/base-v2")
    try:
        assert engine.info()["model_id"] == "acme/base-v2"
        (info,) = [a for a in engine.adapters.list() if a.name == "named"]
        assert info.base_model == "acme/base-v2"
    finally:
        engine.stop()


def test_a_deleted_version_is_never_served_and_unloads_once_released(
    small_engine, tiny_llama, adapters_dir
):
    from tuneyard.adapter_store import AdapterStore

    make_adapter(tiny_llama, adapters_dir, "gone")
    make_adapter(tiny_llama, adapters_dir, "gone", seed=2)
    cache = small_engine.adapters
    cache.load("gone@1")
    pinned = cache.acquire("gone@2")
    AdapterStore(adapters_dir).delete("gone")
    # Still loaded, but a name that resolves to nothing gets no new request.
    with pytest.raises(NotFound, match="'gone' not found"):
        generate(small_engine, "gone")
    with pytest.raises(NotFound, match="'gone' not found"):
        cache.acquire("gone@1")
    info = cache.unload("gone")
    assert (info.id, info.state) == ("gone@2", "deleted")
    assert "gone@1" not in cache._loaded and "gone@2" in cache._loaded  # in use
    cache.release(pinned)
    assert "gone@2" not in cache._loaded
    assert "gone" not in {a.name for a in cache.list()}
    with pytest.raises(NotFound):  # nothing left to unload
        cache.unload("gone@1")


def test_template_fields_are_the_prompts_and_none_for_chat():
    def manifest(prompt: str, response: str) -> Manifest:
        return Manifest(
            name="a",
            base_model="b",
            recipe="sft",
            template_prompt=prompt,
            template_response=response,
            template_sha256="x",
        )

    fields = template_fields(manifest("{{ q }}{% if ctx %}{{ ctx }}{% endif %}", "{{ a }}"))
    assert fields == ["ctx", "q"]  # sorted, the response's own left out
    assert template_fields(manifest("{% for m in messages %}{% endfor %}", "")) == []


def test_a_name_with_no_live_version_unloads_its_loaded_versions(
    small_engine, tiny_llama, adapters_dir
):
    from tuneyard.adapter_store import ParityGate

    version = make_adapter(tiny_llama, adapters_dir, "gated-out")
    gate = ParityGate(state="failed", tokens=32, min_agreement=1.0)
    small_engine.adapters.store.update_manifest(
        version, version.manifest().model_copy(update={"gate": gate})
    )
    with pytest.raises(FailedPrecondition, match="no live version"):
        generate(small_engine, "gated-out")
    assert generate(small_engine, "gated-out@1").details.adapter == "gated-out@1"
    info = {a.id: a for a in small_engine.adapters.list()}["gated-out@1"]
    assert (info.state, info.gate, info.live) == ("loaded", "failed", False)
    assert small_engine.adapters.unload("gated-out").state == "available"


def _gate_reads(monkeypatch, cache, name: str) -> tuple[threading.Event, list]:
    """Hold the reads of `name`'s versions (its disk and tokenizer work) until the event
    is set; the list counts them."""
    opened, reads, read = threading.Event(), [], cache.read

    def held(version, *args, **kwargs):
        if version.name == name:
            reads.append(version.id)
            assert opened.wait(60)
        return read(version, *args, **kwargs)

    monkeypatch.setattr(cache, "read", held)
    return opened, reads


def test_a_loading_adapter_stalls_no_request_of_another(
    small_engine, tiny_llama, adapters_dir, monkeypatch
):
    """The read runs outside the cache's lock: while it lasts, streams of a loaded adapter
    end (their release), start (acquire) and the listing answers."""
    make_adapter(tiny_llama, adapters_dir, "steady")
    make_adapter(tiny_llama, adapters_dir, "slow-read")
    cache = small_engine.adapters
    generate(small_engine, "steady")
    opened, reads = _gate_reads(monkeypatch, cache, "slow-read")
    loading = concurrent.futures.ThreadPoolExecutor(1).submit(cache.acquire, "slow-read")
    try:
        while not reads:
            time.sleep(0.01)
        asked = concurrent.futures.ThreadPoolExecutor(1).submit(
            lambda: [generate(small_engine, "steady") for _ in range(3)]
        )
        assert all(r.details.adapter == "steady@1" for r in asked.result(30))
        assert {a.name: a.state for a in cache.list()}["steady"] == "loaded"
        assert not loading.done()
    finally:
        opened.set()
    cache.release(loading.result(30))
    assert reads == ["slow-read@1"]


def test_one_read_per_version_and_its_failure_reaches_every_waiter(
    small_engine, tiny_llama, adapters_dir, monkeypatch
):
    make_adapter(tiny_llama, adapters_dir, "once")
    make_adapter(tiny_llama, adapters_dir, "never", base_model="other/model")
    cache = small_engine.adapters
    for name, outcome in (("once", "loaded"), ("never", "refused")):
        opened, reads = _gate_reads(monkeypatch, cache, name)
        pool = concurrent.futures.ThreadPoolExecutor(3)
        asking = [pool.submit(cache.acquire, name) for _ in range(3)]
        while not reads:
            time.sleep(0.01)
        time.sleep(0.5)  # the other two are waiting on that read by now
        opened.set()
        if outcome == "loaded":
            adapters = [a.result(30) for a in asking]
            assert all(a is adapters[0] for a in adapters) and adapters[0].in_use == 3
            for adapter in adapters:
                cache.release(adapter)
        else:
            for asked in asking:
                with pytest.raises(FailedPrecondition, match="trained on 'other/model'"):
                    asked.result(30)
        assert reads == [f"{name}@1"]
    with pytest.raises(FailedPrecondition):  # a refused version is read again when asked
        cache.acquire("never")
    assert reads == ["never@1", "never@1"]
