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
from tuneyard.templates import PromptTemplate
from tuneyard.v1 import trainer_pb2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    path: str
    columns: dict[str, str] = Field(default_factory=dict)
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)


class TemplateSpec(_Strict):
    prompt: str
    response: str

    def build(self) -> PromptTemplate:
        return PromptTemplate(self.prompt, self.response)


class LoraSpec(_Strict):
    r: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=list)


class TrainingSpec(_Strict):
    max_steps: int = Field(0, ge=0, description="0: train for `epochs` instead.")
    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    batch_size: int = Field(4, ge=1, le=1024)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    max_seq_length: int = Field(512, ge=8, le=131072)
    seed: int = Field(42, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    logging_steps: int = Field(1, ge=1)


class JobSpec(_Strict):
    base_model: str = ""
    adapter_name: str
    recipe: Literal["causal_lm", "sft"] = "causal_lm"
    data: DataSpec
    template: TemplateSpec
    lora: LoraSpec = Field(default_factory=LoraSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    quantization: Literal["none", "8bit", "4bit"] = "none"

    @model_validator(mode="after")
    def _check(self):
        check_name(self.adapter_name)
        self.template.build()
        return self

    # --- conversions -------------------------------------------------------------------
    @classmethod
    def parse(cls, data: dict) -> "JobSpec":
        """Validate a plain dict; errors become one InvalidArgument naming every field."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in err.errors()
            )
            first = err.errors()[0]["loc"] if err.errors() else ()
            raise InvalidArgument(f"invalid job spec: {problems}",
                                  param=".".join(str(p) for p in first)) from err

    @classmethod
    def from_proto(cls, message: trainer_pb2.JobSpec) -> "JobSpec":
        data = json_format.MessageToDict(message, preserving_proto_field_name=True)
        # proto3 strings have no presence: empty means "not set".
        for key in ("recipe", "quantization"):
            if not data.get(key):
                data.pop(key, None)
        if not data.get("training", {}).get("lr_scheduler", "x"):
            data["training"].pop("lr_scheduler")
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
        data_path = (data.get("data") or {}).get("path")
        if data_path and not Path(data_path).is_absolute():
            data["data"]["path"] = str((path.parent / data_path).resolve())
        return cls.parse(data)
