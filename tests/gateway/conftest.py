"""Gateway test fixtures: the real gateway in front of the real inference service, both
in-process (tests.support.services). A test module's `gateway` (here: in front of an
inference service on tiny_llama with the `emails` adapter) is the one its `http` and `oai`
clients talk to."""

import pytest

from tests.support.adapters import make_adapter
from tests.support.services import gateway_before, serve_inference


@pytest.fixture(scope="module")
def adapters_dir(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    make_adapter(tiny_llama, folder, "emails")
    return folder


@pytest.fixture(scope="module")
def inference(tiny_llama, adapters_dir):
    running = serve_inference(tiny_llama, adapters_dir)
    yield running
    running.stop(grace=0)


@pytest.fixture(scope="module")
def gateway(inference):
    running = gateway_before(inference.port)
    yield running
    running.stop()
