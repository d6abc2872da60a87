from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Project(_message.Message):
    __slots__ = ("id", "name", "created_at", "archived_at", "status")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    created_at: int
    archived_at: int
    status: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., created_at: _Optional[int] = ..., archived_at: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class CreateProjectRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetProjectRequest(_message.Message):
    __slots__ = ("project_id",)
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    def __init__(self, project_id: _Optional[str] = ...) -> None: ...

class ListProjectsRequest(_message.Message):
    __slots__ = ("after", "limit", "include_archived")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    after: str
    limit: int
    include_archived: bool
    def __init__(self, after: _Optional[str] = ..., limit: _Optional[int] = ..., include_archived: _Optional[bool] = ...) -> None: ...

class ListProjectsResponse(_message.Message):
    __slots__ = ("projects", "has_more")
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    projects: _containers.RepeatedCompositeFieldContainer[Project]
    has_more: bool
    def __init__(self, projects: _Optional[_Iterable[_Union[Project, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class RenameProjectRequest(_message.Message):
    __slots__ = ("project_id", "name")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    name: str
    def __init__(self, project_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ArchiveProjectRequest(_message.Message):
    __slots__ = ("project_id",)
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    def __init__(self, project_id: _Optional[str] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("id", "name", "redacted_value", "value", "created_at", "last_used_at", "project_id", "service_account_id", "service_account_name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REDACTED_VALUE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    redacted_value: str
    value: str
    created_at: int
    last_used_at: int
    project_id: str
    service_account_id: str
    service_account_name: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., redacted_value: _Optional[str] = ..., value: _Optional[str] = ..., created_at: _Optional[int] = ..., last_used_at: _Optional[int] = ..., project_id: _Optional[str] = ..., service_account_id: _Optional[str] = ..., service_account_name: _Optional[str] = ...) -> None: ...

class ServiceAccount(_message.Message):
    __slots__ = ("id", "name", "role", "created_at", "project_id", "api_key")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    role: str
    created_at: int
    project_id: str
    api_key: ApiKey
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[str] = ..., created_at: _Optional[int] = ..., project_id: _Optional[str] = ..., api_key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class CreateServiceAccountRequest(_message.Message):
    __slots__ = ("project_id", "name")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    name: str
    def __init__(self, project_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GetServiceAccountRequest(_message.Message):
    __slots__ = ("project_id", "service_account_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    service_account_id: str
    def __init__(self, project_id: _Optional[str] = ..., service_account_id: _Optional[str] = ...) -> None: ...

class ListServiceAccountsRequest(_message.Message):
    __slots__ = ("project_id", "after", "limit")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    after: str
    limit: int
    def __init__(self, project_id: _Optional[str] = ..., after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListServiceAccountsResponse(_message.Message):
    __slots__ = ("service_accounts", "has_more")
    SERVICE_ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    service_accounts: _containers.RepeatedCompositeFieldContainer[ServiceAccount]
    has_more: bool
    def __init__(self, service_accounts: _Optional[_Iterable[_Union[ServiceAccount, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class DeleteServiceAccountRequest(_message.Message):
    __slots__ = ("project_id", "service_account_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    service_account_id: str
    def __init__(self, project_id: _Optional[str] = ..., service_account_id: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("project_id", "after", "limit")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    after: str
    limit: int
    def __init__(self, project_id: _Optional[str] = ..., after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("api_keys", "has_more")
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    api_keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    has_more: bool
    def __init__(self, api_keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class DeleteApiKeyRequest(_message.Message):
    __slots__ = ("project_id", "key_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    key_id: str
    def __init__(self, project_id: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class AuthenticateRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("key_id", "project_id", "project_name")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_NAME_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    project_id: str
    project_name: str
    def __init__(self, key_id: _Optional[str] = ..., project_id: _Optional[str] = ..., project_name: _Optional[str] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("id", "model", "max_requests_per_1_minute", "max_tokens_per_1_minute", "max_concurrent_jobs", "max_trained_tokens_per_1_day")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_PER_1_MINUTE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_PER_1_MINUTE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_TRAINED_TOKENS_PER_1_DAY_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    max_requests_per_1_minute: int
    max_tokens_per_1_minute: int
    max_concurrent_jobs: int
    max_trained_tokens_per_1_day: int
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., max_requests_per_1_minute: _Optional[int] = ..., max_tokens_per_1_minute: _Optional[int] = ..., max_concurrent_jobs: _Optional[int] = ..., max_trained_tokens_per_1_day: _Optional[int] = ...) -> None: ...

class ListRateLimitsRequest(_message.Message):
    __slots__ = ("project_id", "models")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, project_id: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class ListRateLimitsResponse(_message.Message):
    __slots__ = ("rate_limits",)
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    rate_limits: _containers.RepeatedCompositeFieldContainer[RateLimit]
    def __init__(self, rate_limits: _Optional[_Iterable[_Union[RateLimit, _Mapping]]] = ...) -> None: ...

class UpdateRateLimitRequest(_message.Message):
    __slots__ = ("project_id", "rate_limit")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    rate_limit: RateLimit
    def __init__(self, project_id: _Optional[str] = ..., rate_limit: _Optional[_Union[RateLimit, _Mapping]] = ...) -> None: ...

class AdmitRequestRequest(_message.Message):
    __slots__ = ("project_id", "model")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    model: str
    def __init__(self, project_id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class LimitState(_message.Message):
    __slots__ = ("limit", "remaining", "reset_s")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESET_S_FIELD_NUMBER: _ClassVar[int]
    limit: int
    remaining: int
    reset_s: float
    def __init__(self, limit: _Optional[int] = ..., remaining: _Optional[int] = ..., reset_s: _Optional[float] = ...) -> None: ...

class Admission(_message.Message):
    __slots__ = ("allowed", "requests", "tokens")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    requests: LimitState
    tokens: LimitState
    def __init__(self, allowed: _Optional[bool] = ..., requests: _Optional[_Union[LimitState, _Mapping]] = ..., tokens: _Optional[_Union[LimitState, _Mapping]] = ...) -> None: ...

class RecordUsageRequest(_message.Message):
    __slots__ = ("project_id", "model", "tokens")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    model: str
    tokens: int
    def __init__(self, project_id: _Optional[str] = ..., model: _Optional[str] = ..., tokens: _Optional[int] = ...) -> None: ...

class RecordUsageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "type", "effective_at", "project_id", "key_id", "method", "path", "status_code", "result")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    effective_at: int
    project_id: str
    key_id: str
    method: str
    path: str
    status_code: int
    result: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., effective_at: _Optional[int] = ..., project_id: _Optional[str] = ..., key_id: _Optional[str] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., status_code: _Optional[int] = ..., result: _Optional[str] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("project_ids", "types", "after", "limit")
    PROJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    project_ids: _containers.RepeatedScalarFieldContainer[str]
    types: _containers.RepeatedScalarFieldContainer[str]
    after: str
    limit: int
    def __init__(self, project_ids: _Optional[_Iterable[str]] = ..., types: _Optional[_Iterable[str]] = ..., after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "has_more")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    has_more: bool
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...
