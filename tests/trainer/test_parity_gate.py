"""The parity gate: a job's trained model and the inference service generate greedily for
held-out prompts; a version whose served output differs is published, but its name stays
where it was until it is promoted (POST /v1/adapters/{id}/promote)."""

import json
import shutil

import httpx
import pytest

from tests.conftest import EMAIL_ROWS, EMAIL_TEMPLATE
from tests.shared.test_templates import CALL
from tests.support.services import serve_inference, start_gateway
from tests.trainer.test_gateway_training import events_of, wait_job
from trainer_service.gate import (
    FLOAT32_TOLERANCE,
    HALF_TOLERANCE,
    ParityGateCheck,
    compare,
    judge,
    tolerance,
)
from trainer_service.server import serve
from trainer_service.settings import TrainerSettings
from tuneyard.adapter_store import AdapterStore, GateProbe, ParityGate
from tuneyard.errors import FailedPrecondition, InvalidArgument
from tuneyard.modeling import load_tokenizer, resolve_base_model
from tuneyard.templates import PromptTemplate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_llama):
    """Inference (float32, as the worker trains on a CPU), trainer and gateway."""
    home = tmp_path_factory.mktemp("home")
    adapters = home / "adapters"
    inference = serve_inference(tiny_llama, adapters, dtype="float32")
    trainer = serve(
        TrainerSettings(
            home=home,
            adapters_dir=adapters,
            inference_addr=f"127.0.0.1:{inference.port}",
            trainer_port=0,
            trainer_metrics_port=0,
            trainer_device="cpu",
        )
    )
    gateway = start_gateway(
        trainer_addr=f"127.0.0.1:{trainer.port}", inference_addr=f"127.0.0.1:{inference.port}"
    )
    yield gateway, inference, AdapterStore(adapters)
    gateway.stop()
    trainer.stop(grace=1)
    inference.stop()


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack[0].url, timeout=60) as client:
        yield client


def succeeded(http, body: dict) -> dict:
    """Create the job and wait for it to succeed."""
    job = http.post("/v1/fine_tuning/jobs", json=body).json()
    done = wait_job(http, job["id"], lambda j: j["status"] in ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    return done


def email_job(model, training_file, suffix: str, **tuneyard) -> dict:
    """A two-step job on the email rows with a held-out quarter (the gate's probes)."""
    return {
        "model": str(model),
        "training_file": str(training_file),
        "suffix": suffix,
        "tuneyard": {
            "lora": {"r": 4, "alpha": 8},
            "training": {"max_steps": 2, "batch_size": 2, "max_seq_length": 128},
            "data": {"eval_fraction": 0.25},
            **tuneyard,
        },
    }


class Events:
    def __init__(self):
        self.messages = []

    def event(self, job_id, message, level="info", metrics=None):
        self.messages.append((message, level, metrics))


def gate_of(*probes, **fields) -> ParityGate:
    return ParityGate(**{"tokens": 4, "min_agreement": 1.0, "probes": list(probes), **fields})


PROBE = GateProbe(
    prompt="p",
    prompt_ids=[7, 8],
    ids=[1, 2, 3, 4],
    logprobs=[-0.1, -0.2, -0.3, -0.4],
    margins=[2.0, 0.1, 3.0, 1.0],
    served_prompt_ids=[7, 8],
    served_ids=[1, 9, 3, 4],  # another top-1 only where the trained model's margin was 0.1
    served_logprobs=[-0.1, -0.25, -0.3, -0.4],
)


def test_compare_counts_clear_positions_and_every_logprob():
    result = compare(PROBE, gate_of())
    assert (result.prompt_differs_at, result.clear, result.agreed) == (None, 3, 3)
    assert result.agreement == 1.0 and result.max_diff == pytest.approx(0.05)
    flipped = PROBE.model_copy(update={"served_ids": [1, 2, 5, 4]})
    assert compare(flipped, gate_of()).agreement == pytest.approx(2 / 3)
    # A lower margin makes position 2 clear too: its other top-1 counts then.
    assert compare(PROBE, gate_of(min_margin=0.05)).agreement == pytest.approx(3 / 4)
    assert compare(PROBE, gate_of(tokens=1)).max_diff == 0.0
    shorter = PROBE.model_copy(update={"served_prompt_ids": [7]})
    assert compare(shorter, gate_of()).prompt_differs_at == 1
    other = PROBE.model_copy(update={"served_prompt_ids": [7, 5, 6]})
    assert compare(other, gate_of()).prompt_differs_at == 1


def test_judge_passes_within_the_dtypes_tolerance_and_fails_past_it():
    assert tolerance(gate_of(trained_dtype="float32", served_dtype="float32")) == FLOAT32_TOLERANCE
    assert tolerance(gate_of(trained_dtype="float32", served_dtype="bfloat16")) == HALF_TOLERANCE
    assert tolerance(gate_of(logprob_tolerance=0.2, served_dtype="bfloat16")) == 0.2
    assert judge(gate_of(PROBE, trained_dtype="float32", served_dtype="bfloat16")).state == "passed"
    failed = judge(gate_of(PROBE, trained_dtype="float32", served_dtype="float32"))
    assert failed.state == "failed" and failed.logprob_tolerance == FLOAT32_TOLERANCE
    assert "largest log-probability difference 0.05 (allowed 0.01)" in failed.reason
    flipped = PROBE.model_copy(update={"served_ids": [1, 2, 5, 4]})
    assert judge(gate_of(flipped, served_dtype="bfloat16")).state == "failed"
    other = PROBE.model_copy(update={"served_prompt_ids": [7, 5]})
    failed = judge(gate_of(other, served_dtype="bfloat16"))
    assert failed.state == "failed"
    assert failed.reason.startswith(
        "the service tokenizes 1 of 1 held-out prompts otherwise than the trained model read "
        "them (prompt 1 from token 1)"
    )


def test_a_job_passes_its_gate_then_a_version_whose_served_template_differs_fails_and_is_promoted(
    stack, http, tiny_llama, email_jsonl
):
    gateway, inference, store = stack
    job = succeeded(http, email_job(tiny_llama, email_jsonl, "gated", template=EMAIL_TEMPLATE))
    gate = store.resolve("gated@1").manifest().gate
    passed = [m for m in events_of(http, job["id"]) if m.startswith("parity gate passed")]
    assert passed == [
        "parity gate passed: 3 held-out prompts, 32 greedy tokens each, scored teacher-forced "
        "(float32 trained, float32 served): the service's likeliest token is the trained "
        f"model's on 100% of the {sum(m > 0.5 for p in gate.probes for m in p.margins)} "
        "positions with a margin over 0.5 nats (lowest prompt; needed 100%), largest "
        f"log-probability difference {gate.max_logprob_diff:.3g} (allowed 0.01); "
        "gated now means gated@1"
    ]
    assert gate.state == "passed" and gate.agreement == 1.0 and len(gate.probes) == 3
    assert all(p.served_prompt_ids == p.prompt_ids and len(p.ids) == 32 for p in gate.probes)
    assert all(len(p.served_logprobs) == len(p.margins) == 32 for p in gate.probes)
    assert gate.max_logprob_diff < 1e-3 and gate.served_dtype == "float32"
    assert store.resolve("gated").id == "gated@1"

    # Version 2: the same weights and probes, but a served template that differs from the
    # one its model was trained and probed with.
    first = store.resolve("gated@1")
    staging = store.staging_dir("gated")
    for item in first.path.iterdir():
        if item.is_file() and item.name != "tuneyard.json":
            shutil.copy2(item, staging / item.name)
    manifest = first.manifest()
    manifest = manifest.model_copy(
        update={
            "template_prompt": manifest.template_prompt + " Sincerely, the team. P.S.",
            "gate": manifest.gate.model_copy(
                update={"state": "pending", "agreement": None, "max_logprob_diff": None}
            ),
        }
    )
    second = store.publish(staging, manifest)
    assert second.id == "gated@2" and store.resolve("gated").id == "gated@1"  # pending
    events = Events()
    ParityGateCheck(store, events, f"127.0.0.1:{inference.port}")("ftjob-x", second.id)
    gate = store.resolve("gated@2").manifest().gate
    assert gate.state == "failed" and "tokenizes 3 of 3 held-out prompts otherwise" in gate.reason
    ((message, level, metrics),) = events.messages
    assert level == "warn" and message.startswith("parity gate failed: ")
    assert message.endswith(
        "gated@2 is published, but gated still means gated@1; "
        "POST /v1/adapters/gated@2/promote serves it as gated"
    )
    assert metrics["gate_agreement"] == gate.agreement

    # The name stays on version 1: what requests for "gated" get.
    answer = http.post("/generate", json={"inputs": "Hi", "parameters": {"adapter_id": "gated"}})
    assert answer.status_code == 200
    assert inference.engine.adapters.store.resolve("gated").id == "gated@1"

    listed = {a["id"]: a for a in http.get("/v1/adapters").json()["data"]}
    assert (listed["gated@1"]["gate"], listed["gated@1"]["live"]) == ("passed", True)
    assert (listed["gated@2"]["gate"], listed["gated@2"]["live"]) == ("failed", False)
    assert http.get("/v1/models/gated").json()["root"] == "gated@1"
    assert http.get("/v1/models/gated@2").json()["root"] == "gated@2"

    refused = http.post("/v1/adapters/gated/promote")
    assert refused.status_code == 400 and "name@version" in refused.json()["error"]["message"]
    promoted = http.post("/v1/adapters/gated@2/promote")
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["id"] == "gated@2" and promoted.json()["promoted"] is True
    assert store.resolve("gated").id == "gated@2"
    assert store.resolve("gated@2").manifest().gate.promoted
    assert http.get("/v1/models/gated").json()["root"] == "gated@2"
    listed = {a["id"]: a for a in http.get("/v1/adapters").json()["data"]}
    assert listed["gated@2"]["live"] is True


def test_a_chat_job_is_gated_on_the_conversations_before_their_answers(
    stack, http, tiny_llama, tmp_path
):
    """A chat adapter's probes are the conversation before the answer, sent as messages (and
    tools): a row whose earlier turns call tools cannot be, and is passed over."""
    _, _, store = stack
    calling = {
        "messages": [
            {"role": "user", "content": "Order a lamp"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "ordered"},
            {"role": "assistant", "content": "Done."},
        ]
    }
    chats = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Hi {i}"},
                {"role": "assistant", "content": f"Hello {i}"},
            ],
            **({"tools": [{"type": "function", "function": {"name": "order"}}]} if i else {}),
        }
        for i in range(3)
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [calling, *chats]))
    body = {
        "model": str(tiny_llama),
        "training_file": str(path),
        "suffix": "chat-gated",
        "tuneyard": {"training": {"max_steps": 2, "batch_size": 2, "max_seq_length": 256}},
    }
    succeeded(http, body)
    gate = store.resolve("chat-gated@1").manifest().gate
    assert gate.state == "passed", gate.reason
    assert [p.messages[-1]["content"] for p in gate.probes] == ["Hi 0", "Hi 1", "Hi 2"]
    assert gate.probes[0].tools is None and gate.probes[1].tools[0]["function"]["name"] == "order"
    assert all(p.served_prompt_ids == p.prompt_ids and p.ids for p in gate.probes)
    assert store.resolve("chat-gated").id == "chat-gated@1"


def test_a_name_with_no_live_version_says_so(tmp_path, tiny_llama):
    from tests.support.adapters import make_adapter
    from tuneyard.adapter_store import ParityGate

    version = make_adapter(tiny_llama, tmp_path, "held")
    store = AdapterStore(tmp_path)
    gate = ParityGate(state="failed", tokens=32, min_agreement=1.0)
    store.update_manifest(version, version.manifest().model_copy(update={"gate": gate}))
    with pytest.raises(FailedPrecondition, match=r"'held' has no live version: held@1 \(failed\)"):
        store.resolve("held")
    assert store.resolve("held@1") == version
    with pytest.raises(InvalidArgument, match="name@version"):
        store.promote("held")
    store.promote("held@1")
    assert store.resolve("held") == version


def test_a_dpo_job_probes_its_pairs_prompts(tiny_llama):
    """A preference row's probe is its `input`: the messages and tools both sides render."""
    from tests.trainer.test_dpo import PAIRS, dpo_spec
    from trainer_service.dataset import Row
    from trainer_service.worker.gate import _probe_input
    from tuneyard.modeling import load_tokenizer, resolve_base_model
    from tuneyard.templates import ChatTemplate

    tokenizer = load_tokenizer(resolve_base_model(str(tiny_llama)))
    spec = dpo_spec(tiny_llama, "pairs.jsonl")
    row = {**PAIRS[0], "input": {**PAIRS[0]["input"], "tools": [{"type": "function"}]}}
    probe = _probe_input(spec, ChatTemplate(tokenizer), tokenizer, Row(1, row))
    assert probe.messages == PAIRS[0]["input"]["messages"] and probe.tools == [{"type": "function"}]
    assert probe.prompt == tokenizer.apply_chat_template(
        probe.messages, tools=probe.tools, tokenize=False, add_generation_prompt=True
    )
    assert _probe_input(spec, ChatTemplate(tokenizer), tokenizer, Row(2, {"x": 1})) is None


def test_a_job_that_adds_tokens_passes_its_gate_and_another_tokenizer_is_refused(
    stack, http, tiny_llama, email_jsonl
):
    """Through the gateway: the served adapter's rows read and write its added tokens as
    the trained model did; a version whose tokenizer differs otherwise is a 422 with the
    reason, and the service keeps serving."""
    from transformers import AutoTokenizer

    gateway, inference, store = stack
    body = email_job(
        tiny_llama,
        email_jsonl,
        "tagged",
        template={**EMAIL_TEMPLATE, "response": "<email>{{ email }}</email>"},
        added_tokens=["<email>", "</email>"],
    )
    succeeded(http, body)
    gate = store.resolve("tagged@1").manifest().gate
    assert gate.state == "passed" and gate.agreement == 1.0, gate.reason
    assert len(gate.probes) == 3 and store.resolve("tagged").id == "tagged@1"

    first = store.resolve("tagged@1")
    staging = store.staging_dir("tagged")
    for item in first.path.iterdir():
        if item.is_file():
            shutil.copy2(item, staging / item.name)
    tokenizer = AutoTokenizer.from_pretrained(staging)
    tokenizer.eos_token = "<email>"
    tokenizer.save_pretrained(staging)
    second = store.publish(staging, first.manifest())
    refused = http.post("/generate", json={"inputs": "Hi", "parameters": {"adapter_id": second.id}})
    assert refused.status_code == 422, refused.text
    assert "differs from the base's other than by its added tokens" in refused.text
    assert "eos_token '<email>'" in refused.text
    answer = http.post("/generate", json={"inputs": "Hi", "parameters": {"adapter_id": first.id}})
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("served_dtype", ["float32", "bfloat16"])
def test_the_gate_passes_a_faithful_version_and_fails_a_real_mismatch(
    tmp_path, tiny_llama, served_dtype
):
    """The trained model's probes (float32, as a CPU worker trains) against a service in
    either dtype: the version as trained passes; served with another scaling, without one
    of its modules or with another template, it fails, whichever dtype serves it."""
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from tests.support.adapters import edit_adapter_config, make_adapter
    from trainer_service.worker.gate import generated

    adapters = tmp_path / "adapters"
    version = make_adapter(tiny_llama, adapters, "probed")
    manifest = version.manifest()
    template = PromptTemplate(manifest.template_prompt, manifest.template_response)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama), version.path
    ).eval()
    tokenizer = load_tokenizer(resolve_base_model(str(tiny_llama)))
    probes = []
    for row in EMAIL_ROWS[:3]:
        fields = {"product": row["product"], "description": row["description"]}
        probe = GateProbe(fields=fields, prompt=template.render_prompt(fields), ids=[], logprobs=[])
        probes.append(generated(probe, model, tokenizer, 16))
    gate = ParityGate(tokens=16, min_agreement=1.0, probes=probes)
    store = AdapterStore(adapters)

    def publish_variant(edit) -> str:
        staging = store.staging_dir("probed")
        for item in version.path.iterdir():
            if item.is_file() and item.name != "tuneyard.json":
                shutil.copy2(item, staging / item.name)
        variant = store.publish(staging, edit(manifest).model_copy(update={"gate": gate}))
        return variant.id

    faithful = publish_variant(lambda m: m)
    scaled = publish_variant(lambda m: m)
    edit_adapter_config(store.resolve(scaled), lora_alpha=32)  # r=4, alpha 8: four times the scale
    unmodule = publish_variant(lambda m: m)  # its v_proj weights lost on the way
    weights = store.resolve(unmodule).path / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if "v_proj" not in k}, weights)
    edit_adapter_config(store.resolve(unmodule), target_modules=["q_proj"])
    retemplated = publish_variant(
        lambda m: m.model_copy(update={"template_prompt": "Write it.\n" + m.template_prompt})
    )
    inference = serve_inference(tiny_llama, adapters, dtype=served_dtype)
    try:
        check = ParityGateCheck(store, Events(), f"127.0.0.1:{inference.port}")
        outcomes = {}
        for adapter_id in (faithful, scaled, unmodule, retemplated):
            check("ftjob-x", adapter_id)
            outcomes[adapter_id] = store.resolve(adapter_id).manifest().gate
    finally:
        inference.stop()
    passed = outcomes[faithful]
    assert passed.state == "passed", passed.reason
    assert passed.served_dtype == served_dtype and passed.trained_dtype == ""
    assert [outcomes[a].state for a in (scaled, unmodule, retemplated)] == ["failed"] * 3
    for adapter_id in (scaled, unmodule):  # the same prompts, other numbers
        assert outcomes[adapter_id].max_logprob_diff > 10 * passed.max_logprob_diff
        assert outcomes[adapter_id].max_logprob_diff > outcomes[adapter_id].logprob_tolerance
    assert "tokenizes 3 of 3 held-out prompts otherwise" in outcomes[retemplated].reason
