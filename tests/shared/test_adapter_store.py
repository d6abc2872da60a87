import threading
from pathlib import Path

import pytest

from tuneyard.adapter_store import MANIFEST, AdapterStore, Manifest, parse_adapter_id
from tuneyard.errors import InvalidArgument, NotFound


def manifest(name: str) -> Manifest:
    return Manifest(
        name=name,
        base_model="base",
        recipe="causal_lm",
        template_prompt="p",
        template_response="r",
        template_sha256="h",
    )


def publish(store: AdapterStore, name: str, payload: str = "x"):
    staging = store.staging_dir(name)
    (staging / "adapter_model.safetensors").write_text(payload)
    return store.publish(staging, manifest(name))


def test_versions_count_up_and_name_resolves_to_newest(tmp_path):
    store = AdapterStore(tmp_path)
    assert publish(store, "emails").version == "1"
    assert publish(store, "emails", "second").version == "2"
    newest = store.resolve("emails")
    assert newest.id == "emails@2"
    assert (newest.path / "adapter_model.safetensors").read_text() == "second"
    assert store.resolve("emails@1").manifest().version == "1"
    assert [v.id for v in store.all_versions()] == ["emails@1", "emails@2"]


def test_staging_folders_are_invisible_and_discarded(tmp_path):
    store = AdapterStore(tmp_path)
    staging = store.staging_dir("emails")
    (staging / MANIFEST).write_text(manifest("emails").model_dump_json())
    assert store.versions("emails") == []
    with pytest.raises(NotFound, match="adapter 'emails' not found"):
        store.resolve("emails")
    store.discard(staging)
    assert not staging.exists()


def test_concurrent_publishers_never_share_a_version(tmp_path):
    store = AdapterStore(tmp_path)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(publish(store, "race").version))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(v) for v in results) == list(range(1, 9))


def test_unknown_version_lists_the_existing_ones(tmp_path):
    store = AdapterStore(tmp_path)
    publish(store, "emails")
    with pytest.raises(NotFound, match="has no version 7; versions: 1"):
        store.resolve("emails@7")


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".hidden", "x" * 65, "a b", "/abs"])
def test_names_cannot_escape_the_volume(tmp_path, bad):
    store = AdapterStore(tmp_path)
    with pytest.raises(InvalidArgument, match="invalid adapter name"):
        store.resolve(bad)
    assert not any(Path(tmp_path).parent.glob("etc"))


def test_version_must_be_a_number():
    with pytest.raises(InvalidArgument, match="expected a number"):
        parse_adapter_id("emails@latest")
    assert parse_adapter_id("emails@3") == ("emails", "3")
    assert parse_adapter_id("emails") == ("emails", None)
