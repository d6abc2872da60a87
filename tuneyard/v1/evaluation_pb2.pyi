from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EvaluationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVALUATION_STATUS_UNSPECIFIED: _ClassVar[EvaluationStatus]
    EVALUATION_QUEUED: _ClassVar[EvaluationStatus]
    EVALUATION_RUNNING: _ClassVar[EvaluationStatus]
    EVALUATION_SUCCEEDED: _ClassVar[EvaluationStatus]
    EVALUATION_FAILED: _ClassVar[EvaluationStatus]
    EVALUATION_CANCELLED: _ClassVar[EvaluationStatus]
EVALUATION_STATUS_UNSPECIFIED: EvaluationStatus
EVALUATION_QUEUED: EvaluationStatus
EVALUATION_RUNNING: EvaluationStatus
EVALUATION_SUCCEEDED: EvaluationStatus
EVALUATION_FAILED: EvaluationStatus
EVALUATION_CANCELLED: EvaluationStatus

class Check(_message.Message):
    __slots__ = ("type", "name", "value", "pattern", "fullmatch", "schema_json")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    FULLMATCH_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    type: str
    name: str
    value: str
    pattern: str
    fullmatch: bool
    schema_json: str
    def __init__(self, type: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[str] = ..., pattern: _Optional[str] = ..., fullmatch: _Optional[bool] = ..., schema_json: _Optional[str] = ...) -> None: ...

class EvaluationSpec(_message.Message):
    __slots__ = ("adapter_id", "job_id", "eval_file", "eval_file_id", "arms", "compare_adapters", "few_shot_k", "few_shot_file", "checks", "max_new_tokens", "do_sample", "temperature", "top_p", "seed", "stop", "limit")
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EVAL_FILE_FIELD_NUMBER: _ClassVar[int]
    EVAL_FILE_ID_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    COMPARE_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    FEW_SHOT_K_FIELD_NUMBER: _ClassVar[int]
    FEW_SHOT_FILE_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DO_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    job_id: str
    eval_file: str
    eval_file_id: str
    arms: _containers.RepeatedScalarFieldContainer[str]
    compare_adapters: _containers.RepeatedScalarFieldContainer[str]
    few_shot_k: int
    few_shot_file: str
    checks: _containers.RepeatedCompositeFieldContainer[Check]
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    def __init__(self, adapter_id: _Optional[str] = ..., job_id: _Optional[str] = ..., eval_file: _Optional[str] = ..., eval_file_id: _Optional[str] = ..., arms: _Optional[_Iterable[str]] = ..., compare_adapters: _Optional[_Iterable[str]] = ..., few_shot_k: _Optional[int] = ..., few_shot_file: _Optional[str] = ..., checks: _Optional[_Iterable[_Union[Check, _Mapping]]] = ..., max_new_tokens: _Optional[int] = ..., do_sample: _Optional[bool] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ...) -> None: ...

class ArmResult(_message.Message):
    __slots__ = ("name", "adapter_id", "eval_loss", "perplexity", "loss_tokens", "checks", "mean_output_tokens", "mean_output_chars", "mean_latency_s", "p50_latency_s", "tokens_per_second", "requests", "shots")
    class ChecksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    LOSS_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    MEAN_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_OUTPUT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MEAN_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    P50_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SHOTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    adapter_id: str
    eval_loss: float
    perplexity: float
    loss_tokens: int
    checks: _containers.ScalarMap[str, float]
    mean_output_tokens: float
    mean_output_chars: float
    mean_latency_s: float
    p50_latency_s: float
    tokens_per_second: float
    requests: int
    shots: int
    def __init__(self, name: _Optional[str] = ..., adapter_id: _Optional[str] = ..., eval_loss: _Optional[float] = ..., perplexity: _Optional[float] = ..., loss_tokens: _Optional[int] = ..., checks: _Optional[_Mapping[str, float]] = ..., mean_output_tokens: _Optional[float] = ..., mean_output_chars: _Optional[float] = ..., mean_latency_s: _Optional[float] = ..., p50_latency_s: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., requests: _Optional[int] = ..., shots: _Optional[int] = ...) -> None: ...

class ArmOutput(_message.Message):
    __slots__ = ("arm", "text", "checks", "latency_s", "output_tokens")
    class ChecksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ARM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    arm: str
    text: str
    checks: _containers.ScalarMap[str, float]
    latency_s: float
    output_tokens: int
    def __init__(self, arm: _Optional[str] = ..., text: _Optional[str] = ..., checks: _Optional[_Mapping[str, float]] = ..., latency_s: _Optional[float] = ..., output_tokens: _Optional[int] = ...) -> None: ...

class Example(_message.Message):
    __slots__ = ("line", "prompt", "reference", "outputs")
    LINE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    line: int
    prompt: str
    reference: str
    outputs: _containers.RepeatedCompositeFieldContainer[ArmOutput]
    def __init__(self, line: _Optional[int] = ..., prompt: _Optional[str] = ..., reference: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[ArmOutput, _Mapping]]] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("id", "status", "spec", "created_at", "started_at", "finished_at", "error", "adapter_id", "eval_source", "rows", "done_requests", "total_requests", "arms", "examples", "report_markdown", "report_html", "project")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    EVAL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DONE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    REPORT_MARKDOWN_FIELD_NUMBER: _ClassVar[int]
    REPORT_HTML_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: EvaluationStatus
    spec: EvaluationSpec
    created_at: int
    started_at: int
    finished_at: int
    error: str
    adapter_id: str
    eval_source: str
    rows: int
    done_requests: int
    total_requests: int
    arms: _containers.RepeatedCompositeFieldContainer[ArmResult]
    examples: _containers.RepeatedCompositeFieldContainer[Example]
    report_markdown: str
    report_html: str
    project: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[EvaluationStatus, str]] = ..., spec: _Optional[_Union[EvaluationSpec, _Mapping]] = ..., created_at: _Optional[int] = ..., started_at: _Optional[int] = ..., finished_at: _Optional[int] = ..., error: _Optional[str] = ..., adapter_id: _Optional[str] = ..., eval_source: _Optional[str] = ..., rows: _Optional[int] = ..., done_requests: _Optional[int] = ..., total_requests: _Optional[int] = ..., arms: _Optional[_Iterable[_Union[ArmResult, _Mapping]]] = ..., examples: _Optional[_Iterable[_Union[Example, _Mapping]]] = ..., report_markdown: _Optional[str] = ..., report_html: _Optional[str] = ..., project: _Optional[str] = ...) -> None: ...

class CreateEvaluationRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: EvaluationSpec
    def __init__(self, spec: _Optional[_Union[EvaluationSpec, _Mapping]] = ...) -> None: ...

class GetEvaluationRequest(_message.Message):
    __slots__ = ("evaluation_id",)
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    def __init__(self, evaluation_id: _Optional[str] = ...) -> None: ...

class ListEvaluationsRequest(_message.Message):
    __slots__ = ("limit", "after")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    limit: int
    after: str
    def __init__(self, limit: _Optional[int] = ..., after: _Optional[str] = ...) -> None: ...

class ListEvaluationsResponse(_message.Message):
    __slots__ = ("evaluations", "has_more")
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    evaluations: _containers.RepeatedCompositeFieldContainer[Evaluation]
    has_more: bool
    def __init__(self, evaluations: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class CancelEvaluationRequest(_message.Message):
    __slots__ = ("evaluation_id",)
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    def __init__(self, evaluation_id: _Optional[str] = ...) -> None: ...

class GetEvaluationReportRequest(_message.Message):
    __slots__ = ("evaluation_id", "format")
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    format: str
    def __init__(self, evaluation_id: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("content_type", "content")
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    content: bytes
    def __init__(self, content_type: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...
