import json
import time

import pytest

from tuneyard import embedded_model


@pytest.mark.slow
def test_gguf_becomes_a_plain_model_folder_once(tmp_path):
    folder = embedded_model.prepare(tmp_path)
    assert folder == embedded_model.embedded_model_dir(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config
    assert (folder / "model.safetensors").stat().st_size > 200_000_000
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "staging left"
    # Readable by every user: the image prepares it as root, its services run as another.
    assert folder.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o004 for p in folder.iterdir())

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert tokenizer.eos_token == "<|im_end|>"

    started = time.monotonic()
    assert embedded_model.prepare(tmp_path) == folder
    assert time.monotonic() - started < 1.0, "a prepared model must be reused"
