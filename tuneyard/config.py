"""Settings shared by every service. Each service extends `CommonSettings` with its own
fields in its own `settings.py`; values come from environment variables."""

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tuneyard.adapter_store import DEFAULT_MODE, check_mode
from tuneyard.embedded_model import embedded_model_dir

DEFAULT_HOME = Path.home() / ".cache" / "tuneyard"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEYARD_", extra="ignore")

    home: Path = Field(DEFAULT_HOME, description="Root for the model cache, adapters and jobs.")
    adapters_dir: Path | None = Field(None, description="Shared adapters volume.")
    adapters_mode: int = Field(
        DEFAULT_MODE,
        description="Mode of published adapter folders, octal: 0755 readable by all, 0750 by "
        "the group only; their files get it without the execute bits (0644, 0640).",
    )
    base_model: str = Field("", description="Hub id or local folder of the base model.")
    served_model_name: str = Field(
        "",
        description="The base model's name in answers (OpenAI `model`, TGI `model_id`); "
        "default: the hub id, or a local folder's name. Its path is never shown.",
    )
    log_level: str = "INFO"

    @field_validator("adapters_mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: int | str) -> int:
        return check_mode(value)

    @property
    def resolved_adapters_dir(self) -> Path:
        return self.adapters_dir or self.home / "adapters"

    @property
    def resolved_base_model(self) -> str:
        return self.base_model or str(embedded_model_dir(self.home))
