"""PEFT LoRA adapter folders: adapter_config.json and adapter_model.safetensors read into
`LoraWeights`, configurations the multi-LoRA layers cannot serve refused with the reason."""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from tuneyard.errors import FailedPrecondition

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY_PREFIX = "base_model.model."
_MAGNITUDE = "lora_magnitude_vector"
_TOKENS = ".token_adapter."


@dataclass
class AddedTokenRows:
    """The rows of tokens an adapter added after the base's vocabulary (PEFT's trainable
    tokens): `ids` ascending, and per id its embedding row and its output-layer row
    (None: the output layer is tied to the embedding)."""

    ids: list[int]
    embedding: torch.Tensor  # [len(ids), hidden]
    output: torch.Tensor | None


@dataclass
class LoraWeights:
    """One adapter read from its PEFT folder: per module path, (A [r, in], B [out, r]);
    for a DoRA adapter also per module path its magnitude vector [out]. `scaling` is
    alpha / r, or alpha / sqrt(r) for rsLoRA."""

    rank: int
    scaling: float
    target_modules: list[str]
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    magnitudes: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: AddedTokenRows | None = None

    @property
    def dora(self) -> bool:
        return bool(self.magnitudes)


def configured_lora(folder: Path) -> tuple[int, list[str]]:
    """Rank and target modules as the folder's adapter_config.json says, without reading
    the weights: what a listing shows of a version that is not loaded."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    targets = config.get("target_modules") or []
    return int(config.get("r") or 0), sorted(targets) if isinstance(targets, list) else [targets]


def read_adapter(folder: Path, max_rank: int) -> LoraWeights:
    """Read and check a PEFT LoRA adapter; unsupported configurations are refused with the
    reason (FailedPrecondition)."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FailedPrecondition(f"{folder} has no {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise FailedPrecondition(f"{config_path} is not valid JSON: {err}") from err
    _check_config(config, max_rank)

    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        pickled = [p.name for p in folder.glob("*.bin")]
        hint = f" (found {', '.join(pickled)}: pickle weights are refused)" if pickled else ""
        raise FailedPrecondition(f"{folder} has no {WEIGHTS_FILE}{hint}")
    try:
        tensors = load_file(weights_path)
    except Exception as err:  # safetensors raises its own error types
        raise FailedPrecondition(
            f"{weights_path} is not a readable safetensors file: {err}"
        ) from err

    tokens = _added_rows(tensors, weights_path, config.get("trainable_token_indices"))
    modules, magnitudes = _pair_tensors(tensors, weights_path, dora=bool(config.get("use_dora")))
    rank = max(a.shape[0] for a, _ in modules.values())
    if rank > max_rank:
        raise FailedPrecondition(f"adapter rank {rank} exceeds max_adapter_rank {max_rank}")
    r = int(config["r"])
    alpha = float(config.get("lora_alpha", r))
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    targets = sorted({path.rsplit(".", 1)[-1] for path in modules})
    return LoraWeights(rank, scaling, targets, modules, magnitudes, tokens)


def _check_config(config: dict, max_rank: int) -> None:
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} is not LORA")
    if config.get("bias", "none") != "none":
        problems.append(f"bias {config.get('bias')!r} (only 'none' is served)")
    if config.get("modules_to_save"):
        problems.append(
            f"modules_to_save {config['modules_to_save']} (full modules are not served)"
        )
    tokens = config.get("trainable_token_indices")
    if tokens is not None and (not isinstance(tokens, dict) or len(tokens) > 2):
        problems.append(
            f"trainable_token_indices {tokens!r} (served: the embedding's, and the output "
            "layer's, added rows)"
        )
    if config.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out (Conv1D bases are not served)")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            problems.append(f"{key} (per-module ranks are not served)")
    r = config.get("r")
    if not isinstance(r, int) or r < 1:
        problems.append(f"r={r!r} is not a positive integer")
    elif r > max_rank:
        problems.append(f"rank {r} exceeds max_adapter_rank {max_rank}")
    if problems:
        raise FailedPrecondition("unsupported adapter: " + "; ".join(problems))


def _added_rows(
    tensors: dict[str, torch.Tensor], path: Path, indices: dict | None
) -> AddedTokenRows | None:
    """Take PEFT's trainable-token tensors out of `tensors`: per wrapped layer its new rows
    (`trainable_tokens_delta`, the rows' values) and the whole resized layer it also saves
    (`base_layer.weight`, whose base rows are the base's: not needed)."""
    deltas = {}
    for key in [k for k in tensors if _TOKENS in k]:
        tensor = tensors.pop(key)
        stem, _, kind = key.partition(_TOKENS)
        if kind == "trainable_tokens_delta":
            deltas[stem.removeprefix(_KEY_PREFIX).rpartition(".")[2]] = tensor
        elif kind != "base_layer.weight":
            raise FailedPrecondition(f"{path.name}: unexpected tensor {key!r}")
    if not indices:
        if deltas:
            raise FailedPrecondition(f"{path.name} holds added token rows its config does not name")
        return None
    (embedding_name, ids), *rest = indices.items()
    if any(sorted(other) != sorted(ids) for _, other in rest):
        raise FailedPrecondition(
            f"trainable_token_indices {indices} (served: the same added tokens in every layer)"
        )
    embedding = deltas.pop(embedding_name, None)
    output = deltas.pop(rest[0][0], None) if rest else deltas.pop("lm_head", None)
    if embedding is None or deltas:
        raise FailedPrecondition(
            f"{path.name}: trainable tokens of {embedding_name!r} lack their rows, or are "
            f"on other layers ({', '.join(deltas)})"
        )
    if embedding.shape[0] != len(ids) or (output is not None and output.shape != embedding.shape):
        raise FailedPrecondition(f"{path.name}: added token rows do not match {len(ids)} ids")
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return AddedTokenRows(
        [ids[i] for i in order], embedding[order], None if output is None else output[order]
    )


def _pair_tensors(tensors: dict[str, torch.Tensor], path: Path, dora: bool):
    """Per module (A, B), and with `dora` (the config's use_dora) its magnitude vector,
    which PEFT saves as `<module>.lora_magnitude_vector`."""
    kinds = ("lora_A", "lora_B", _MAGNITUDE) if dora else ("lora_A", "lora_B")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        stem, dot, kind = key.removesuffix(".weight").rpartition(".")
        if not dot or kind not in kinds or not stem.startswith(_KEY_PREFIX):
            only = "LoRA A/B and DoRA magnitudes" if dora else "LoRA A/B"
            raise FailedPrecondition(f"{path.name}: unexpected tensor {key!r} (only {only})")
        pairs.setdefault(stem.removeprefix(_KEY_PREFIX), {})[kind] = tensor
    if not pairs:
        raise FailedPrecondition(f"{path.name} holds no LoRA tensors")
    modules, magnitudes = {}, {}
    for module, pair in pairs.items():
        if not {"lora_A", "lora_B"} <= set(pair):
            raise FailedPrecondition(f"{path.name}: {module} lacks lora_A or lora_B")
        a, b = pair["lora_A"], pair["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise FailedPrecondition(
                f"{path.name}: {module} has mismatched shapes A{tuple(a.shape)} B{tuple(b.shape)}"
            )
        modules[module] = (a, b)
        if dora:
            magnitude = pair.get(_MAGNITUDE)
            if magnitude is None or tuple(magnitude.shape) != (b.shape[0],):
                found = "none" if magnitude is None else f"shape {tuple(magnitude.shape)}"
                raise FailedPrecondition(
                    f"{path.name}: use_dora, but {module} has no DoRA magnitude vector of "
                    f"{b.shape[0]} values ({_MAGNITUDE}: {found})"
                )
            magnitudes[module] = magnitude
    return modules, magnitudes
