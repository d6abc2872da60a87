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
    assert protos == {"trainer", "inference", "evaluation", "projects"}


def test_optional_generation_parameters_come_from_the_proto():
    """The scalar parameters a request may leave unset, read from the descriptor: the
    engine takes each of them, and message or map fields are not among them."""
    import dataclasses

    from inference_service.params import Parameters
    from tuneyard.protos import OPTIONAL_GENERATION_PARAMETERS
    from tuneyard.v1 import inference_pb2

    assert OPTIONAL_GENERATION_PARAMETERS[:3] == ("max_new_tokens", "temperature", "top_p")
    assert {"seed", "truncate", "top_n_tokens", "typical_p"} <= set(OPTIONAL_GENERATION_PARAMETERS)
    assert not {"grammar", "logit_bias", "stop", "do_sample"} & set(OPTIONAL_GENERATION_PARAMETERS)
    assert set(OPTIONAL_GENERATION_PARAMETERS) <= {f.name for f in dataclasses.fields(Parameters)}
    for name in OPTIONAL_GENERATION_PARAMETERS:
        assert not inference_pb2.GenerationParameters().HasField(name)
