"""Gateway configuration, from TUNEYARD_* environment variables."""

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from tuneyard.config import CommonSettings
from tuneyard.replicas import ReplicaAddresses


class GatewaySettings(CommonSettings):
    # populate_by_name: `max_adapter_label_values=` works in code beside its env alias.
    model_config = SettingsConfigDict(**CommonSettings.model_config, populate_by_name=True)

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8080, ge=0, le=65535)
    gateway_workers: int = Field(
        1,
        ge=1,
        description="Gateway processes sharing the port, each with one event loop: the "
        "HTTP and SSE work of a busy host spread over its cores. Their metrics are summed "
        "on /metrics.",
    )
    inference_addr: str = Field(
        "127.0.0.1:50052",
        description="The inference replicas: host:port, a list a:1,b:2, or dns:///name:port "
        "(one replica per address the name resolves to).",
    )
    trainer_addr: str = "127.0.0.1:50051"
    # Comma-separated bearer tokens; with none configured, every route is open.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Keys that may also create/cancel jobs and load/unload adapters.
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    request_timeout_s: float = Field(120.0, gt=0, description="Deadline of every backend call.")
    connect_timeout_s: float = Field(
        2.0, gt=0, description="How long a call may wait for a backend connection before 503."
    )
    reconnect_backoff_max_s: float = Field(
        1.0, gt=0, description="Longest pause between reconnect attempts to a backend that is down."
    )
    watch_timeout_s: float = Field(
        24 * 3600.0, gt=0, description="Deadline of a job event stream (WatchJob)."
    )
    replica_refresh_s: float = Field(
        5.0,
        gt=0,
        description="Several inference replicas: how often to re-resolve a dns:/// address "
        "and ask each replica which adapters it has loaded.",
    )
    replica_affinity_slack: int = Field(
        4,
        ge=0,
        description="Calls in flight a replica with the adapter loaded may have beyond the "
        "least busy replica and still be preferred.",
    )
    console: bool = Field(
        True,
        description="Serve the web console at /console (static files that call this "
        "gateway's API from the browser).",
    )
    max_adapter_label_values: int = Field(
        20,
        ge=1,
        validation_alias="TUNEYARD_METRICS_MAX_ADAPTERS",
        description="Distinct `adapter` label values in metrics; others count as 'other'.",
    )

    @field_validator("inference_addr")
    @classmethod
    def _replicas(cls, value: str) -> str:
        """`host:port`, `a:1,b:2` or `dns:///name:port` (see tuneyard.replicas)."""
        ReplicaAddresses(value)  # raises ValueError naming what is wrong
        return value

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value):
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value
