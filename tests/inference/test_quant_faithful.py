"""QLoRA-faithful serving: an adapter's manifest says how its base was quantized while it
trained; the engine compares that with how it serves the base, lists both per adapter,
counts requests served unfaithfully, and TUNEYARD_ADAPTER_QUANT_MISMATCH decides."""

import logging

import httpx
import pytest

from tests.support.adapters import make_adapter
from tests.support.engines import make_engine
from tests.support.services import gateway_before, serve_inference
from tuneyard.adapter_store import BaseQuantization
from tuneyard.errors import FailedPrecondition

from .test_adapter_cache import generate

NF4 = BaseQuantization.of("4bit", "nf4", True, "bfloat16")
FP4 = BaseQuantization.of("4bit", "fp4", False, "float32")
NONE = BaseQuantization.of("none", dtype="float32")


def trained_on(version, held: BaseQuantization | None, hyperparameters=None):
    """Rewrite a version's manifest: how its base was held while it trained."""
    path = version.path / "tuneyard.json"
    manifest = version.manifest().model_copy(
        update={"trained_on": held, "hyperparameters": hyperparameters or {}}
    )
    path.write_text(manifest.model_dump_json())
    return version


@pytest.fixture(scope="module")
def adapters(tiny_llama, adapters_dir):
    """The same weights four times: trained on NF4, on FP4, unquantized, and not recorded
    but for an older manifest's hyperparameters (8 bit)."""
    return {
        "qlora": trained_on(make_adapter(tiny_llama, adapters_dir, "qlora"), NF4),
        "fp4": trained_on(make_adapter(tiny_llama, adapters_dir, "fp4"), FP4),
        "plain": trained_on(make_adapter(tiny_llama, adapters_dir, "plain"), NONE),
        "old8": trained_on(
            make_adapter(tiny_llama, adapters_dir, "old8"), None, {"quantization": "8bit"}
        ),
        "unknown": make_adapter(tiny_llama, adapters_dir, "unknown"),
    }


def listed(engine) -> dict[str, tuple[str, str, bool | None]]:
    return {a.name: (a.trained_on, a.served_on, a.faithful) for a in engine.adapters.list()}


def unfaithful_count(engine, adapter: str) -> float:
    counter = engine.metrics.unfaithful_requests.labels(adapter)
    return counter._value.get()


def test_the_comparison():
    assert NF4.describe() == "4bit nf4 double-quant (bfloat16)"
    assert FP4.describe() == "4bit fp4 (float32)" and NONE.describe() == "none (float32)"
    assert BaseQuantization.of("8bit", "fp4", False).describe() == "8bit"
    # The dtypes only round: the same weights.
    assert NF4.same_weights(BaseQuantization.of("4bit", "nf4", True, "float16"))
    assert not NF4.same_weights(FP4) and not NF4.same_weights(NONE)
    assert not NF4.same_weights(BaseQuantization.of("4bit", "nf4", False))
    assert NONE.same_weights(BaseQuantization.of("none", dtype="bfloat16"))


@pytest.mark.parametrize("mode", ["warn", "allow"])
def test_a_mismatch_is_listed_counted_and_served(tiny_llama, adapters_dir, adapters, caplog, mode):
    engine = make_engine(tiny_llama, adapters_dir, adapter_quant_mismatch=mode)
    try:
        served = engine.adapters.served_on.describe()
        assert served.startswith("none (")
        with caplog.at_level(logging.WARNING, "inference_service.adapter_cache"):
            for name in ("qlora", "plain", "unknown"):
                assert generate(engine, name).details.generated_tokens == 4
        warned = [r.getMessage() for r in caplog.records if "was trained on" in r.getMessage()]
        if mode == "warn":
            assert warned == [
                f"adapter qlora@1 was trained on a 4bit nf4 double-quant (bfloat16) base, but "
                f"this service serves it on {served}: its outputs may differ from those it was "
                "evaluated on"
            ]
        else:
            assert warned == []
        found = listed(engine)
        assert found["qlora"] == ("4bit nf4 double-quant (bfloat16)", served, False)
        assert found["fp4"] == ("4bit fp4 (float32)", served, False)  # listed unloaded too
        assert found["plain"] == ("none (float32)", served, True)
        assert found["old8"] == ("8bit", served, False)
        assert found["unknown"] == ("unknown", served, None)
        assert unfaithful_count(engine, "qlora") == 1
        assert unfaithful_count(engine, "plain") == unfaithful_count(engine, "unknown") == 0
        generate(engine, "qlora")
        assert unfaithful_count(engine, "qlora") == 2
    finally:
        engine.stop()


def test_refuse_fails_the_load_with_the_reason_and_serves_on(tiny_llama, adapters_dir, adapters):
    engine = make_engine(tiny_llama, adapters_dir, adapter_quant_mismatch="refuse")
    try:
        for name, trained in (("qlora", "4bit nf4 double-quant (bfloat16)"), ("old8", "8bit")):
            with pytest.raises(FailedPrecondition) as refused:
                generate(engine, name)
            message = refused.value.message
            assert f"adapter {name}@1 was trained on a {trained} base" in message
            assert "TUNEYARD_ADAPTER_QUANT_MISMATCH=refuse" in message
        info = {a.name: a for a in engine.adapters.list()}
        assert info["qlora"].state == "failed" and "4bit nf4" in info["qlora"].error
        # Faithful and unrecorded adapters, and the base, are served as ever.
        for name in ("plain", "unknown", ""):
            assert generate(engine, name).details.generated_tokens == 4
    finally:
        engine.stop()


def test_a_4bit_base_serves_qlora_faithfully(tiny_llama, adapters_dir, adapters):
    """bitsandbytes runs NF4 on the CPU: the NF4 adapter is faithful there, the FP4 one
    (no double quantization) is not, nor is the one trained unquantized."""
    engine = make_engine(
        tiny_llama, adapters_dir, quantization="4bit", adapter_quant_mismatch="refuse"
    )
    try:
        assert engine.adapters.served_on.describe().startswith("4bit nf4 double-quant (")
        assert generate(engine, "qlora").details.generated_tokens == 4
        assert unfaithful_count(engine, "qlora") == 0
        for name in ("fp4", "plain"):
            with pytest.raises(FailedPrecondition, match="this service serves it on 4bit nf4"):
                generate(engine, name)
    finally:
        engine.stop()
    fp4 = make_engine(
        tiny_llama,
        adapters_dir,
        quantization="4bit",
        quant_type="fp4",
        double_quant=False,
        adapter_quant_mismatch="refuse",
    )
    try:
        assert listed(fp4)["fp4"][2] is True and listed(fp4)["qlora"][2] is False
        assert generate(fp4, "fp4").details.generated_tokens == 4
    finally:
        fp4.stop()


def test_the_gateway_lists_the_quantizations_and_refuses_with_422(
    tiny_llama, adapters_dir, adapters
):
    server = serve_inference(tiny_llama, adapters_dir, adapter_quant_mismatch="refuse")
    gateway = gateway_before(server.port)
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as http:
            # FAILED_PRECONDITION: 400 in OpenAI's shape on /v1 routes, 422 on TGI's.
            refused = http.post("/v1/adapters/qlora/load")
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["code"] == "failed_precondition"
            assert "was trained on a 4bit nf4 double-quant (bfloat16) base" in error["message"]
            generated = http.post(
                "/generate", json={"inputs": "Hi", "parameters": {"adapter_id": "qlora"}}
            )
            assert (
                generated.status_code == 422
                and "TUNEYARD_ADAPTER_QUANT_MISMATCH" in (generated.json()["error"])
            )
            assert http.post("/v1/adapters/plain/load").status_code == 200
            entries = {a["name"]: a for a in http.get("/v1/adapters").json()["data"]}
            served = entries["plain"]["served_on"]
            assert served.startswith("none (")
            assert (entries["qlora"]["trained_on"], entries["qlora"]["faithful"]) == (
                "4bit nf4 double-quant (bfloat16)",
                False,
            )
            assert entries["qlora"]["state"] == "failed"
            assert entries["plain"]["faithful"] is True
            assert entries["unknown"]["trained_on"] == "unknown"
            assert entries["unknown"]["faithful"] is None
            assert http.post("/generate", json={"inputs": "Hi"}).status_code == 200
    finally:
        gateway.stop()
        server.stop()
