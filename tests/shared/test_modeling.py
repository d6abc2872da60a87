import json
import os
import shutil
import subprocess
import sys

import pytest

from tuneyard.errors import InvalidArgument
from tuneyard.modeling import default_target_modules, resolve_base_model


def test_local_folder(tiny_llama):
    ref = resolve_base_model(str(tiny_llama))
    assert ref.path == tiny_llama.resolve()
    assert ref.revision.startswith("sha256:")
    assert ref.model_type == "llama"
    assert resolve_base_model(str(tiny_llama)).revision == ref.revision


def test_fingerprint_follows_the_weights(tiny_llama, tmp_path):
    copy = shutil.copytree(tiny_llama, tmp_path / "copy")
    config = json.loads((copy / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (copy / "config.json").write_text(json.dumps(config))
    assert resolve_base_model(str(copy)).revision != resolve_base_model(str(tiny_llama)).revision


def test_missing_folder_and_folder_without_config(tmp_path):
    with pytest.raises(InvalidArgument, match="does not exist"):
        resolve_base_model(str(tmp_path / "nope"))
    with pytest.raises(InvalidArgument, match="has no config.json"):
        resolve_base_model(str(tmp_path))
    with pytest.raises(InvalidArgument, match="no base model given"):
        resolve_base_model("")


def hub_cache(tmp_path, tiny_llama, repo="acme/tiny-llama", commit="0123abcd" * 5):
    """Lay out a Hugging Face hub cache holding `repo`, as a download would leave it."""
    root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(tiny_llama, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return tmp_path / "hub"


RESOLVE = (
    "import sys; from tuneyard.modeling import resolve_base_model as r\n"
    "try:\n    ref = r(sys.argv[1]); print(ref.revision, ref.path)\n"
    "except Exception as e:\n    print('ERR', e)"
)


def run_offline(cache, model_id):
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", RESOLVE, model_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout.strip()


def test_hub_id_resolves_through_the_hub_cache(tmp_path, tiny_llama):
    """The hub-id path is the real code path, fed from a local cache (no network here)."""
    cache = hub_cache(tmp_path, tiny_llama)
    revision, path = run_offline(cache, "acme/tiny-llama").split(" ", 1)
    assert revision == "hub:" + "0123abcd" * 5
    assert path.endswith("0123abcd" * 5)


def test_unknown_hub_id_names_the_model(tmp_path, tiny_llama):
    cache = hub_cache(tmp_path, tiny_llama)
    out = run_offline(cache, "acme/missing-model")
    assert out.startswith("ERR base model 'acme/missing-model' is neither a local folder")


def test_default_targets_per_family():
    assert default_target_modules("llama") == ["q_proj", "v_proj"]
    assert default_target_modules("bloom") == ["query_key_value"]


def test_auto_dtype_is_bf16_on_a_cpu_only_where_it_is_native(monkeypatch):
    import torch

    from tuneyard import modeling

    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: False)
    assert modeling.pick_dtype("auto", "cpu", cpu_bf16_if_native=True) is torch.float32
    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: True)
    assert modeling.pick_dtype("auto", "cpu", cpu_bf16_if_native=True) is torch.bfloat16
    assert modeling.pick_dtype("auto", "cpu") is torch.float32  # training keeps fp32
    assert modeling.pick_dtype("auto", "cuda") is torch.bfloat16
    assert modeling.pick_dtype("float16", "cpu") is torch.float16


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
def test_a_4bit_base_computes_in_its_compute_dtype_on_a_cpu_with_avx512_bf16(
    tiny_llama, monkeypatch, compute
):
    """bitsandbytes sends every 4-bit layer in eval on such a CPU (faked here) through a
    fused kernel that computes in bf16: only a bf16 compute dtype may take it."""
    import bitsandbytes.nn.modules as bnb_modules
    import torch

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    from tuneyard import modeling

    model = modeling.load_model(
        modeling.resolve_base_model(str(tiny_llama)),
        device="cpu",
        dtype=torch.float32,
        quantization="4bit",
        compute_dtype=getattr(torch, compute),
    )
    fused = {
        m.support_avx512bf16_for_cpu
        for m in model.modules()
        if isinstance(m, bnb_modules.Linear4bit)
    }
    assert fused == {compute == "bfloat16"}
