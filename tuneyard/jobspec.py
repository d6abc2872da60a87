"""A training job's spec: the typed, validated form of the proto `JobSpec`.

Field names are the proto's, so conversion is `json_format` both ways; YAML spec files and
the HTTP API use the same names. Checks here are about the spec itself; checks that read
the data or the model run in the trainer's validation step.
"""

from pathlib import Path
from typing import Literal

import yaml
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneyard.adapter_store import check_name
from tuneyard.errors import InvalidArgument
from tuneyard.protos import UINT32_MAX
from tuneyard.templates import ChatTemplate, PromptTemplate
from tuneyard.v1 import evaluation_pb2, trainer_pb2

ALL_LINEAR = "all-linear"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    """Exactly one source: `path` (a local .jsonl/.csv/.parquet file), `dataset` (a hub id,
    or a local dataset folder/file, read with `datasets.load_dataset`) or `file_id`."""

    path: str = ""
    dataset: str = ""
    config: str = ""
    split: str = ""
    file_id: str = ""
    columns: dict[str, str] = Field(default_factory=dict)
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)

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
        return self


class TemplateSpec(_Strict):
    """A built-in template (`alpaca`, `chat`) or a custom prompt/response pair."""

    builtin: Literal["", "alpaca", "chat"] = ""
    prompt: str = ""
    response: str = ""

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
    r: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: list[str] = Field(
        default_factory=list, description="Empty: the architecture's default; ['all-linear']."
    )

    @model_validator(mode="after")
    def _all_linear_alone(self):
        if ALL_LINEAR in self.target_modules and len(self.target_modules) > 1:
            raise ValueError(f"{ALL_LINEAR!r} cannot be combined with module names")
        return self


class QuantizationSpec(_Strict):
    """bitsandbytes 4-bit settings (the QLoRA defaults)."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"


class TrainingSpec(_Strict):
    max_steps: int = Field(0, ge=0, le=UINT32_MAX, description="0: train for `epochs` instead.")
    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    batch_size: int = Field(4, ge=1, le=1024)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    max_seq_length: int = Field(512, ge=8, le=131072)
    seed: int = Field(42, ge=0, le=UINT32_MAX)
    warmup_steps: int = Field(0, ge=0, le=UINT32_MAX)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    logging_steps: int = Field(1, ge=1, le=UINT32_MAX)
    optimizer: Literal["adamw_torch", "paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit"] = (
        "adamw_torch"
    )
    gradient_checkpointing: bool = False
    eval_steps: int = Field(0, ge=0, le=UINT32_MAX, description="0: eval once per epoch.")
    save_steps: int = Field(0, ge=0, le=UINT32_MAX, description="0: no checkpoints (no resume).")
    completion_only_loss: bool = Field(True, description="sft only.")
    packing: bool = Field(False, description="sft only: TRL's bfd packing.")


class JobSpec(_Strict):
    base_model: str = ""
    adapter_name: str
    recipe: Literal["causal_lm", "sft"] = "causal_lm"
    data: DataSpec
    template: TemplateSpec
    lora: LoraSpec = Field(default_factory=LoraSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    quantization: Literal["none", "8bit", "4bit"] = "none"
    quantization_options: QuantizationSpec = Field(default_factory=QuantizationSpec)
    merge: bool = False
    # EvaluationSpec fields (evaluation.proto) to evaluate the adapter once published.
    evaluation: dict | None = None

    @model_validator(mode="after")
    def _check(self):
        check_name(self.adapter_name)
        if self.evaluation is not None:
            try:
                json_format.ParseDict(self.evaluation, evaluation_pb2.EvaluationSpec())
            except json_format.ParseError as err:
                raise ValueError(f"evaluation: {err}") from err
        self.template.build()
        if self.template.is_chat and self.recipe != "sft":
            raise ValueError("template.builtin 'chat' needs recipe 'sft'")
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
        # proto3 strings have no presence: empty means "not set".
        _drop_empty(data, ("recipe", "quantization"))
        _drop_empty(data.get("training", {}), ("lr_scheduler", "optimizer"))
        _drop_empty(data.get("lora", {}), ("bias",))
        _drop_empty(data.get("quantization_options", {}), ("quant_type", "compute_dtype"))
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


def _drop_empty(data: dict, keys) -> None:
    for key in keys:
        if key in data and not data[key]:
            data.pop(key)
