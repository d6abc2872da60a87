"""A training job's spec: the typed, validated form of the proto `JobSpec`.

Field names are the proto's, so conversion is `json_format` both ways; YAML spec files and
the HTTP API use the same names. Checks here are about the spec itself; checks that read
the data or the model run in the trainer's validation step.

Each field's docstring is its documentation, the one source of what the API schema
(`/openapi.json`), `tuneyard train --help` and the README's table (`reference()`) say.
"""

import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

import yaml
from google.protobuf import json_format
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tuneyard.adapter_store import check_name
from tuneyard.errors import InvalidArgument
from tuneyard.protos import UINT32_MAX
from tuneyard.templates import ChatTemplate, PromptTemplate
from tuneyard.v1 import evaluation_pb2, trainer_pb2

ALL_LINEAR = "all-linear"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class DataSpec(_Strict):
    """Exactly one source: `path` (a local .jsonl/.csv/.parquet file), `dataset` (a hub id,
    or a local dataset folder/file, read with `datasets.load_dataset`) or `file_id`."""

    path: str = ""
    """A local .jsonl, .csv or .parquet file on the trainer (under its data folders)."""
    dataset: str = ""
    """A hub dataset id, or a local dataset folder or file, read with `datasets.load_dataset`."""
    config: str = ""
    """The dataset's configuration (`dataset` only)."""
    split: str = ""
    """The dataset's split (`dataset` only; default `train`)."""
    file_id: str = ""
    """An uploaded file's id (`POST /v1/files`)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Template field -> column name, where they differ."""
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction of the rows held out (seeded by `training.seed`) for eval loss and the
    evaluation; 0: none."""
    eval_file_id: str = ""
    """An uploaded file's id whose rows are the eval split instead of `eval_fraction` of the
    training rows (OpenAI's `validation_file`)."""
    eval_path: str = ""
    """A local file on the trainer (under its data folders) whose rows are the eval split,
    instead of `eval_file_id`."""

    @model_validator(mode="after")
    def _one_source(self):
        given = [name for name in ("path", "dataset", "file_id") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of data.path, data.dataset or data.file_id"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if (self.config or self.split) and not self.dataset:
            raise ValueError("data.config and data.split apply to data.dataset only")
        if self.eval_file_id and self.eval_path:
            raise ValueError("give data.eval_file_id or data.eval_path, not both")
        if self.has_eval_file and self.eval_fraction:
            raise ValueError("give data.eval_fraction or an eval file, not both")
        return self

    @property
    def has_eval_file(self) -> bool:
        return bool(self.eval_file_id or self.eval_path)


class TemplateSpec(_Strict):
    """A built-in template (`alpaca`, `chat`) or a custom prompt/response pair."""

    builtin: Literal["", "alpaca", "chat"] = ""
    """`alpaca`, or `chat` (the base model's chat template over OpenAI's chat format: a
    `messages` column, text or text parts, assistant `tool_calls` and tool results, a
    row's `tools`, and each assistant turn trained on unless its `weight` is 0; recipes
    `sft` and `dpo`); empty for a custom pair."""
    prompt: str = ""
    """A Jinja template over the row's fields: the text the model is given."""
    response: str = ""
    """A Jinja template over the row's fields: the text the model learns to answer."""

    @model_validator(mode="after")
    def _one_kind(self):
        if self.builtin and (self.prompt or self.response):
            raise ValueError("give template.builtin or template.prompt/response, not both")
        if not self.builtin and not (self.prompt and self.response):
            raise ValueError("template needs builtin, or both prompt and response")
        return self

    @property
    def is_chat(self) -> bool:
        return self.builtin == "chat"

    def build(self, tokenizer=None):
        """The row formatter: a PromptTemplate, or a ChatTemplate over `tokenizer`."""
        if self.is_chat:
            return ChatTemplate(tokenizer) if tokenizer is not None else None
        if self.builtin:
            return PromptTemplate.builtin(self.builtin)
        return PromptTemplate(self.prompt, self.response)


class LoraSpec(_Strict):
    """PEFT's LoraConfig, for every quantization mode."""

    r: int = Field(16, ge=1, le=1024)
    """The adapter's rank."""
    alpha: float = Field(32.0, gt=0)
    """The scaling numerator: updates are scaled by alpha / r (alpha / sqrt(r) with
    `use_rslora`)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the adapter's input while training."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases train (PEFT's `bias`)."""
    target_modules: list[str] = Field(default_factory=list)
    """Module names to adapt; empty: the architecture's default; `["all-linear"]`: every
    linear layer but the output."""
    use_dora: bool = False
    """DoRA (PEFT's `use_dora`): each adapted layer also learns a magnitude per output
    feature, the low-rank update setting only the weights' direction; the native engine
    serves it unmerged in mixed batches or merged, vLLM only merged."""
    use_rslora: bool = False
    """rsLoRA (PEFT's `use_rslora`): updates scaled by alpha / sqrt(r) instead of alpha / r,
    which keeps higher ranks learning."""

    @model_validator(mode="after")
    def _all_linear_alone(self):
        if ALL_LINEAR in self.target_modules and len(self.target_modules) > 1:
            raise ValueError(f"{ALL_LINEAR!r} cannot be combined with module names")
        return self


class QuantizationSpec(_Strict):
    """bitsandbytes 4-bit settings (the QLoRA defaults)."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    """The 4-bit data type."""
    double_quant: bool = True
    """Quantize the quantization constants too (saves about 0.4 bits per parameter)."""
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """The dtype matmuls run in; auto: bfloat16 where the GPU has it, else float16."""


class TrainingSpec(_Strict):
    """The Trainer's arguments that a job may set."""

    max_steps: int = Field(0, ge=0, le=UINT32_MAX)
    """Optimizer steps to train; 0: train for `epochs` instead."""
    epochs: float = Field(3.0, gt=0)
    """Passes over the training rows (when `max_steps` is 0)."""
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    """The peak learning rate."""
    batch_size: int = Field(4, ge=1, le=1024)
    """Rows per device and step."""
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    """Batches whose gradients add up to one optimizer step."""
    max_seq_length: int = Field(512, ge=8, le=131072)
    """Tokens per row: causal_lm truncates a longer row, sft drops it (validation says which
    rows)."""
    seed: int = Field(42, ge=0, le=UINT32_MAX)
    """Seeds the eval split, the adapter's initialisation and the data order."""
    warmup_steps: int = Field(0, ge=0, le=UINT32_MAX)
    """Steps of linear warmup from 0 to `learning_rate`."""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """How the learning rate decays after warmup."""
    logging_steps: int = Field(1, ge=1, le=UINT32_MAX)
    """Steps between two progress events (loss, tokens/s, ETA)."""
    optimizer: Literal["adamw_torch", "paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit"] = (
        "adamw_torch"
    )
    """The optimizer; the 8-bit and paged ones (bitsandbytes) need a GPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    eval_steps: int = Field(0, ge=0, le=UINT32_MAX)
    """Steps between two eval losses (with an eval split); 0: once per epoch."""
    save_steps: int = Field(0, ge=0, le=UINT32_MAX)
    """Steps between two checkpoints (publishable, and what a job resumes from); 0: none,
    so no resume."""
    completion_only_loss: bool = True
    """sft only: the loss counts the response's tokens only, not the prompt's."""
    packing: bool = False
    """sft only: pack several rows into each sequence (TRL's bfd packing)."""


class ParityGateSpec(_Strict):
    """Before the adapter's name moves to the new version: the trained model generates
    greedily for a few held-out prompts, rendered with the adapter's template, and the
    inference service scores those same tokens after the prompt as it renders it
    (teacher-forced). Below the bar the version is published, but its name does not move
    to it until `POST /v1/adapters/{id}/promote`."""

    prompts: int = Field(4, ge=0, le=64)
    """Held-out prompts compared (eval rows, else training rows); 0: no gate, the name
    moves at once."""
    tokens: int = Field(32, ge=1, le=1024)
    """Greedy tokens generated per prompt."""
    min_agreement: float = Field(1.0, ge=0.0, le=1.0)
    """The share of each prompt's clear positions (the trained model's token ahead of the
    next by more than `min_margin`) where the service's likeliest token must be the same;
    1: all of them."""
    min_margin: float = Field(0.5, ge=0.0)
    """Nats: where the trained model's choice was closer than this, another dtype's
    rounding may flip it, and only its log-probability is compared."""
    logprob_tolerance: float | None = Field(None, gt=0.0)
    """The largest |log-probability difference| allowed on any of the tokens; None: the
    default for the two sides' dtypes (README, "Same results on every machine")."""


class DpoSpec(_Strict):
    """TRL's DPO settings (recipe `dpo`)."""

    beta: float = Field(0.1, gt=0, le=100)
    """How far the adapter may move from the base model: higher keeps it closer (the DPO
    loss's temperature); recipe `dpo` only."""


class JobSpec(_Strict):
    """A training job: which base model, which data through which template, how to train."""

    base_model: str = ""
    """A hub id or a local model folder; empty: the service's base model."""
    adapter_name: str
    """The name the adapter is published under (`name@1`, `name@2`... per job)."""
    recipe: Literal["causal_lm", "sft", "dpo"] = "causal_lm"
    """`causal_lm`: loss on the whole rendered text; `sft`: TRL's SFTTrainer (prompt and
    completion); `dpo`: TRL's DPOTrainer on preference rows (`input`, `preferred_output`,
    `non_preferred_output`), with template builtin `chat`."""
    data: DataSpec
    """Where the rows come from: exactly one of `path`, `dataset` or `file_id`."""
    template: TemplateSpec
    """How a row becomes text; published with the adapter, which serves with it."""
    lora: LoraSpec = Field(default_factory=LoraSpec)
    """The adapter's shape."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """The training loop's settings."""
    quantization: Literal["none", "8bit", "4bit"] = "none"
    """The base model's weights while training: `4bit` is QLoRA, `8bit` is 8-bit LoRA (both
    bitsandbytes, on a GPU)."""
    quantization_options: QuantizationSpec = Field(default_factory=QuantizationSpec)
    """4-bit settings; ignored otherwise."""
    merge: bool = False
    """Also publish merged weights (checked against base + adapter before publishing)."""
    merge_dequantized: bool = False
    """With `merge` and quantization `4bit`/`8bit`: merge into the base as it trained, its
    bitsandbytes weights dequantized, not into its original weights, so that a 16-bit
    deployment of the merged weights computes what was trained (QLoRA's train/serve gap);
    the manifest's metrics say how far the merged model is from the quantized base +
    adapter."""
    evaluation: dict | None = None
    """EvaluationSpec fields (`proto/tuneyard/v1/evaluation.proto`): evaluate the adapter
    against the base model once published, on the eval split unless they name a file."""
    dpo: DpoSpec = Field(default_factory=DpoSpec)
    """Preference tuning's settings (recipe `dpo`)."""
    parity_gate: ParityGateSpec = Field(default_factory=ParityGateSpec)
    """The served-vs-trained check before the name moves to the new version: template
    fields, or for a chat job the conversation before the answer (rows of text turns)."""
    added_tokens: list[str] = Field(default_factory=list)
    """Tokens to add to the base's vocabulary (e.g. `<email>`), each encoded as one id:
    PEFT's trainable tokens train only their embedding rows (and output rows, where the
    base does not tie them), and the adapter is published with the extended tokenizer.
    The native engine serves it next to other adapters (its rows with its tokenizer and
    rows; other rows never see its tokens); vLLM refuses it; `merge` cannot be combined."""

    @field_validator("template")
    @classmethod
    def _dpo_renders_chat(cls, template: TemplateSpec, info: ValidationInfo) -> TemplateSpec:
        # A preference row is conversation turns, which only the model's chat template renders.
        if info.data.get("recipe") == "dpo" and not template.is_chat:
            raise ValueError("recipe 'dpo' needs template.builtin 'chat'")
        return template

    @field_validator("evaluation", mode="before")
    @classmethod
    def _evaluation_spelled_once(cls, evaluation):
        """The proto's EvaluationSpec is the one definition of these fields: a spec may spell
        them as its JSON does (camelCase) or as the proto does, and from here on they are
        the proto's names, checked by its parser, so every reader asks for one spelling."""
        if evaluation is None:
            return None
        if not isinstance(evaluation, dict):
            raise ValueError("evaluation must be an object of EvaluationSpec fields")
        try:
            message = json_format.ParseDict(evaluation, evaluation_pb2.EvaluationSpec())
        except json_format.ParseError as err:
            raise ValueError(str(err)) from err
        canonical = json_format.MessageToDict(message, preserving_proto_field_name=True)
        if "seed" in canonical:  # a 64-bit integer, which MessageToDict writes as a string
            canonical["seed"] = int(canonical["seed"])
        return canonical

    @field_validator("evaluation")
    @classmethod
    def _dpo_evaluates_a_file(cls, evaluation: dict | None, info: ValidationInfo) -> dict | None:
        # Preference rows have no one reference answer to score: the eval split cannot serve.
        has_file = evaluation and (evaluation.get("eval_file") or evaluation.get("eval_file_id"))
        if info.data.get("recipe") == "dpo" and evaluation is not None and not has_file:
            raise ValueError(
                "recipe 'dpo' evaluates on a file of chat rows only: give evaluation.eval_file "
                "or evaluation.eval_file_id (its eval split holds preference rows)"
            )
        return evaluation

    @model_validator(mode="after")
    def _check(self):
        check_name(self.adapter_name)
        self.template.build()
        if self.merge_dequantized and not (self.merge and self.quantization != "none"):
            raise ValueError("merge_dequantized needs merge and quantization '4bit' or '8bit'")
        if self.added_tokens and self.merge:
            raise ValueError("merge cannot be combined with added_tokens")
        if bad := [t for t in self.added_tokens if not t.strip()]:
            raise ValueError(f"added_tokens: empty or blank tokens {bad!r}")
        if len(set(self.added_tokens)) != len(self.added_tokens):
            raise ValueError(f"added_tokens: duplicates in {self.added_tokens!r}")
        if self.template.is_chat and self.recipe not in ("sft", "dpo"):
            raise ValueError("template.builtin 'chat' needs recipe 'sft' or 'dpo'")
        return self

    # --- conversions -------------------------------------------------------------------
    @classmethod
    def parse(cls, data: dict, strict: bool = False) -> "JobSpec":
        """Validate a plain dict; errors become one InvalidArgument naming every field.
        `strict`: JSON types only (an HTTP body), no YAML-friendly coercions ("2e-4")."""
        try:
            return cls.model_validate(data, strict=strict)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in err.errors()
            )
            first = err.errors()[0]["loc"] if err.errors() else ()
            raise InvalidArgument(
                f"invalid job spec: {problems}", param=".".join(str(p) for p in first)
            ) from err

    @classmethod
    def from_proto(cls, message: trainer_pb2.JobSpec) -> "JobSpec":
        data = json_format.MessageToDict(message, preserving_proto_field_name=True)
        _drop_unset_choices(cls, data)
        return cls.parse(data)

    def to_proto(self) -> trainer_pb2.JobSpec:
        return json_format.ParseDict(self.model_dump(), trainer_pb2.JobSpec())

    @classmethod
    def from_yaml(cls, path: Path) -> "JobSpec":
        """Load a spec file; a relative data path is taken relative to the spec file."""
        path = Path(path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise InvalidArgument(f"{path}: a job spec must be a mapping")
        source = data.get("data") or {}
        for key in ("path", "dataset"):
            # A hub id looks like a relative path: only an existing local one is rebased.
            value = source.get(key)
            local = path.parent / value if value else None
            if value and not Path(value).is_absolute() and (key == "path" or local.exists()):
                source[key] = str(local.resolve())
        return cls.parse(data)


def _drop_unset_choices(model: type[BaseModel], data: dict) -> None:
    """proto3 strings have no presence: an empty string for a field with a fixed set of
    choices means "not set", so its default applies."""
    for name, field in model.model_fields.items():
        value = data.get(name)
        if value == "" and get_origin(field.annotation) is Literal:
            data.pop(name)
        elif isinstance(value, dict) and _is_model(field.annotation):
            _drop_unset_choices(field.annotation, value)


def _is_model(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def reference(markdown: bool = True) -> str:
    """Every field of a job spec (path, type, default, what it means): a Markdown table for
    the README, or plain text for `tuneyard train --help`."""
    rows = []
    for path, field in _fields(JobSpec):
        if field.is_required():
            default = "required"
        elif _is_model(field.annotation):
            default = ""
        else:
            default = repr(field.get_default(call_default_factory=True))
        rows.append((path, _type_name(field.annotation), default, _one_line(field.description)))
    if not markdown:
        return "".join(f"  {p} ({t}{', ' + d if d else ''}): {m}\n" for p, t, d, m in rows)
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for path, kind, default, meaning in rows:
        cells = [f"`{path}`", f"`{kind}`", f"`{default}`" if default else "", meaning]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        yield prefix + name, field
        if _is_model(field.annotation):
            yield from _fields(field.annotation, f"{prefix}{name}.")


def _type_name(annotation) -> str:
    if get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in get_args(annotation))
    if _is_model(annotation):
        return "object"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


if __name__ == "__main__":  # python -m tuneyard.jobspec: the table the README shows
    sys.stdout.write(reference())
