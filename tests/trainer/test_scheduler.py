"""The job lifecycle with the real LocalExecutor, real workers and a tiny model."""

import json
import os
import signal

import psutil
import pytest

from tests.trainer.conftest import make_spec, wait_until
from trainer_service.executors.local import LocalExecutor
from trainer_service.job_store import JobStore
from trainer_service.journal import JobJournal
from trainer_service.metrics import TrainerMetrics
from trainer_service.scheduler import JobScheduler
from tuneyard.adapter_store import AdapterStore
from tuneyard.statuses import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, VALIDATING_FILES

LONG = {"max_steps": 2000}  # long enough to be caught running


@pytest.fixture
def make_scheduler(settings):
    made = []

    def make(**overrides):
        current = settings.model_copy(update=overrides)
        store = JobStore(current.resolved_trainer_db)
        journal = JobJournal(store, TrainerMetrics(store))
        scheduler = JobScheduler(current, journal, LocalExecutor(current, kill_grace_s=5))
        scheduler.start()
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close()
        scheduler.store.close()


def wait_status(scheduler, job_id, *wanted, timeout=120):
    return wait_until(
        lambda: scheduler.get(job_id).status in wanted and scheduler.get(job_id), timeout=timeout
    )


def wait_training(scheduler, job_id):
    """Until the worker reported its first step."""
    wait_until(lambda: any(e.metrics for e in scheduler.store.events(job_id)), timeout=120)


def worker_pids(job_id):
    return [p for p in psutil.Process().children(recursive=True) if job_id in " ".join(p.cmdline())]


def published(settings, name="emails"):
    return AdapterStore(settings.resolved_adapters_dir).versions(name)


def staging_left(settings, name="emails"):
    folder = settings.resolved_adapters_dir / name
    return [p for p in folder.iterdir() if p.name.startswith(".")] if folder.exists() else []


@pytest.mark.slow
def test_job_runs_to_succeeded(make_scheduler, settings, tiny_llama, email_jsonl):
    scheduler = make_scheduler()
    job = scheduler.create(make_spec(tiny_llama, email_jsonl))
    assert job.status == VALIDATING_FILES
    seen = set()
    done = wait_until(
        lambda: (
            (seen.add(scheduler.get(job.id).status) or scheduler.get(job.id).terminal)
            and scheduler.get(job.id)
        )
    )
    assert done.status == SUCCEEDED, done.error
    assert RUNNING in seen
    assert done.fine_tuned_model == "emails@1" and published(settings)[0].id == "emails@1"
    assert done.trained_tokens > 0 and done.started_at >= done.created_at
    assert done.finished_at >= done.started_at and done.error is None
    # Result files are file ids, as OpenAI's: the results CSV, then the loss curve's copy.
    csv_file, curve = done.result_files
    assert scheduler.files.get(csv_file).filename.endswith("-results.csv")
    assert scheduler.files.get(curve).filename == "loss_curve.png"
    assert scheduler.files.path(curve).read_bytes()[:4] == b"\x89PNG"

    messages = [e.message for e in scheduler.store.events(job.id)]
    assert messages[0].startswith("job created")
    assert any(m.startswith("validated 12 rows") and m.endswith("queued") for m in messages)
    assert "job started" in messages and messages[-1] == "succeeded: published emails@1"
    metrics = [e.metrics for e in scheduler.store.events(job.id) if e.metrics]
    assert metrics[-1]["step"] == 2 and metrics[-1]["total_steps"] == 2
    assert scheduler.journal.metrics.jobs_finished.labels(SUCCEEDED)._value.get() == 1
    # The spec the worker ran is kept with the job's outputs.
    workdir = settings.resolved_trainer_workdir / job.id
    assert json.loads((workdir / "spec.json").read_text())["adapter_name"] == "emails"
    assert (workdir / "worker.log").is_file()


def test_validation_failure_fails_the_job(make_scheduler, tiny_llama, tmp_path):
    scheduler = make_scheduler()
    job = scheduler.create(make_spec(tiny_llama, tmp_path / "missing.jsonl"))
    done = wait_status(scheduler, job.id, FAILED, timeout=30)
    assert done.error.code == "invalid_file" and done.error.param == "data.path"
    assert "missing.jsonl does not exist" in done.error.message
    assert scheduler.store.events(job.id)[-1].level == "error"
    assert done.started_at == 0


@pytest.mark.slow
def test_cancel_queued_then_running(make_scheduler, settings, tiny_llama, email_jsonl):
    scheduler = make_scheduler(max_concurrent_jobs=1)
    first = scheduler.create(make_spec(tiny_llama, email_jsonl, training=LONG))
    wait_status(scheduler, first.id, RUNNING)
    second = scheduler.create(make_spec(tiny_llama, email_jsonl))
    wait_status(scheduler, second.id, QUEUED, timeout=30)

    # Queued: cancelled at once, and never started.
    cancelled = scheduler.cancel(second.id)
    assert cancelled.status == CANCELLED and cancelled.started_at == 0

    # Running: stopped at a step boundary, ends cancelled, publishes nothing.
    wait_training(scheduler, first.id)
    assert worker_pids(first.id)
    scheduler.cancel(first.id)
    done = wait_status(scheduler, first.id, CANCELLED, FAILED, SUCCEEDED, timeout=60)
    assert done.status == CANCELLED and done.error is None and not done.fine_tuned_model
    assert published(settings) == [] and staging_left(settings) == []
    assert not worker_pids(first.id)
    messages = [e.message for e in scheduler.store.events(first.id)]
    assert "cancelled: stopped without publishing" in messages  # said by the worker itself

    # A finished job is returned unchanged.
    assert scheduler.cancel(first.id).status == CANCELLED
    assert scheduler.get(second.id).status == CANCELLED


@pytest.mark.slow
def test_worker_killed_fails_the_job_with_reason(make_scheduler, settings, tiny_llama, email_jsonl):
    scheduler = make_scheduler()
    job = scheduler.create(make_spec(tiny_llama, email_jsonl, training=LONG))
    wait_training(scheduler, job.id)
    for process in worker_pids(job.id):
        os.kill(process.pid, signal.SIGKILL)
    done = wait_status(scheduler, job.id, FAILED, CANCELLED, SUCCEEDED, timeout=60)
    assert done.status == FAILED and done.error.code == "worker_failed"
    assert "killed by SIGKILL" in done.error.message
    assert "no checkpoint to resume from" in done.error.message  # save_steps is 0
    assert published(settings) == []


def test_restart_recovery(settings, tiny_llama, email_jsonl, tmp_path, make_scheduler):
    store = JobStore(settings.resolved_trainer_db)
    spec = make_spec(tiny_llama, email_jsonl)
    lost = store.create_job(spec, status=RUNNING)
    revalidated = store.create_job(
        make_spec(tiny_llama, tmp_path / "gone.jsonl"), status=VALIDATING_FILES
    )
    requeued = store.create_job(spec, status=QUEUED)
    store.close()

    scheduler = make_scheduler()
    job = scheduler.get(lost.id)
    assert job.status == FAILED and job.error.code == "worker_lost"
    assert "restarted" in job.error.message
    assert wait_status(scheduler, revalidated.id, FAILED, timeout=30).error.code == "invalid_file"
    # The queued job is picked up again; stop it right away to keep the test short.
    wait_status(scheduler, requeued.id, RUNNING, timeout=30)
    scheduler.cancel(requeued.id)
    assert wait_status(scheduler, requeued.id, CANCELLED, FAILED, timeout=60).status == CANCELLED


def test_running_jobs_export_loss_and_step_until_they_end(tmp_path):
    from prometheus_client import generate_latest

    from trainer_service.job_store import JobStore

    metrics = TrainerMetrics(JobStore(tmp_path / "jobs.db"))
    metrics.job_progress("ftjob-a", {"step": 3, "loss": 2.5, "tokens_per_second": 100})
    metrics.job_progress("ftjob-b", {"step": 1, "tokens_per_second": 50, "lr": "n/a"})
    metrics.job_progress("ftjob-a", {"step": 4, "loss": 2.25})
    text = generate_latest(metrics.registry).decode()
    assert 'tuneyard_trainer_job_loss{job="ftjob-a"} 2.25' in text
    assert 'tuneyard_trainer_job_step{job="ftjob-a"} 4.0' in text
    assert 'tuneyard_trainer_job_step{job="ftjob-b"} 1.0' in text
    assert 'job_loss{job="ftjob-b"}' not in text  # no loss reported yet
    assert "tuneyard_trainer_tokens_per_second 150.0" in text  # a's last known rate kept
    metrics.job_finished("ftjob-a", "succeeded")
    text = generate_latest(metrics.registry).decode()
    assert 'job="ftjob-a"' not in text
    assert "tuneyard_trainer_tokens_per_second 50.0" in text
