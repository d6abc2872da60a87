"""OpenAI's files and models APIs beyond listing, through the unchanged `openai` client
against a real gateway (with API keys), a real trainer and a real inference service on one
adapters volume: file content and deletion (refused while a job uses the file), model
retrieval, and deleting a fine-tuned adapter (every version, or one)."""

import time

import httpx
import openai
import pytest

from tests.conftest import EMAIL_TEMPLATE
from tests.support.adapters import make_adapter
from tests.support.services import serve_inference, start_gateway
from trainer_service.server import serve as serve_trainer
from trainer_service.settings import TrainerSettings

ADMIN_KEY, PLAIN_KEY = "admin-key", "plain-key"


@pytest.fixture(scope="module")
def stack(tiny_llama, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    inference = serve_inference(tiny_llama, home / "adapters")
    trainer = serve_trainer(
        TrainerSettings(home=home, trainer_port=0, trainer_metrics_port=0, trainer_device="cpu")
    )
    gateway = start_gateway(
        inference_addr=f"127.0.0.1:{inference.port}",
        trainer_addr=f"127.0.0.1:{trainer.port}",
        api_keys=[PLAIN_KEY],
        admin_keys=[ADMIN_KEY],
    )
    yield gateway, home / "adapters", inference.engine.adapters
    gateway.stop()
    trainer.stop(grace=1)
    inference.stop(grace=0)


@pytest.fixture
def oai(stack):
    return openai.OpenAI(base_url=f"{stack[0].url}/v1", api_key=ADMIN_KEY, max_retries=0)


@pytest.fixture
def plain(stack):
    return openai.OpenAI(base_url=f"{stack[0].url}/v1", api_key=PLAIN_KEY, max_retries=0)


@pytest.fixture
def http(stack):
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=stack[0].url, timeout=60, headers=headers) as client:
        yield client


def test_file_content_is_the_bytes_uploaded_then_delete_removes_it(oai, plain, email_jsonl):
    uploaded = oai.files.create(file=email_jsonl.open("rb"), purpose="fine-tune")
    assert plain.files.content(uploaded.id).content == email_jsonl.read_bytes()

    with pytest.raises(openai.PermissionDeniedError):  # deleting needs the admin key
        plain.files.delete(uploaded.id)
    deleted = oai.files.delete(uploaded.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (uploaded.id, "file", True)
    assert uploaded.id not in [f.id for f in oai.files.list()]
    for gone in (
        lambda: oai.files.retrieve(uploaded.id),
        lambda: oai.files.content(uploaded.id),
        lambda: oai.files.delete(uploaded.id),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            gone()
        assert err.value.body["param"] == "file_id" and "not found" in err.value.message


def test_content_larger_than_one_chunk_streams_whole(oai, http):
    # Over the trainer's 1 MiB chunks: several messages, one body.
    row = b'{"text": "' + b"x" * 1000 + b'"}\n'
    content = row * 3000
    uploaded = oai.files.create(file=("big.jsonl", content), purpose="fine-tune")
    with http.stream("GET", f"/v1/files/{uploaded.id}/content") as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(content))
        assert response.headers["content-type"] == "application/octet-stream"
        assert 'filename="big.jsonl"' in response.headers["content-disposition"]
        pieces = list(response.iter_bytes())
    assert b"".join(pieces) == content
    oai.files.delete(uploaded.id)


def test_a_file_an_unended_job_trains_on_cannot_be_deleted(oai, http, tiny_llama, email_jsonl):
    uploaded = oai.files.create(file=email_jsonl.open("rb"), purpose="fine-tune")
    job = oai.fine_tuning.jobs.create(
        model=str(tiny_llama),
        training_file=uploaded.id,
        suffix="busy",
        extra_body={
            "tuneyard": {
                "template": EMAIL_TEMPLATE,
                "lora": {"r": 4, "alpha": 8},
                "training": {"max_steps": 100000, "max_seq_length": 64},
            }
        },
    )
    try:
        deadline = time.monotonic() + 60
        while (status := oai.fine_tuning.jobs.retrieve(job.id).status) == "validating_files":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert status in ("queued", "running")
        with pytest.raises(openai.BadRequestError) as err:
            oai.files.delete(uploaded.id)
        assert err.value.body["param"] == "file_id"
        assert job.id in err.value.message and uploaded.id in err.value.message
        # Nothing was lost.
        assert oai.files.retrieve(uploaded.id).id == uploaded.id
        assert oai.files.content(uploaded.id).content == email_jsonl.read_bytes()
    finally:
        oai.fine_tuning.jobs.cancel(job.id)
    deadline = time.monotonic() + 60
    while oai.fine_tuning.jobs.retrieve(job.id).status != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert oai.files.delete(uploaded.id).deleted


def test_retrieve_the_base_model_and_adapters(oai, plain, stack, tiny_llama):
    adapters = stack[1]
    make_adapter(tiny_llama, adapters, "shown")
    second = make_adapter(tiny_llama, adapters, "shown", seed=2)
    base = plain.models.retrieve("tiny-llama")
    assert (base.id, base.object, base.owned_by) == ("tiny-llama", "model", "tuneyard")
    listed = {m.id: m for m in plain.models.list()}
    model = plain.models.retrieve("shown")
    assert model == listed["shown"] and model.root == second.id
    assert model.parent == "tiny-llama" and model.created > 0
    first = plain.models.retrieve("shown@1")
    assert (first.id, first.root) == ("shown@1", "shown@1")
    for missing in ("ghost", "shown@9"):
        with pytest.raises(openai.NotFoundError) as err:
            plain.models.retrieve(missing)
        assert err.value.body["param"] == "model" and missing in err.value.message


def chat(client: openai.OpenAI, model: str):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )


def test_deleting_an_adapter_unloads_it_and_it_is_never_served_again(
    oai, plain, http, stack, tiny_llama
):
    adapters = stack[1]
    make_adapter(tiny_llama, adapters, "doomed")
    make_adapter(tiny_llama, adapters, "doomed", seed=2)
    assert chat(plain, "doomed").model == "doomed"  # loaded on the replica now
    with pytest.raises(openai.PermissionDeniedError):  # deleting needs the admin key
        plain.models.delete("doomed")
    assert chat(plain, "doomed@1").choices  # the refusal removed nothing
    cache = stack[2]
    loaded = cache.num_loaded

    deleted = oai.models.delete("doomed")
    assert (deleted.id, deleted.object, deleted.deleted) == ("doomed", "model", True)
    assert "doomed" not in [m.id for m in plain.models.list()]
    ids = [a["id"] for a in http.get("/v1/adapters").json()["data"]]
    assert not [i for i in ids if i.startswith("doomed@")]
    assert cache.num_loaded == loaded - 2  # both versions unloaded from the replica
    assert not list((adapters / "doomed").glob("[0-9]*"))  # and gone from the volume
    for model in ("doomed", "doomed@1", "doomed@2"):
        with pytest.raises(openai.NotFoundError) as err:
            chat(plain, model)
        assert err.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as err:
        oai.models.delete("doomed")
    assert err.value.body["param"] == "model"


def test_deleting_one_version_leaves_the_others(oai, plain, stack, tiny_llama):
    adapters = stack[1]
    for seed in (1, 2, 3):
        make_adapter(tiny_llama, adapters, "kept", seed=seed)
    assert chat(plain, "kept@3").choices
    assert oai.models.delete("kept@3").deleted
    assert chat(plain, "kept").choices  # now version 2
    assert plain.models.retrieve("kept").root == "kept@2"
    with pytest.raises(openai.NotFoundError):
        chat(plain, "kept@3")
    assert chat(plain, "kept@1").choices
    # The next version published is 4, never a second "3".
    assert make_adapter(tiny_llama, adapters, "kept", seed=4).version == "4"


def test_the_base_model_cannot_be_deleted(oai):
    with pytest.raises(openai.BadRequestError) as err:
        oai.models.delete("tiny-llama")
    assert err.value.body["param"] == "model" and "base model" in err.value.message
    assert oai.models.retrieve("tiny-llama").id == "tiny-llama"
    with pytest.raises(openai.BadRequestError) as err:
        oai.models.delete("not a name")
    assert err.value.body["param"] == "model"
