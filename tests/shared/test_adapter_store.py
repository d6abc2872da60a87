import os
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from tuneyard.adapter_store import (
    DEFAULT_MODE,
    MANIFEST,
    AdapterId,
    AdapterStore,
    Manifest,
    check_mode,
)
from tuneyard.config import CommonSettings
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
        AdapterId.parse("emails@latest")
    assert AdapterId.parse("emails@3") == AdapterId("emails", 3)
    assert AdapterId.parse("emails@003") == AdapterId("emails", 3)
    assert str(AdapterId.parse("emails@003")) == "emails@3"
    assert AdapterId.parse("emails") == AdapterId("emails") and str(AdapterId("emails")) == "emails"
    assert AdapterId.name_of("proj_0123456789abcdef:emails@2") == "proj_0123456789abcdef:emails"


def modes(root: Path) -> dict[str, str]:
    """Every path under root (root included, as '.') with its permission bits in octal."""
    paths = [root, *sorted(root.rglob("*"))]
    return {str(p.relative_to(root)): f"{p.stat().st_mode & 0o777:04o}" for p in paths}


@pytest.fixture
def strict_umask():
    """A umask that would leave everything owner-only: the store's modes must not depend
    on the publisher's umask."""
    old = os.umask(0o077)
    yield
    os.umask(old)


@pytest.mark.parametrize(
    ("mode", "folders", "files"), [(DEFAULT_MODE, "0755", "0644"), (0o750, "0750", "0640")]
)
def test_a_published_version_has_the_stores_modes(tmp_path, strict_umask, mode, folders, files):
    store = AdapterStore(tmp_path / "adapters", mode)
    staging = store.staging_dir("emails")
    (staging / "adapter_model.safetensors").write_text("x")
    (staging / "merged").mkdir()  # a subfolder (merge=True), made under the umask
    (staging / "merged" / "config.json").write_text("{}")
    os.chmod(staging / "adapter_model.safetensors", 0o700)  # execute bits are dropped
    version = store.publish(staging, manifest("emails"))
    assert modes(tmp_path / "adapters") == {
        ".": folders,  # the folders the store created on the way, too
        "emails": folders,
        "emails/1": folders,
        "emails/1/adapter_model.safetensors": files,
        "emails/1/merged": folders,
        "emails/1/merged/config.json": files,
        f"emails/1/{MANIFEST}": files,
    }
    assert version.path == tmp_path / "adapters" / "emails" / "1"


def test_folders_that_exist_keep_their_mode(tmp_path):
    (tmp_path / "adapters").mkdir(mode=0o700)
    store = AdapterStore(tmp_path / "adapters")
    publish(store, "emails")
    assert modes(tmp_path / "adapters")["."] == "0700"  # the operator's choice
    assert modes(tmp_path / "adapters")["emails/1"] == "0755"


def test_the_mode_setting_is_octal_text_and_keeps_the_owners_rights(monkeypatch):
    assert CommonSettings().adapters_mode == 0o755
    for text in ("0750", "750", "0o750", " 0750 "):
        monkeypatch.setenv("TUNEYARD_ADAPTERS_MODE", text)
        assert CommonSettings().adapters_mode == 0o750
    for bad, why in [("0644", "give the owner rwx"), ("1755", "within 0777"), ("rwx", "octal")]:
        monkeypatch.setenv("TUNEYARD_ADAPTERS_MODE", bad)
        with pytest.raises(ValidationError, match=why):
            CommonSettings()
    with pytest.raises(ValueError, match="give the owner rwx"):
        AdapterStore(Path("."), 0o055)
    assert check_mode(0o700) == 0o700


def test_deleting_one_version_leaves_the_others_and_never_reuses_its_number(tmp_path):
    store = AdapterStore(tmp_path)
    for payload in ("one", "two", "three"):
        publish(store, "emails", payload)
    assert [v.id for v in store.delete("emails@3")] == ["emails@3"]
    assert [v.version for v in store.versions("emails")] == ["1", "2"]
    assert store.resolve("emails").id == "emails@2"
    with pytest.raises(NotFound, match="has no version 3"):
        store.resolve("emails@3")
    # A new version is 4: a server still holding the old weights as emails@3 cannot mix them up.
    assert publish(store, "emails", "four").version == "4"
    assert not list((tmp_path / "emails").glob(".trash-*"))


def test_deleting_a_name_removes_every_version(tmp_path):
    store = AdapterStore(tmp_path)
    publish(store, "emails")
    publish(store, "emails")
    publish(store, "other")
    assert [v.id for v in store.delete("emails")] == ["emails@1", "emails@2"]
    assert store.versions("emails") == []
    assert [v.id for v in store.all_versions()] == ["other@1"]
    with pytest.raises(NotFound, match="adapter 'emails' not found"):
        store.delete("emails")
    assert publish(store, "emails").version == "3"


def test_a_crash_after_the_rename_leaves_the_version_gone_and_its_trash_swept(tmp_path):
    store = AdapterStore(tmp_path)
    publish(store, "emails")
    second = publish(store, "emails")
    # What a delete that died between its rename and the removal leaves behind.
    (tmp_path / "emails" / ".deleted-2").touch()
    os.rename(second.path, tmp_path / "emails" / ".trash-2-dead")
    assert store.resolve("emails").id == "emails@1"
    store.delete("emails@1")
    assert not list((tmp_path / "emails").glob(".trash-*"))
    assert publish(store, "emails").version == "3"
