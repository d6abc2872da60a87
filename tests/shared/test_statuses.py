"""Status words and proto values, derived from the enums: every word the stores write has
a value, and an unknown one raises instead of passing for another status."""

import pytest

from trainer_service.job_store import STATUSES
from tuneyard.statuses import EVALUATION_STATUSES, JOB_STATUSES, PAUSED, TERMINAL, VALIDATING_FILES
from tuneyard.v1 import evaluation_pb2, trainer_pb2


def test_the_words_are_the_stores_and_round_trip():
    assert JOB_STATUSES.words == set(STATUSES)
    assert EVALUATION_STATUSES.words == set(STATUSES) - {VALIDATING_FILES, PAUSED}
    assert EVALUATION_STATUSES.words > TERMINAL
    for table in (JOB_STATUSES, EVALUATION_STATUSES):
        for word in table.words:
            assert table.word(table.value(word)) == word
    assert JOB_STATUSES.value("validating_files") == trainer_pb2.VALIDATING_FILES
    assert EVALUATION_STATUSES.word(evaluation_pb2.EVALUATION_CANCELLED) == "cancelled"


def test_an_unknown_status_raises():
    with pytest.raises(ValueError, match="not a status value: 0"):
        JOB_STATUSES.word(trainer_pb2.JOB_STATUS_UNSPECIFIED)
    with pytest.raises(ValueError, match="not a status value: 99"):
        EVALUATION_STATUSES.word(99)
    with pytest.raises(ValueError, match="not a status: 'paused'"):
        EVALUATION_STATUSES.value("paused")
