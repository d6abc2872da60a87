"""Finding and loading a base model, shared by the trainer and the inference service.

A base model is a hub id or a local folder. Its fingerprint (`revision`) goes into every
adapter manifest so serving can refuse an adapter trained on another base.
"""

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tuneyard.errors import InvalidArgument

# Per-architecture LoRA targets when a spec names none (the attention projections).
DEFAULT_TARGET_MODULES = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "bloom": ["query_key_value"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "gpt2": ["c_attn"],
}


@dataclass(frozen=True)
class BaseModelRef:
    """A base model as asked for (`id`) and where its files are (`path`)."""

    id: str
    path: Path
    revision: str

    @property
    def model_type(self) -> str:
        return json.loads((self.path / "config.json").read_text()).get("model_type", "")


def public_name(model_id: str) -> str:
    """How a base model is named to clients: a hub id as it is, a local folder by its
    name (its path says nothing to a client and too much about the server)."""
    local = Path(model_id).expanduser()
    if model_id and (model_id.startswith(("/", ".", "~")) or local.is_dir()):
        return local.resolve().name
    return model_id


def resolve_base_model(model_id: str) -> BaseModelRef:
    """Find a base model's files: a local folder as is, a hub id through the hub cache
    (downloading it unless HF_HUB_OFFLINE is set)."""
    if not model_id:
        raise InvalidArgument("no base model given", param="base_model")
    local = Path(model_id).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise InvalidArgument(
                f"base model folder {local} has no config.json", param="base_model"
            )
        return BaseModelRef(model_id, local.resolve(), _fingerprint(local))
    if model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1:
        raise InvalidArgument(f"base model folder {model_id} does not exist", param="base_model")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(model_id, allow_patterns=_MODEL_FILES))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        raise InvalidArgument(
            f"base model {model_id!r} is neither a local folder nor reachable on the hub "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
            param="base_model",
        ) from err
    # Hub snapshots live in .../snapshots/<commit>: the commit is the revision.
    return BaseModelRef(model_id, path, f"hub:{path.name}")


_MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def _fingerprint(folder: Path) -> str:
    """Cheap identity of a local model folder: its config and the sizes of its weights."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for weights in sorted(folder.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return "sha256:" + digest.hexdigest()[:16]


def default_target_modules(model_type: str) -> list[str]:
    return DEFAULT_TARGET_MODULES.get(model_type, ["q_proj", "v_proj"])


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(requested: str, device: str, *, cpu_bf16_if_native: bool = False):
    """bf16 on GPUs; fp32 on the CPU, where bf16 matmuls are emulated on most processors
    (3.6x slower than fp32 for a batch of 16 on an AVX2 EPYC). With `cpu_bf16_if_native`
    (serving), bf16 on a CPU that runs it natively (AMX, AVX512-BF16: 1.5x faster than fp32
    for a batch there)."""
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    if device.startswith("cuda") or (cpu_bf16_if_native and cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: assume not
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def load_tokenizer(ref: BaseModelRef):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def add_tokens(tokenizer, tokens: list[str]) -> list[int]:
    """Add `tokens` to the tokenizer, each never split nor normalized, and return their
    ids. Not flagged special: decoding skips special tokens, and these are text the
    adapter writes. A token the vocabulary already holds is refused (ValueError)."""
    from transformers import AddedToken

    vocab = tokenizer.get_vocab()
    if known := [t for t in tokens if t in vocab]:
        raise ValueError(f"the base's tokenizer already has {known!r}")
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in tokens])
    return tokenizer.convert_tokens_to_ids(tokens)


def load_model(
    ref: BaseModelRef,
    *,
    device: str,
    dtype,
    quantization: str = "none",
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype=None,
):
    """Load the causal LM, optionally 8-bit or 4-bit (NF4/FP4, double quantization, compute
    dtype `compute_dtype` or `dtype`) through bitsandbytes."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype}
    if quantization in ("8bit", "4bit"):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if quantization == "8bit"
            else BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=quant_type,
                bnb_4bit_use_double_quant=double_quant,
                bnb_4bit_compute_dtype=compute_dtype or dtype,
            )
        )
        kwargs["device_map"] = {"": device}
    elif quantization != "none":
        raise InvalidArgument(
            f"unknown quantization {quantization!r}: none, 8bit or 4bit", param="quantization"
        )
    model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    if quantization == "none":
        model.to(device)
    if quantization == "4bit":
        keep_4bit_compute_dtype(model, compute_dtype or dtype)
    return model


def keep_4bit_compute_dtype(model, compute_dtype) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes runs every 4-bit layer in eval through a
    fused kernel that computes in bf16 whatever the compute dtype (0.64 logits off an
    fp32 forward on a tiny model): only a bf16 compute dtype may take it, so a float32
    base computes in float32 on every CPU."""
    import torch

    if compute_dtype == torch.bfloat16:
        return
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
