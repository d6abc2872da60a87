import pytest

from trainer_service.job_store import JobError, JobStore
from tuneyard.errors import NotFound
from tuneyard.jobspec import JobSpec
from tuneyard.statuses import FAILED, QUEUED, RUNNING, VALIDATING_FILES

SPEC = JobSpec(adapter_name="a", data={"path": "/data/a.jsonl"}, template={"builtin": "alpaca"})


def test_job_round_trip_and_reopen(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    job = store.create_job(SPEC)
    assert job.id.startswith("ftjob-") and job.status == VALIDATING_FILES
    store.update(
        job.id,
        status=FAILED,
        finished_at=5.0,
        trained_tokens=42,
        result_files=["/x/loss.png"],
        fine_tuned_model="a@1",
        error=JobError("missing_column", "line 3 has no column 'email'", "data", 3),
    )
    first = store.add_event(job.id, "hello")
    second = store.add_event(job.id, "step 1/2", metrics={"step": 1, "loss": 2.5})
    assert second.seq > first.seq
    store.close()

    reopened = JobStore(tmp_path / "jobs.db")
    got = reopened.get_job(job.id)
    assert got.status == FAILED and got.terminal
    assert got.spec == SPEC  # typed, as it went in
    assert got.trained_tokens == 42 and got.finished_at == 5.0
    assert got.result_files == ["/x/loss.png"] and got.fine_tuned_model == "a@1"
    assert got.error == JobError("missing_column", "line 3 has no column 'email'", "data", 3)
    events = reopened.events(job.id)
    assert [e.message for e in events] == ["hello", "step 1/2"]
    assert events[1].metrics == {"step": 1, "loss": 2.5} and events[0].metrics is None
    assert [e.message for e in reopened.events(job.id, after_seq=first.seq)] == ["step 1/2"]
    assert len(reopened.events(job.id, limit=1)) == 1
    # Sequence numbers keep growing across a reopen.
    assert reopened.add_event(job.id, "again").seq > second.seq


def test_list_pagination_status_queries_and_counts(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    ids = [store.create_job(SPEC).id for i in range(5)]
    store.update(ids[1], status=QUEUED)
    store.update(ids[3], status=QUEUED)
    store.update(ids[4], status=RUNNING)

    page, more = store.list_jobs(limit=2)
    assert [j.id for j in page] == [ids[4], ids[3]] and more
    page, more = store.list_jobs(limit=2, after=ids[3])
    assert [j.id for j in page] == [ids[2], ids[1]] and more
    page, more = store.list_jobs(limit=2, after=ids[1])
    assert [j.id for j in page] == [ids[0]] and not more

    assert [j.id for j in store.jobs_with_status(QUEUED)] == [ids[1], ids[3]]
    counts = store.count_by_status()
    assert counts[QUEUED] == 2 and counts[RUNNING] == 1 and counts[VALIDATING_FILES] == 2
    assert counts["succeeded"] == 0


def test_unknown_job_is_not_found(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    with pytest.raises(NotFound, match="ftjob-nope"):
        store.get_job("ftjob-nope")
    with pytest.raises(NotFound):
        store.update("ftjob-nope", status=QUEUED)
    with pytest.raises(NotFound):
        store.list_jobs(after="ftjob-nope")
    with pytest.raises(ValueError, match="spec"):
        store.update(store.create_job(SPEC).id, spec={})


def test_metadata_is_stored_and_filters_the_list(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    tagged = store.create_job(SPEC, metadata={"team": "mail", "run": "1"})
    other = store.create_job(SPEC, metadata={"team": "mail", "run": "2"})
    plain = store.create_job(SPEC)
    assert store.get_job(tagged.id).metadata == {"team": "mail", "run": "1"}
    assert store.get_job(plain.id).metadata == {}
    ids = lambda **m: [j.id for j in store.list_jobs(metadata=m)[0]]  # noqa: E731
    assert ids(team="mail") == [other.id, tagged.id]
    assert ids(team="mail", run="1") == [tagged.id]  # every key must match
    assert ids(team="x") == [] and len(ids()) == 3


def test_a_store_from_before_metadata_is_upgraded(tmp_path):
    import sqlite3

    store = JobStore(tmp_path / "jobs.db")
    job = store.create_job(SPEC)
    store.close()
    db = sqlite3.connect(tmp_path / "jobs.db")
    db.execute("ALTER TABLE jobs DROP COLUMN metadata")
    db.commit()
    db.close()
    assert JobStore(tmp_path / "jobs.db").get_job(job.id).metadata == {}


def test_a_project_s_jobs_are_its_own_and_count_against_its_limits(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    ours = store.create_job(SPEC, project="proj_0123456789abcdef")
    theirs = store.create_job(SPEC, status=QUEUED)
    assert theirs.project == "proj_default"
    assert store.get_job(ours.id, "proj_0123456789abcdef").id == ours.id
    with pytest.raises(NotFound):
        store.get_job(ours.id, "proj_default")
    assert [j.id for j in store.list_jobs(project="proj_0123456789abcdef")[0]] == [ours.id]
    assert {j.id for j in store.list_jobs()[0]} == {ours.id, theirs.id}
    with pytest.raises(NotFound):  # a page after another project's job
        store.list_jobs(after=theirs.id, project="proj_0123456789abcdef")

    assert store.unended_count("proj_0123456789abcdef") == 1
    store.update(ours.id, status=FAILED, finished_at=1000.0, trained_tokens=50)
    assert store.unended_count("proj_0123456789abcdef") == 0
    running = store.create_job(SPEC, status=RUNNING, project="proj_0123456789abcdef")
    store.update(running.id, trained_tokens=7)  # still running: it counts
    assert store.trained_tokens_since("proj_0123456789abcdef", since=500.0) == 57
    assert store.trained_tokens_since("proj_0123456789abcdef", since=2000.0) == 7
    assert store.trained_tokens_since("proj_default", since=0.0) == 0


def test_a_store_from_before_projects_gives_its_jobs_to_the_default_project(tmp_path):
    import sqlite3

    path = tmp_path / "jobs.db"
    store = JobStore(path)
    job = store.create_job(SPEC)
    store.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE jobs DROP COLUMN project")
    db.commit()
    db.close()
    reopened = JobStore(path)
    assert reopened.get_job(job.id, "proj_default").project == "proj_default"
    reopened.close()
