from tuneyard.v1 import evaluation_pb2 as _evaluation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    VALIDATING_FILES: _ClassVar[JobStatus]
    QUEUED: _ClassVar[JobStatus]
    RUNNING: _ClassVar[JobStatus]
    SUCCEEDED: _ClassVar[JobStatus]
    FAILED: _ClassVar[JobStatus]
    CANCELLED: _ClassVar[JobStatus]
    PAUSED: _ClassVar[JobStatus]
JOB_STATUS_UNSPECIFIED: JobStatus
VALIDATING_FILES: JobStatus
QUEUED: JobStatus
RUNNING: JobStatus
SUCCEEDED: JobStatus
FAILED: JobStatus
CANCELLED: JobStatus
PAUSED: JobStatus

class JobSpec(_message.Message):
    __slots__ = ("base_model", "adapter_name", "recipe", "data", "template", "lora", "training", "quantization", "quantization_options", "merge", "evaluation", "dpo", "merge_dequantized", "parity_gate", "added_tokens")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    DPO_FIELD_NUMBER: _ClassVar[int]
    MERGE_DEQUANTIZED_FIELD_NUMBER: _ClassVar[int]
    PARITY_GATE_FIELD_NUMBER: _ClassVar[int]
    ADDED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    adapter_name: str
    recipe: str
    data: DataSpec
    template: TemplateSpec
    lora: LoraSpec
    training: TrainingSpec
    quantization: str
    quantization_options: QuantizationSpec
    merge: bool
    evaluation: _evaluation_pb2.EvaluationSpec
    dpo: DpoSpec
    merge_dequantized: bool
    parity_gate: ParityGateSpec
    added_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, base_model: _Optional[str] = ..., adapter_name: _Optional[str] = ..., recipe: _Optional[str] = ..., data: _Optional[_Union[DataSpec, _Mapping]] = ..., template: _Optional[_Union[TemplateSpec, _Mapping]] = ..., lora: _Optional[_Union[LoraSpec, _Mapping]] = ..., training: _Optional[_Union[TrainingSpec, _Mapping]] = ..., quantization: _Optional[str] = ..., quantization_options: _Optional[_Union[QuantizationSpec, _Mapping]] = ..., merge: _Optional[bool] = ..., evaluation: _Optional[_Union[_evaluation_pb2.EvaluationSpec, _Mapping]] = ..., dpo: _Optional[_Union[DpoSpec, _Mapping]] = ..., merge_dequantized: _Optional[bool] = ..., parity_gate: _Optional[_Union[ParityGateSpec, _Mapping]] = ..., added_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class ParityGateSpec(_message.Message):
    __slots__ = ("prompts", "tokens", "min_agreement", "min_margin", "logprob_tolerance")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MIN_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MIN_MARGIN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    prompts: int
    tokens: int
    min_agreement: float
    min_margin: float
    logprob_tolerance: float
    def __init__(self, prompts: _Optional[int] = ..., tokens: _Optional[int] = ..., min_agreement: _Optional[float] = ..., min_margin: _Optional[float] = ..., logprob_tolerance: _Optional[float] = ...) -> None: ...

class DpoSpec(_message.Message):
    __slots__ = ("beta",)
    BETA_FIELD_NUMBER: _ClassVar[int]
    beta: float
    def __init__(self, beta: _Optional[float] = ...) -> None: ...

class QuantizationSpec(_message.Message):
    __slots__ = ("quant_type", "double_quant", "compute_dtype")
    QUANT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_QUANT_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    quant_type: str
    double_quant: bool
    compute_dtype: str
    def __init__(self, quant_type: _Optional[str] = ..., double_quant: _Optional[bool] = ..., compute_dtype: _Optional[str] = ...) -> None: ...

class DataSpec(_message.Message):
    __slots__ = ("path", "columns", "eval_fraction", "dataset", "config", "split", "file_id", "eval_file_id", "eval_path")
    class ColumnsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PATH_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    EVAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    EVAL_FILE_ID_FIELD_NUMBER: _ClassVar[int]
    EVAL_PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    columns: _containers.ScalarMap[str, str]
    eval_fraction: float
    dataset: str
    config: str
    split: str
    file_id: str
    eval_file_id: str
    eval_path: str
    def __init__(self, path: _Optional[str] = ..., columns: _Optional[_Mapping[str, str]] = ..., eval_fraction: _Optional[float] = ..., dataset: _Optional[str] = ..., config: _Optional[str] = ..., split: _Optional[str] = ..., file_id: _Optional[str] = ..., eval_file_id: _Optional[str] = ..., eval_path: _Optional[str] = ...) -> None: ...

class TemplateSpec(_message.Message):
    __slots__ = ("builtin", "prompt", "response")
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    builtin: str
    prompt: str
    response: str
    def __init__(self, builtin: _Optional[str] = ..., prompt: _Optional[str] = ..., response: _Optional[str] = ...) -> None: ...

class LoraSpec(_message.Message):
    __slots__ = ("r", "alpha", "dropout", "target_modules", "bias", "use_dora", "use_rslora")
    R_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    USE_DORA_FIELD_NUMBER: _ClassVar[int]
    USE_RSLORA_FIELD_NUMBER: _ClassVar[int]
    r: int
    alpha: float
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    bias: str
    use_dora: bool
    use_rslora: bool
    def __init__(self, r: _Optional[int] = ..., alpha: _Optional[float] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ..., bias: _Optional[str] = ..., use_dora: _Optional[bool] = ..., use_rslora: _Optional[bool] = ...) -> None: ...

class TrainingSpec(_message.Message):
    __slots__ = ("max_steps", "epochs", "learning_rate", "batch_size", "gradient_accumulation_steps", "max_seq_length", "seed", "warmup_steps", "lr_scheduler", "logging_steps", "optimizer", "gradient_checkpointing", "eval_steps", "save_steps", "completion_only_loss", "packing")
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    LOGGING_STEPS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    EVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAVE_STEPS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_ONLY_LOSS_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    max_steps: int
    epochs: float
    learning_rate: float
    batch_size: int
    gradient_accumulation_steps: int
    max_seq_length: int
    seed: int
    warmup_steps: int
    lr_scheduler: str
    logging_steps: int
    optimizer: str
    gradient_checkpointing: bool
    eval_steps: int
    save_steps: int
    completion_only_loss: bool
    packing: bool
    def __init__(self, max_steps: _Optional[int] = ..., epochs: _Optional[float] = ..., learning_rate: _Optional[float] = ..., batch_size: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., max_seq_length: _Optional[int] = ..., seed: _Optional[int] = ..., warmup_steps: _Optional[int] = ..., lr_scheduler: _Optional[str] = ..., logging_steps: _Optional[int] = ..., optimizer: _Optional[str] = ..., gradient_checkpointing: _Optional[bool] = ..., eval_steps: _Optional[int] = ..., save_steps: _Optional[int] = ..., completion_only_loss: _Optional[bool] = ..., packing: _Optional[bool] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "message", "param", "line")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PARAM_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    param: str
    line: int
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., param: _Optional[str] = ..., line: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "status", "spec", "created_at", "started_at", "finished_at", "fine_tuned_model", "error", "trained_tokens", "estimated_finish", "result_files", "metadata", "project")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    FINE_TUNED_MODEL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FINISH_FIELD_NUMBER: _ClassVar[int]
    RESULT_FILES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: JobStatus
    spec: JobSpec
    created_at: int
    started_at: int
    finished_at: int
    fine_tuned_model: str
    error: JobError
    trained_tokens: int
    estimated_finish: int
    result_files: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    project: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[JobStatus, str]] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., created_at: _Optional[int] = ..., started_at: _Optional[int] = ..., finished_at: _Optional[int] = ..., fine_tuned_model: _Optional[str] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., trained_tokens: _Optional[int] = ..., estimated_finish: _Optional[int] = ..., result_files: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., project: _Optional[str] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("step", "total_steps", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "trained_tokens", "eta_seconds", "peak_memory_bytes", "mean_token_accuracy", "eval_mean_token_accuracy", "rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy", "eval_rewards_margin", "eval_rewards_accuracy")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEAN_TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EVAL_MEAN_TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    REWARDS_CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REWARDS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    REWARDS_MARGIN_FIELD_NUMBER: _ClassVar[int]
    REWARDS_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EVAL_REWARDS_MARGIN_FIELD_NUMBER: _ClassVar[int]
    EVAL_REWARDS_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    epoch: float
    loss: float
    eval_loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    trained_tokens: int
    eta_seconds: float
    peak_memory_bytes: int
    mean_token_accuracy: float
    eval_mean_token_accuracy: float
    rewards_chosen: float
    rewards_rejected: float
    rewards_margin: float
    rewards_accuracy: float
    eval_rewards_margin: float
    eval_rewards_accuracy: float
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[float] = ..., loss: _Optional[float] = ..., eval_loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., grad_norm: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., trained_tokens: _Optional[int] = ..., eta_seconds: _Optional[float] = ..., peak_memory_bytes: _Optional[int] = ..., mean_token_accuracy: _Optional[float] = ..., eval_mean_token_accuracy: _Optional[float] = ..., rewards_chosen: _Optional[float] = ..., rewards_rejected: _Optional[float] = ..., rewards_margin: _Optional[float] = ..., rewards_accuracy: _Optional[float] = ..., eval_rewards_margin: _Optional[float] = ..., eval_rewards_accuracy: _Optional[float] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("seq", "job_id", "created_at", "level", "message", "metrics")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    job_id: str
    created_at: int
    level: str
    message: str
    metrics: Metrics
    def __init__(self, seq: _Optional[int] = ..., job_id: _Optional[str] = ..., created_at: _Optional[int] = ..., level: _Optional[str] = ..., message: _Optional[str] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ...) -> None: ...

class ValidateDatasetRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ...) -> None: ...

class TokenStats(_message.Message):
    __slots__ = ("min", "mean", "p50", "p95", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: int
    mean: float
    p50: int
    p95: int
    max: int
    def __init__(self, min: _Optional[int] = ..., mean: _Optional[float] = ..., p50: _Optional[int] = ..., p95: _Optional[int] = ..., max: _Optional[int] = ...) -> None: ...

class ValidationReport(_message.Message):
    __slots__ = ("ok", "error", "base_model", "rows", "train_rows", "eval_rows", "too_long", "too_long_lines", "tokens", "warnings")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    EVAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    TOO_LONG_FIELD_NUMBER: _ClassVar[int]
    TOO_LONG_LINES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: JobError
    base_model: str
    rows: int
    train_rows: int
    eval_rows: int
    too_long: int
    too_long_lines: _containers.RepeatedScalarFieldContainer[int]
    tokens: TokenStats
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., base_model: _Optional[str] = ..., rows: _Optional[int] = ..., train_rows: _Optional[int] = ..., eval_rows: _Optional[int] = ..., too_long: _Optional[int] = ..., too_long_lines: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Union[TokenStats, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("job_id", "step", "created_at", "metrics", "published_as", "model")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    created_at: int
    metrics: Metrics
    published_as: str
    model: str
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., created_at: _Optional[int] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., published_as: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class PublishCheckpointRequest(_message.Message):
    __slots__ = ("job_id", "step")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class File(_message.Message):
    __slots__ = ("id", "bytes", "created_at", "filename", "purpose", "project")
    ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    project: str
    def __init__(self, id: _Optional[str] = ..., bytes: _Optional[int] = ..., created_at: _Optional[int] = ..., filename: _Optional[str] = ..., purpose: _Optional[str] = ..., project: _Optional[str] = ...) -> None: ...

class UploadFileRequest(_message.Message):
    __slots__ = ("filename", "purpose", "content")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    filename: str
    purpose: str
    content: bytes
    def __init__(self, filename: _Optional[str] = ..., purpose: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class GetFileRequest(_message.Message):
    __slots__ = ("file_id",)
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    def __init__(self, file_id: _Optional[str] = ...) -> None: ...

class ListFilesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListFilesResponse(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[File]
    def __init__(self, files: _Optional[_Iterable[_Union[File, _Mapping]]] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("spec", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("limit", "after", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    limit: int
    after: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, limit: _Optional[int] = ..., after: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "has_more")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    has_more: bool
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class ListJobEventsRequest(_message.Message):
    __slots__ = ("job_id", "after_seq", "limit")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    limit: int
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListJobEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[JobEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[JobEvent, _Mapping]]] = ...) -> None: ...

class GetFileContentRequest(_message.Message):
    __slots__ = ("file_id",)
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    def __init__(self, file_id: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("file", "data")
    FILE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    file: File
    data: bytes
    def __init__(self, file: _Optional[_Union[File, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class DeleteFileRequest(_message.Message):
    __slots__ = ("file_id",)
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    def __init__(self, file_id: _Optional[str] = ...) -> None: ...

class DeleteAdapterRequest(_message.Message):
    __slots__ = ("adapter_id",)
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    def __init__(self, adapter_id: _Optional[str] = ...) -> None: ...

class DeleteAdapterResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class PromoteAdapterRequest(_message.Message):
    __slots__ = ("adapter_id",)
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    def __init__(self, adapter_id: _Optional[str] = ...) -> None: ...

class PromoteAdapterResponse(_message.Message):
    __slots__ = ("promoted",)
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    promoted: str
    def __init__(self, promoted: _Optional[str] = ...) -> None: ...

class PauseJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResumeJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...
