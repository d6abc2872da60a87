"""The status words of jobs and evaluations, as every API shows them."""

VALIDATING_FILES = "validating_files"  # jobs only
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
PAUSED = "paused"  # jobs only
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
