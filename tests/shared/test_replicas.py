"""tuneyard.replicas: the address forms, DNS resolution and its failures; and the trainer's
notifier telling every real inference replica of a new adapter."""

import logging

import grpc
import pytest

from tests.support.adapters import make_adapter
from tests.support.services import serve_inference
from trainer_service.notify import InferenceNotifier
from tuneyard.errors import Unavailable
from tuneyard.local_stack import free_port
from tuneyard.replicas import ReplicaAddresses, split_host_port
from tuneyard.v1 import inference_pb2, inference_pb2_grpc


def test_one_address_is_kept_as_given():
    replicas = ReplicaAddresses("tuneyard-inference:50052")
    assert not replicas.dynamic
    assert replicas.current == ["tuneyard-inference:50052"]
    assert replicas.refresh() == ["tuneyard-inference:50052"]  # no resolving of its own


def test_comma_list_drops_blanks_around_and_duplicates():
    replicas = ReplicaAddresses(" a:1, b:2 ,a:1,[::1]:3")
    assert replicas.current == ["a:1", "b:2", "[::1]:3"]


def test_split_host_port():
    assert split_host_port("[::1]:50052") == ("::1", 50052)
    assert split_host_port("inference.svc:1") == ("inference.svc", 1)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("inference", "is not host:port"),
        (":50052", "is not host:port"),
        ("inference:", "port must be a number"),
        ("inference:70000", "port must be a number"),
        ("a:1,,b:2", "empty entry"),
        ("a b:1", "bad host"),
        ("::1:50052", "write an IPv6 host as [host]:port"),
        ("dns://10.0.0.1/inference:1", "write dns:///name:port"),
        ("dns:///inference", "is not host:port"),
        ("   ", "no replica address"),
    ],
)
def test_bad_addresses_say_what_is_wrong(spec, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        ReplicaAddresses(spec)


def test_dns_name_resolves_to_one_replica_per_ip():
    replicas = ReplicaAddresses("dns:///localhost:50052")
    assert replicas.dynamic and replicas.current == []
    found = replicas.refresh()
    assert "127.0.0.1:50052" in found
    assert len(found) == len(set(found)) and replicas.current == found


def test_failed_resolution_keeps_the_last_known_set(caplog):
    replicas = ReplicaAddresses("dns:///localhost:50052")
    known = replicas.refresh()
    # The same object later asked for a name that does not resolve (RFC 6761 .invalid).
    replicas.dns_name = ("tuneyard-replicas.invalid", 50052)
    with caplog.at_level(logging.WARNING, logger="tuneyard.replicas"):
        assert replicas.refresh() == known
    assert "cannot resolve" in caplog.text

    never = ReplicaAddresses("dns:///tuneyard-replicas.invalid:50052")
    assert never.refresh() == []
    with pytest.raises(OSError):
        never.resolve()


def _loaded(running) -> set[str]:
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        reply = stub.ListAdapters(inference_pb2.ListAdaptersRequest(), timeout=10)
    return {a.id for a in reply.adapters if a.loaded}


def test_notifier_loads_on_every_replica(tiny_llama, tmp_path):
    make_adapter(tiny_llama, tmp_path, "emails")
    replicas = [serve_inference(tiny_llama, tmp_path) for _ in range(2)]
    try:
        notifier = InferenceNotifier(",".join(f"127.0.0.1:{r.port}" for r in replicas))
        notifier.load_adapter("emails")
        assert all(_loaded(r) == {"emails@1"} for r in replicas)
        notifier.close()

        # One replica down: the other still loads it, and the failure is reported.
        down = f"127.0.0.1:{free_port()}"
        notifier = InferenceNotifier(f"{down},127.0.0.1:{replicas[0].port}", deadline_s=5)
        replicas[0].engine.adapters.unload("emails")
        with pytest.raises(Unavailable, match="inference service unavailable"):
            notifier.load_adapter("emails")
        assert _loaded(replicas[0]) == {"emails@1"}
        notifier.close()
    finally:
        for running in replicas:
            running.stop(grace=0)


def test_notifier_refuses_a_bad_address_and_an_empty_name():
    with pytest.raises(ValueError, match="is not host:port"):
        InferenceNotifier("inference")
    notifier = InferenceNotifier("dns:///tuneyard-replicas.invalid:50052")
    with pytest.raises(Unavailable, match="names no inference replica"):
        notifier.load_adapter("emails")
