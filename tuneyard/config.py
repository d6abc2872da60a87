"""Settings shared by every service. Each service extends `CommonSettings` with its own
fields in its own `settings.py`; values come from environment variables."""

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tuneyard.adapter_store import DEFAULT_MODE, check_mode
from tuneyard.embedded_model import embedded_model_dir

DEFAULT_HOME = Path.home() / ".cache" / "tuneyard"


class ServiceTokenError(Exception):
    """A service token setting that cannot be used. Not a ValueError on purpose: pydantic
    would wrap that with the input it was given, and this input is a secret."""


def split_tokens(text: str) -> list[str]:
    """The tokens of TUNEYARD_SERVICE_TOKENS or of its file: separated by commas or line
    breaks, blanks around them and empty entries dropped."""
    return [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]


class CommonSettings(BaseSettings):
    # A settings error names the field and what is wrong with it, never the value given
    # (pydantic would print it, and whole inputs for model-level errors: tokens, keys).
    model_config = SettingsConfigDict(
        env_prefix="TUNEYARD_", extra="ignore", hide_input_in_errors=True
    )

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
    service_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated tokens the trainer's and the inference service's gRPC "
        "ports accept (all of them: rotation); their clients send the first. None (and no "
        "file) = those ports take every call.",
    )
    service_tokens_file: Path | None = Field(
        None,
        description="A file of service tokens (one a line, or comma-separated), read at start "
        "when TUNEYARD_SERVICE_TOKENS is empty: a mounted secret.",
    )

    @field_validator("adapters_mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: int | str) -> int:
        return check_mode(value)

    @field_validator("service_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value):
        return split_tokens(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _service_tokens(self):
        if not self.service_tokens and self.service_tokens_file:
            path = self.service_tokens_file
            try:
                text = path.read_text()
            except OSError as err:
                raise ServiceTokenError(
                    f"TUNEYARD_SERVICE_TOKENS_FILE {path}: {err.strerror or err}"
                ) from None
            self.service_tokens = [SecretStr(t) for t in split_tokens(text)]
            if not self.service_tokens:
                raise ServiceTokenError(f"TUNEYARD_SERVICE_TOKENS_FILE {path} holds no token")
        for number, token in enumerate(self.service_tokens, 1):
            value = token.get_secret_value()
            # What a gRPC metadata value can carry after "Bearer ".
            if not (value.isascii() and value.isprintable()) or " " in value:
                raise ServiceTokenError(
                    f"service token {number} has a space or a character that is not "
                    "printable ASCII: use letters, digits and -._~+/= (secrets.token_urlsafe)"
                )
        return self

    @property
    def resolved_adapters_dir(self) -> Path:
        return self.adapters_dir or self.home / "adapters"

    @property
    def resolved_base_model(self) -> str:
        return self.base_model or str(embedded_model_dir(self.home))
