"""The status words of jobs and evaluations, as every API shows them, and their proto
enum values, derived from the enums (JobStatus, EvaluationStatus): an unknown value or
word raises rather than turn into some other status."""

from tuneyard.v1 import evaluation_pb2, trainer_pb2

VALIDATING_FILES = "validating_files"  # jobs only
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
PAUSED = "paused"  # jobs only
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


class StatusWords:
    """The words of one proto status enum (its value names, lower case, less a prefix)."""

    def __init__(self, enum, prefix: str = ""):
        values = [v for v in enum.DESCRIPTOR.values if v.number]  # not UNSPECIFIED
        self._words = {v.number: v.name.removeprefix(prefix).lower() for v in values}
        self._values = {word: number for number, word in self._words.items()}

    @property
    def words(self) -> frozenset[str]:
        return frozenset(self._values)

    def word(self, value: int) -> str:
        try:
            return self._words[value]
        except KeyError:
            raise ValueError(f"not a status value: {value}") from None

    def value(self, word: str) -> int:
        try:
            return self._values[word]
        except KeyError:
            raise ValueError(f"not a status: {word!r}") from None


JOB_STATUSES = StatusWords(trainer_pb2.JobStatus)
EVALUATION_STATUSES = StatusWords(evaluation_pb2.EvaluationStatus, prefix="EVALUATION_")
