"""The trainer's FileStore: content read back in pieces, and deletion as safe as upload."""

import pytest

from trainer_service.files import FileStore
from tuneyard.errors import NotFound


def test_content_comes_back_in_pieces_as_uploaded(tmp_path):
    files = FileStore(tmp_path)
    content = bytes(range(256)) * 1000
    info = files.put("data.jsonl", "fine-tune", content)
    pieces = list(files.read_chunks(info.id, size=4096))
    assert b"".join(pieces) == content
    assert max(len(p) for p in pieces) == 4096
    with pytest.raises(NotFound, match="not found"):
        files.read_chunks("file-" + "0" * 24)


def test_delete_removes_the_file_and_sweeps_trash_a_crash_left(tmp_path):
    files = FileStore(tmp_path)
    kept = files.put("a.jsonl", "fine-tune", b"{}\n")
    gone = files.put("b.jsonl", "fine-tune", b"{}\n")
    (tmp_path / ".trash-file-dead").mkdir()  # a delete that died after its rename
    assert files.delete(gone.id) == gone
    assert [f.id for f in files.list()] == [kept.id]
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.id]
    with pytest.raises(NotFound) as err:
        files.delete(gone.id)
    assert err.value.param == "file_id"
