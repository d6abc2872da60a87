"""The journal: the only writer of a job's status, fields and events."""

import threading
import time

import pytest

from tests.trainer.test_job_store import SPEC
from trainer_service.job_store import JobError, JobStore
from trainer_service.journal import TRANSITIONS, IllegalTransition, JobJournal, StatusChanged
from tuneyard.statuses import (
    CANCELLED,
    FAILED,
    PAUSED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    VALIDATING_FILES,
)


@pytest.fixture
def journal(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    yield JobJournal(store)
    store.close()


def test_a_transition_writes_its_event_then_the_status_and_its_times(journal):
    job = journal.store.create_job(SPEC)
    journal.transition(job.id, QUEUED, "queued")
    running = journal.transition(job.id, RUNNING, "started")
    assert running.status == RUNNING and running.started_at > 0 and running.finished_at == 0
    journal.progress(job.id, estimated_finish=123.0, trained_tokens=7)
    error = JobError("worker_failed", "it broke", "data", 3)
    failed = journal.transition(job.id, FAILED, "it broke", error=error)
    assert failed.finished_at > 0 and failed.estimated_finish == 0 and failed.error == error
    assert failed.trained_tokens == 7
    events = journal.store.events(job.id)
    assert [(e.level, e.message) for e in events] == [
        ("info", "queued"),
        ("info", "started"),
        ("error", "it broke"),
    ]


def test_only_the_table_s_transitions_are_allowed(journal):
    for start, allowed in TRANSITIONS.items():
        for status in TRANSITIONS:
            job = journal.store.create_job(SPEC, status=start)
            if status in allowed:
                assert journal.transition(job.id, status, "x").status == status
            else:
                with pytest.raises(IllegalTransition, match=f"{start} -> {status}"):
                    journal.transition(job.id, status, "x")
                assert journal.store.get_job(job.id).status == start
                assert journal.store.events(job.id) == []  # nothing half-written
    assert TRANSITIONS[SUCCEEDED] == TRANSITIONS[CANCELLED] == frozenset()
    assert CANCELLED in TRANSITIONS[VALIDATING_FILES] | TRANSITIONS[QUEUED]


def test_a_transition_is_a_compare_and_set(journal):
    """Two writers that both read `running`: the second's write finds the status moved
    on and writes nothing, neither the status nor its event."""
    job = journal.store.create_job(SPEC, status=RUNNING)
    assert journal.transition(job.id, CANCELLED, "cancelled", expected=RUNNING).status == CANCELLED
    assert journal.transition(job.id, FAILED, "it broke", expected=RUNNING) is None
    other = journal.store.create_job(SPEC, status=RUNNING)
    read = journal.store.get_job

    def read_then_another_writer(job_id):
        journal.store.get_job = read
        seen = read(job_id)
        journal.store.update(job_id, status=PAUSED)
        return seen

    journal.store.get_job = read_then_another_writer
    try:
        with pytest.raises(StatusChanged, match="no longer running, not moved to failed"):
            journal.transition(other.id, FAILED, "it broke")
    finally:
        journal.store.get_job = read
    assert read(job.id).status == CANCELLED and read(other.id).status == PAUSED
    assert [e.message for e in journal.store.events(job.id)] == ["cancelled"]
    assert journal.store.events(other.id) == []


def test_progress_never_writes_the_status(journal):
    job = journal.store.create_job(SPEC)
    with pytest.raises(ValueError, match="status"):
        journal.progress(job.id, status=SUCCEEDED)
    with pytest.raises(ValueError, match="result_files"):
        journal.transition(job.id, QUEUED, "x", result_files=[])


def test_every_write_wakes_a_watcher(journal):
    job = journal.store.create_job(SPEC)
    for write in (
        lambda: journal.event(job.id, "hello"),
        lambda: journal.progress(job.id, trained_tokens=1),
        lambda: journal.add_result_files(job.id, ["/r/report.html"]),
        lambda: journal.transition(job.id, CANCELLED, "cancelled"),
    ):
        seen, woke = journal.version, []
        watcher = threading.Thread(
            target=lambda seen, woke: woke.append(journal.wait_for_change(seen, 30)),
            args=(seen, woke),
        )
        started = time.monotonic()
        watcher.start()
        write()
        watcher.join(30)
        assert woke and woke[0] > seen and time.monotonic() - started < 10  # woken, not timed out
    assert journal.store.get_job(job.id).result_files == ["/r/report.html"]


def test_a_followed_job_is_settled_only_when_its_follow_ups_reported(journal):
    job = journal.store.create_job(SPEC, status=RUNNING)
    journal.follow(job.id)
    done = journal.transition(job.id, SUCCEEDED, "succeeded")
    assert done.terminal and not journal.settled(done)
    journal.follow(job.id)
    journal.followed(job.id)
    assert not journal.settled(done)
    seen = journal.version
    journal.followed(job.id)
    assert journal.settled(done) and journal.version > seen  # a watch wakes to end
    assert not journal.settled(journal.store.create_job(SPEC))  # not terminal
