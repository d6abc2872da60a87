"""The base model with fresh LoRA layers, the same for every recipe."""

from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

from tuneyard.adapter_store import BaseQuantization
from tuneyard.jobspec import ALL_LINEAR, JobSpec
from tuneyard.modeling import BaseModelRef, default_target_modules, load_model, pick_dtype


def lora_model(spec: JobSpec, ref: BaseModelRef, device: str, dtype, new_token_ids=()):
    """Load the base (8-bit/4-bit through bitsandbytes if asked) and wrap it in LoRA;
    `new_token_ids`: tokens added to the tokenizer, whose rows are added and trained."""
    if spec.lora.use_dora and spec.quantization == "8bit" and device == "cpu":
        # PEFT's DoRA dequantizes the base weight at every forward, and on a CPU it then
        # puts back a copy of the int8 weight without bitsandbytes' scales (peft 0.21,
        # bitsandbytes 0.50): the next step fails inside bitsandbytes.
        raise ValueError(
            "lora.use_dora on an 8-bit base does not train on a CPU (PEFT's DoRA drops "
            "bitsandbytes' int8 scales there); train it on a GPU, or with quantization "
            "'4bit' or 'none'"
        )
    q = spec.quantization_options
    model = load_model(
        ref,
        device=device,
        dtype=dtype,
        quantization=spec.quantization,
        quant_type=q.quant_type,
        double_quant=q.double_quant,
        compute_dtype=compute_dtype(spec, device, dtype),
    )
    if new_token_ids:
        rows = model.get_input_embeddings().num_embeddings
        if min(new_token_ids) < rows:
            # Ids inside the padding rows would need the engines to replace base rows.
            raise ValueError(
                f"added_tokens: the base's embedding has {rows} rows, more than its "
                f"tokenizer's {min(new_token_ids)} tokens (a padded vocabulary); adding "
                "tokens to such a base is not served yet"
            )
        model.resize_token_embeddings(max(new_token_ids) + 1)
    checkpointing = spec.training.gradient_checkpointing
    if spec.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # frozen embeddings: checkpoints still need grads
    config = LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        bias=spec.lora.bias,
        use_dora=spec.lora.use_dora,
        use_rslora=spec.lora.use_rslora,
        target_modules=target_modules(spec, ref),
        trainable_token_indices=trainable_tokens(model, new_token_ids),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. a target module the architecture does not have
        raise ValueError(f"LoRA does not fit {ref.model_type} model: {err}") from err


def trainable_tokens(model, new_token_ids) -> dict[str, list[int]] | None:
    """PEFT's trainable tokens for the added ids: only their rows train, so every base row
    stays the base's (modules_to_save would train, and publish, whole V x d matrices). A
    tied output layer follows its embedding; an untied one is named too."""
    if not new_token_ids:
        return None
    names = {module: name.rpartition(".")[2] for name, module in model.named_modules()}
    layers = [model.get_input_embeddings()]
    if not model.config.get_text_config().tie_word_embeddings:
        layers.append(model.get_output_embeddings())
    return {names[layer]: list(new_token_ids) for layer in layers}


def compute_dtype(spec: JobSpec, device: str, dtype):
    """The dtype the base's matmuls run in: 4 bit's compute dtype, else the weights'."""
    if spec.quantization == "4bit":
        return pick_dtype(spec.quantization_options.compute_dtype, device)
    return dtype


def base_quantization(spec: JobSpec, device: str, dtype) -> BaseQuantization:
    """How `lora_model` holds the base: the manifest's `trained_on`."""
    q = spec.quantization_options
    dtype_name = str(compute_dtype(spec, device, dtype)).removeprefix("torch.")
    return BaseQuantization.of(spec.quantization, q.quant_type, q.double_quant, dtype_name)


def target_modules(spec: JobSpec, ref: BaseModelRef) -> list[str] | str:
    """The spec's modules, the architecture's default, or PEFT's "all-linear"."""
    if spec.lora.target_modules == [ALL_LINEAR]:
        return ALL_LINEAR
    return spec.lora.target_modules or default_target_modules(ref.model_type)
