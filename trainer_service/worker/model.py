"""The base model with fresh LoRA layers, the same for every recipe."""

from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

from tuneyard.jobspec import JobSpec
from tuneyard.modeling import BaseModelRef, default_target_modules, load_model


def lora_model(spec: JobSpec, ref: BaseModelRef, device: str, dtype):
    """Load the base (8-bit/4-bit through bitsandbytes if asked) and wrap it in LoRA."""
    model = load_model(ref, device=device, dtype=dtype, quantization=spec.quantization)
    if spec.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=target_modules(spec, ref),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. a target module the architecture does not have
        raise ValueError(f"LoRA does not fit {ref.model_type} model: {err}") from err


def target_modules(spec: JobSpec, ref: BaseModelRef) -> list[str]:
    return spec.lora.target_modules or default_target_modules(ref.model_type)
