"""The trainer's project store and audit log, without servers: keys kept hashed, deleted and
archived keys refused, pages, the rate limits' window, and an audit table that refuses to
be rewritten."""

import sqlite3

import pytest

from trainer_service.audit_log import AuditLog
from trainer_service.project_store import (
    FINE_TUNING_LIMIT,
    ProjectStore,
    Unauthenticated,
    key_secret,
    rate_limit_id,
)
from tuneyard.errors import InvalidArgument, NotFound
from tuneyard.projects import DEFAULT_PROJECT

pytestmark = pytest.mark.projects
MODEL = "/models/SmolLM2-135M"


@pytest.fixture
def store(tmp_path):
    store = ProjectStore(tmp_path / "projects.db", b"server-secret", window_s=60)
    yield store
    store.close()


def test_the_default_project_is_there_and_cannot_be_archived(store):
    assert store.get_project(DEFAULT_PROJECT).status == "active"
    with pytest.raises(InvalidArgument) as refused:
        store.archive_project(DEFAULT_PROJECT)
    assert refused.value.param == "project_id"


def test_a_key_is_stored_as_its_hmac_only_and_authenticates_to_its_project(store, tmp_path):
    project = store.create_project("team a")
    account = store.create_service_account(project.id, "ci")
    value = account.api_key.value
    assert value.startswith("sk-proj-") and len(value) > 40
    key, found = store.authenticate(value)
    assert (key.id, found.id) == (account.api_key.id, project.id)
    assert key.value == "" and key.redacted_value.endswith(value[-4:])
    assert value not in key.redacted_value
    # Nowhere on disk: not in the database, its WAL or anything beside them.
    for path in tmp_path.iterdir():
        assert value.encode() not in path.read_bytes(), path
    # Listing shows the redacted value; the last use is recorded.
    listed, more = store.list_api_keys(project.id)
    assert [k.id for k in listed] == [key.id] and not more and listed[0].last_used_at
    assert all(k.value == "" for k in listed)


def test_another_secret_does_not_verify_the_same_key(tmp_path):
    first = ProjectStore(tmp_path / "p.db", b"one")
    value = first.create_service_account(first.create_project("a").id, "x").api_key.value
    first.close()
    second = ProjectStore(tmp_path / "p.db", b"two")
    with pytest.raises(Unauthenticated):
        second.authenticate(value)
    second.close()


def test_deleted_keys_and_archived_projects_do_not_authenticate(store):
    project = store.create_project("a")
    one = store.create_service_account(project.id, "one")
    two = store.create_service_account(project.id, "two")
    store.delete_api_key(project.id, one.api_key.id)
    with pytest.raises(Unauthenticated, match="invalid API key"):
        store.authenticate(one.api_key.value)
    store.authenticate(two.api_key.value)
    store.delete_service_account(project.id, two.id)  # its key with it
    with pytest.raises(Unauthenticated):
        store.authenticate(two.api_key.value)
    three = store.create_service_account(project.id, "three")
    store.archive_project(project.id)
    with pytest.raises(Unauthenticated, match="archived"):
        store.authenticate(three.api_key.value)
    with pytest.raises(InvalidArgument, match="archived"):
        store.create_service_account(project.id, "four")
    with pytest.raises(Unauthenticated):
        store.authenticate("sk-proj-never-made")


def test_another_project_s_key_or_account_is_not_found(store):
    a, b = store.create_project("a"), store.create_project("b")
    account = store.create_service_account(a.id, "x")
    with pytest.raises(NotFound):
        store.delete_api_key(b.id, account.api_key.id)
    with pytest.raises(NotFound):
        store.get_service_account(b.id, account.id)
    with pytest.raises(NotFound):
        store.get_project("proj_0000000000000000")


def test_projects_page_oldest_first_and_archived_ones_on_request(store):
    made = [store.create_project(f"p{i}") for i in range(3)]
    first, more = store.list_projects(limit=2)
    assert [p.id for p in first] == [DEFAULT_PROJECT, made[0].id] and more
    rest, more = store.list_projects(after=first[-1].id, limit=2)
    assert [p.id for p in rest] == [made[1].id, made[2].id] and not more
    store.archive_project(made[1].id)
    assert made[1].id not in [p.id for p in store.list_projects(limit=10)[0]]
    assert made[1].id in [p.id for p in store.list_projects(limit=10, include_archived=True)[0]]
    with pytest.raises(InvalidArgument) as refused:
        store.list_projects(after="proj_nope")
    assert refused.value.param == "after"


@pytest.mark.parametrize("name", ["", " ", "x" * 129, "a\nb"])
def test_a_bad_name_is_refused_naming_the_field(store, name):
    with pytest.raises(InvalidArgument) as refused:
        store.create_project(name)
    assert refused.value.param == "name"


def test_requests_are_admitted_up_to_the_limit_and_again_in_the_next_window(store):
    project = store.create_project("a").id
    assert store.admit(project, MODEL, now=0).requests is None  # no limit set: no state
    store.update_rate_limit(
        project, rate_limit_id(MODEL), [MODEL], {"max_requests_per_1_minute": 2}
    )
    start = 600.0
    first = store.admit(project, MODEL, now=start + 1)
    assert first.allowed and first.requests.remaining == 1 and first.requests.reset_s == 59
    assert store.admit(project, MODEL, now=start + 2).allowed
    refused = store.admit(project, MODEL, now=start + 30)
    assert not refused.allowed and refused.requests.remaining == 0
    assert refused.requests.reset_s == 30 and refused.tokens is None
    assert store.admit(project, MODEL, now=start + 60).allowed  # the next minute
    # Another project has its own count.
    other = store.create_project("b").id
    assert store.admit(other, MODEL, now=start + 30).allowed


def test_tokens_used_count_against_the_token_limit(store):
    project = store.create_project("a").id
    store.update_rate_limit(
        project, rate_limit_id(MODEL), [MODEL], {"max_tokens_per_1_minute": 100}
    )
    assert store.admit(project, MODEL, now=0).tokens.remaining == 100
    store.record_usage(project, MODEL, 100, now=1)
    refused = store.admit(project, MODEL, now=2)
    assert not refused.allowed and refused.tokens.remaining == 0
    assert store.admit(project, MODEL, now=61).allowed
    # 0 removes the limit.
    store.update_rate_limit(project, rate_limit_id(MODEL), [MODEL], {"max_tokens_per_1_minute": 0})
    store.record_usage(project, MODEL, 10_000, now=62)
    assert store.admit(project, MODEL, now=63).allowed


def test_rate_limits_list_each_model_then_fine_tuning_and_refuse_unknown_fields(store):
    project = store.create_project("a").id
    limits = store.rate_limits(project, [MODEL])
    assert [x.id for x in limits] == ["rl-SmolLM2-135M", FINE_TUNING_LIMIT]
    updated = store.update_rate_limit(
        project, FINE_TUNING_LIMIT, [MODEL], {"max_concurrent_jobs": 1}
    )
    assert updated.max_concurrent_jobs == 1 and updated.max_trained_tokens_per_1_day is None
    with pytest.raises(InvalidArgument) as refused:
        store.update_rate_limit(project, FINE_TUNING_LIMIT, [MODEL], {"max_tokens_per_1_minute": 1})
    assert refused.value.param == "max_tokens_per_1_minute"
    with pytest.raises(NotFound):
        store.update_rate_limit(project, "rl-gpt-4o", [MODEL], {"max_requests_per_1_minute": 1})


def test_the_key_secret_is_made_once_and_private(tmp_path):
    path = tmp_path / "trainer" / "key-hash-secret"
    secret = key_secret(path)
    assert len(secret) == 32 and key_secret(path) == secret
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_audit_log_is_append_only_and_pages_newest_first(tmp_path):
    log = AuditLog(tmp_path / "audit.db")
    events = [
        log.record("file.created", "proj_a", "key_1", "POST", "/v1/files", 200),
        log.record("fine_tuning.job.cancelled", "proj_b", "key_2", "POST", "/x", 404),
        log.record("file.deleted", "proj_a", "key_1", "DELETE", "/v1/files/f", 200),
    ]
    assert events[1].result == "failure" and events[0].result == "success"
    page, more = log.list(limit=2)
    assert [e.id for e in page] == [events[2].id, events[1].id] and more
    assert [e.id for e in log.list(after=page[-1].id)[0]] == [events[0].id]
    assert [e.id for e in log.list(project_ids=["proj_a"], types=["file.deleted"])[0]] == [
        events[2].id
    ]
    db = sqlite3.connect(tmp_path / "audit.db")
    for statement in ("UPDATE audit_events SET result = 'success'", "DELETE FROM audit_events"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(statement)
    db.close()
    log.close()
