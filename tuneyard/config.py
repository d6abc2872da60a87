"""Settings shared by every service. Each service extends `CommonSettings` with its own
fields in its own `settings.py`; values come from environment variables."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path.home() / ".cache" / "tuneyard"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEYARD_", extra="ignore")

    home: Path = Field(DEFAULT_HOME, description="Root for the model cache, adapters and jobs.")
    adapters_dir: Path | None = Field(None, description="Shared adapters volume.")
    base_model: str = Field("", description="Hub id or local folder of the base model.")
    served_model_name: str = Field(
        "",
        description="The base model's name in answers (OpenAI `model`, TGI `model_id`); "
        "default: the hub id, or a local folder's name. Its path is never shown.",
    )
    log_level: str = "INFO"

    @property
    def resolved_adapters_dir(self) -> Path:
        return self.adapters_dir or self.home / "adapters"

    @property
    def resolved_base_model(self) -> str:
        # Imported late: the embedded model module pulls in transformers.
        from tuneyard.embedded_model import embedded_model_dir

        return self.base_model or str(embedded_model_dir(self.home))
