"""The committed stubs must be what the protos generate: stale stubs cannot ship."""

from pathlib import Path

from tuneyard import protogen


def test_committed_stubs_match_the_protos(tmp_path):
    fresh = protogen.generate(tmp_path)
    assert fresh, "protoc generated nothing"
    for path in fresh:
        committed = protogen.ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `make proto`"
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run `make proto`"


def test_every_proto_has_its_stubs():
    protos = {p.stem for p in Path(protogen.PROTO_DIR, "tuneyard/v1").glob("*.proto")}
    assert protos == {"trainer", "inference", "evaluation"}
