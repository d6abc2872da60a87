"""The trainer as a real process: killed mid-job and restarted, the job resumes from its
last checkpoint; so does a job whose worker alone is killed; plus the ValidateDataset,
checkpoint and file RPCs over loopback gRPC."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import psutil
import pytest

from tests.conftest import EMAIL_ROWS
from tests.trainer.conftest import make_spec, wait_until
from tests.trainer.test_server import free_port
from trainer_service.executors.base import CANCELLED_EXIT
from trainer_service.executors.local import LocalExecutor
from trainer_service.job_store import JobStore
from trainer_service.journal import JobJournal
from trainer_service.scheduler import JobScheduler
from trainer_service.server import serve
from tuneyard.adapter_store import AdapterStore
from tuneyard.statuses import CANCELLED, FAILED, PAUSED, QUEUED, RUNNING, SUCCEEDED
from tuneyard.v1 import trainer_pb2, trainer_pb2_grpc


def start_trainer(settings, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "TUNEYARD_HOME": str(settings.home),
        "TUNEYARD_TRAINER_PORT": str(port),
        "TUNEYARD_TRAINER_METRICS_PORT": "0",
        "TUNEYARD_TRAINER_DEVICE": "cpu",
        "PYTHONPATH": str(Path.cwd()),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer_service"], env=env, stderr=subprocess.PIPE, text=True
    )
    line = ""
    while "trainer ready on" not in line:
        line = process.stderr.readline()
        assert line or process.poll() is None, "the trainer exited before it was ready"
    return process


def events_of(stub, job_id):
    request = trainer_pb2.ListJobEventsRequest(job_id=job_id)
    return list(stub.ListJobEvents(request, timeout=10).events)


@pytest.mark.slow
def test_killed_trainer_resumes_the_job_from_its_checkpoint(settings, tiny_llama, email_jsonl):
    port = free_port()
    spec = make_spec(
        tiny_llama, email_jsonl, training={"max_steps": 20, "save_steps": 5}
    ).to_proto()
    first = start_trainer(settings, port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            job = stub.CreateJob(trainer_pb2.CreateJobRequest(spec=spec), timeout=10)
            wait_until(
                lambda: any("checkpoint saved" in e.message for e in events_of(stub, job.id)),
                timeout=90,
            )
        workers = psutil.Process(first.pid).children(recursive=True)
        assert workers, "the job's worker should be running"
    finally:
        first.kill()  # SIGKILL: no clean stop, the job stays "running" in the store
        first.wait()
    # The orphaned worker stops by itself: it must not train on beside the resumed one.
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, [(p.pid, p.cmdline(), p.status()) for p in alive]

    second = start_trainer(settings, port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            done = wait_until(
                lambda: (
                    j
                    if (j := stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.id))).status
                    in (trainer_pb2.SUCCEEDED, trainer_pb2.FAILED, trainer_pb2.CANCELLED)
                    else None
                ),
                timeout=120,
            )
            messages = [e.message for e in events_of(stub, job.id)]
            assert done.status == trainer_pb2.SUCCEEDED, messages[-5:]
            assert any("it will resume from checkpoint-" in m for m in messages)
            assert any(m.startswith("resuming from checkpoint-") for m in messages)
            # The resumed run went on from the checkpoint, not from step 1 again.
            resumed_at = messages.index(next(m for m in messages if m.startswith("resuming")))
            later_steps = [
                e.metrics.step
                for e in events_of(stub, job.id)[resumed_at:]
                if e.HasField("metrics")
            ]
            assert later_steps and min(later_steps) > 5 and max(later_steps) == 20

            checkpoints = stub.ListCheckpoints(
                trainer_pb2.ListCheckpointsRequest(job_id=job.id), timeout=10
            ).checkpoints
            assert [c.step for c in checkpoints][-1] == 20
            assert checkpoints[0].metrics.loss > 0 and checkpoints[0].step % 5 == 0
            published = stub.PublishCheckpoint(
                trainer_pb2.PublishCheckpointRequest(job_id=job.id, step=checkpoints[0].step),
                timeout=30,
            )
            assert published.published_as == "emails@2"
            version = AdapterStore(settings.resolved_adapters_dir).resolve("emails@2")
            assert version.manifest().metrics["checkpoint_step"] == checkpoints[0].step
            with pytest.raises(grpc.RpcError) as caught:
                stub.PublishCheckpoint(
                    trainer_pb2.PublishCheckpointRequest(job_id=job.id, step=7), timeout=10
                )
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)


@pytest.fixture
def stub(settings):
    running = serve(settings)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield trainer_pb2_grpc.TrainerServiceStub(channel)
    running.stop(grace=0)


def test_validate_dataset_reports_without_a_job(stub, tiny_llama, email_jsonl, tmp_path):
    spec = make_spec(
        tiny_llama, email_jsonl, data={"eval_fraction": 0.25}, training={"max_seq_length": 40}
    )
    report = stub.ValidateDataset(trainer_pb2.ValidateDatasetRequest(spec=spec.to_proto()))
    assert report.ok and not report.error.code
    assert (report.rows, report.train_rows, report.eval_rows) == (12, 9, 3)
    assert 0 < report.tokens.min <= report.tokens.p50 <= report.tokens.p95 <= report.tokens.max
    assert report.tokens.min <= report.tokens.mean <= report.tokens.max
    assert report.too_long == 12 and list(report.too_long_lines) == [1, 2, 3, 4, 5]
    assert "truncated" in report.warnings[0]
    assert stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs == []

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"product": "a", "description": "b", "email": "c"}\n{oops\n')
    report = stub.ValidateDataset(
        trainer_pb2.ValidateDatasetRequest(spec=make_spec(tiny_llama, bad).to_proto())
    )
    assert not report.ok
    assert (report.error.code, report.error.param, report.error.line) == (
        "invalid_json",
        "data.path",
        2,
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.ValidateDataset(trainer_pb2.ValidateDatasetRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_files_over_grpc(stub, tmp_path):
    content = "".join(f'{{"product": "{r["product"]}"}}\n' for r in EMAIL_ROWS).encode()
    uploaded = stub.UploadFile(
        trainer_pb2.UploadFileRequest(filename="e.jsonl", purpose="fine-tune", content=content)
    )
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(content)
    assert stub.GetFile(trainer_pb2.GetFileRequest(file_id=uploaded.id)) == uploaded
    assert list(stub.ListFiles(trainer_pb2.ListFilesRequest()).files) == [uploaded]
    for call, request, code in [
        ("GetFile", trainer_pb2.GetFileRequest(file_id="file-nope"), grpc.StatusCode.NOT_FOUND),
        (
            "UploadFile",
            trainer_pb2.UploadFileRequest(filename="a", purpose="x", content=b"1"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "ListCheckpoints",
            trainer_pb2.ListCheckpointsRequest(job_id="ftjob-nope"),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, call)(request)
        assert caught.value.code() == code, call


def fake_checkpoint(settings, job_id: str, step: int) -> Path:
    folder = settings.resolved_trainer_workdir / job_id / "trainer" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_text("{}")
    (folder / "trainer_state.json").write_text(
        json.dumps({"epoch": 0.5, "log_history": [{"loss": 2.5, "step": step}]})
    )
    return folder


def test_restart_requeues_a_job_with_a_checkpoint_until_max_resumes(
    settings, tiny_llama, email_jsonl
):
    store = JobStore(settings.resolved_trainer_db)
    spec = make_spec(tiny_llama, email_jsonl, training={"save_steps": 5})
    resumable = store.create_job(spec, status=RUNNING)
    exhausted = store.create_job(spec, status=RUNNING)
    store.update(exhausted.id, resumes=settings.max_resumes)
    fake_checkpoint(settings, resumable.id, 5)
    fake_checkpoint(settings, exhausted.id, 5)
    store.close()

    # An executor that never starts anything: the test only looks at the recovery.
    class Idle:
        def start(self, job_id, workdir):
            raise RuntimeError("not started in this test")

    scheduler = JobScheduler(
        settings.model_copy(update={"max_concurrent_jobs": 1}),
        JobJournal(JobStore(settings.resolved_trainer_db)),
        Idle(),
    )
    scheduler._dispatch = lambda: None  # keep the requeued job queued, to look at it
    scheduler.start()
    try:
        job = scheduler.get(resumable.id)
        assert job.status == QUEUED and job.resumes == 1
        messages = [e.message for e in scheduler.store.events(resumable.id)]
        assert any("will resume from checkpoint-5" in m for m in messages)
        failed = scheduler.get(exhausted.id)
        assert failed.status == FAILED and failed.error.code == "worker_lost"
        assert f"resumed {settings.max_resumes} times already" in failed.error.message
    finally:
        scheduler.close(timeout=1)
        scheduler.store.close()


def test_checkpoints_listed_from_the_job_folder(settings):
    from trainer_service.checkpoints import list_checkpoints

    workdir = settings.resolved_trainer_workdir / "ftjob-x"
    fake_checkpoint(settings, "ftjob-x", 10)
    fake_checkpoint(settings, "ftjob-x", 5)
    (workdir / "trainer" / "checkpoint-15").mkdir()  # being written: not complete yet
    found = list_checkpoints(workdir, "ftjob-x")
    assert [c.step for c in found] == [5, 10]
    assert found[0].metrics == {"step": 5, "epoch": 0.5, "loss": 2.5}


@pytest.mark.slow
def test_clean_stop_queues_a_job_with_a_checkpoint_to_resume(settings, tiny_llama, email_jsonl):
    spec = make_spec(tiny_llama, email_jsonl, training={"max_steps": 2000, "save_steps": 2})
    first = serve(settings)
    job = first.scheduler.create(spec)
    wait_until(
        lambda: any("checkpoint saved" in e.message for e in first.store.events(job.id)),
        timeout=90,
    )
    first.stop(grace=1)

    second = serve(settings.model_copy(update={"max_concurrent_jobs": 1}))
    try:
        assert any("will resume from checkpoint-" in e.message for e in second.store.events(job.id))
        wait_until(
            lambda: any(e.message.startswith("resuming from") for e in second.store.events(job.id)),
            timeout=90,
        )
        second.scheduler.cancel(job.id)
        wait_until(lambda: second.store.get_job(job.id).terminal, timeout=60)
        assert second.store.get_job(job.id).status == "cancelled"
    finally:
        second.stop(grace=1)


def test_relative_local_paths_are_made_absolute(settings, tiny_llama, email_jsonl, monkeypatch):
    """The worker runs in its job folder: a path relative to the trainer's would break."""
    monkeypatch.chdir(tiny_llama.parent)
    spec = make_spec(tiny_llama.name, "x.jsonl", data={"path": os.path.relpath(email_jsonl)})
    scheduler = JobScheduler(
        settings, JobJournal(JobStore(settings.resolved_trainer_db)), executor=None
    )
    try:
        resolved = scheduler.resolve_spec(spec)
        assert resolved.base_model == str(tiny_llama.resolve())
        assert resolved.data.path == str(email_jsonl.resolve())
        hub = spec.model_copy(update={"base_model": "org/some-model"})
        assert scheduler.resolve_spec(hub).base_model == "org/some-model"
    finally:
        scheduler.store.close()


# --- a worker that dies alone (OOM killer, a lost node) -----------------------------------
def worker_processes(job_id: str) -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if job_id in " ".join(p.cmdline())]


def terminal(scheduler: JobScheduler, job_id: str):
    job = scheduler.get(job_id)
    return job if job.terminal else None


@pytest.mark.slow
def test_a_killed_worker_resumes_from_its_checkpoint(settings, tiny_llama, email_jsonl):
    scheduler = JobScheduler(
        settings,
        JobJournal(JobStore(settings.resolved_trainer_db)),
        LocalExecutor(settings, kill_grace_s=5),
    )
    scheduler.start()
    try:
        spec = make_spec(tiny_llama, email_jsonl, training={"max_steps": 40, "save_steps": 4})
        job = scheduler.create(spec)
        wait_until(
            lambda: (
                terminal(scheduler, job.id)
                or any("checkpoint saved" in e.message for e in scheduler.store.events(job.id))
            ),
            timeout=120,
        )
        assert scheduler.get(job.id).status == RUNNING, scheduler.store.events(job.id)[-3:]
        (worker,) = worker_processes(job.id)
        worker.send_signal(signal.SIGKILL)  # the worker alone, as the OOM killer would
        done = wait_until(lambda: terminal(scheduler, job.id), timeout=120)

        events = scheduler.store.events(job.id)
        messages = [e.message for e in events]
        assert done.status == SUCCEEDED, messages[-5:]
        assert done.resumes == 1 and done.fine_tuned_model == "emails@1"
        (resumed,) = [e for e in events if "resuming from checkpoint step" in e.message]
        assert resumed.level == "warn"
        assert "the worker died (killed by SIGKILL) without reporting an error" in resumed.message
        assert resumed.message.endswith("(resume 1 of 3)")
        # The second worker went on from that checkpoint, not from step 1.
        step = int(resumed.message.split("checkpoint step ")[1].split()[0])
        assert step % 4 == 0 and step < 40
        assert f"resuming from checkpoint-{step}" in messages
        later = [e.metrics["step"] for e in events if e.seq > resumed.seq and e.metrics]
        assert later and min(later) > step and max(later) == 40
        assert [v.id for v in AdapterStore(settings.resolved_adapters_dir).versions("emails")] == [
            "emails@1"
        ]
    finally:
        scheduler.close()
        scheduler.store.close()


class Scripted:
    """An executor whose runs end as scripted, one (events, exit status) per start."""

    def __init__(self, *runs: tuple[list[dict], int]):
        self.runs = list(runs)
        self.starts = 0

    def start(self, job_id, workdir):
        self.starts += 1
        events, code = self.runs.pop(0)

        class Run:
            def events(self):
                yield from events

            def cancel(self):
                pass

            def wait(self):
                return code

        return Run()


def run_scripted(settings, executor: Scripted, spec: dict, resumes: int = 0, step: int = 0):
    """A queued job (with a checkpoint at `step`, if any) run to its end by `executor`."""
    store = JobStore(settings.resolved_trainer_db)
    job = store.create_job(spec, status=QUEUED)
    store.update(job.id, resumes=resumes)
    if step:
        fake_checkpoint(settings, job.id, step)
    scheduler = JobScheduler(settings, JobJournal(store), executor)
    scheduler.start()
    try:
        done = wait_until(lambda: terminal(scheduler, job.id), timeout=10)
        return done, [e.message for e in store.events(job.id)]
    finally:
        scheduler.close(timeout=1)
        store.close()


RESULT = {"type": "result", "fine_tuned_model": "emails@1", "result_files": []}


def test_a_dead_worker_is_resumed_up_to_max_resumes_then_fails_saying_why(
    settings, tiny_llama, email_jsonl
):
    spec = make_spec(tiny_llama, email_jsonl, training={"save_steps": 5})
    # Killed, then gone without a word (a lost pod), then it publishes.
    executor = Scripted(([], -9), ([], 1), ([RESULT], 0))
    done, messages = run_scripted(settings, executor, spec, step=5)
    assert done.status == SUCCEEDED and done.resumes == 2 and executor.starts == 3
    assert [m for m in messages if "resuming" in m] == [
        "the worker died (killed by SIGKILL) without reporting an error; "
        "resuming from checkpoint step 5 (resume 1 of 3)",
        "the worker died (exit code 1) without reporting an error; "
        "resuming from checkpoint step 5 (resume 2 of 3)",
    ]

    # Resumes used up (trainer restarts count too): it fails at the next death.
    executor = Scripted(([], 137))
    done, _ = run_scripted(settings, executor, spec, resumes=settings.max_resumes, step=5)
    assert done.status == FAILED and done.error.code == "worker_failed"
    assert done.error.message == (
        "the worker died (exit code 137: killed by SIGKILL) without reporting an error; "
        f"it was resumed {settings.max_resumes} times already (max_resumes is "
        f"{settings.max_resumes})"
    )
    assert done.resumes == settings.max_resumes

    # No checkpoint to go on from.
    done, _ = run_scripted(settings, Scripted(([], -9)), spec)
    assert done.status == FAILED and done.resumes == 0
    assert "killed by SIGKILL" in done.error.message
    assert done.error.message.endswith(
        "it has no checkpoint to resume from (training.save_steps is 0 or none was saved yet)"
    )


def test_a_worker_that_reports_an_error_is_not_resumed(settings, tiny_llama, email_jsonl):
    spec = make_spec(tiny_llama, email_jsonl, training={"save_steps": 5})
    error = {"type": "message", "level": "error", "message": "ValueError: bad row"}
    for code in (1, -9):  # even if something killed it after it reported
        executor = Scripted(([error], code))
        done, messages = run_scripted(settings, executor, spec, step=5)
        assert done.status == FAILED and done.resumes == 0 and executor.starts == 1
        assert done.error.message.startswith("ValueError: bad row (")
        assert not any("resuming" in m for m in messages)
    # A worker that said it was done but published nothing is not a death either.
    done, _ = run_scripted(settings, Scripted(([], 0)), spec, step=5)
    assert done.status == FAILED and done.resumes == 0
    assert done.error.message == "the worker ended without publishing a result (exit code 0)"


class Held:
    """An executor whose workers run until cancelled, counting how many were alive at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.alive = self.most = 0

    def start(self, job_id, workdir):
        with self.lock:
            self.alive += 1
            self.most = max(self.most, self.alive)
        owner, stopped = self, threading.Event()

        class Run:
            def events(self):
                assert stopped.wait(60)
                yield from ()

            def cancel(self):
                stopped.set()

            def wait(self):
                with owner.lock:
                    owner.alive -= 1
                return CANCELLED_EXIT

        return Run()


def test_a_job_paused_and_resumed_before_its_attempt_ended_keeps_the_slot_count(
    settings, tiny_llama, email_jsonl, monkeypatch
):
    """The ending attempt's cleanup removes its own entry, not the resumed job's new one:
    two slots never run three workers."""
    spec = make_spec(tiny_llama, email_jsonl, training={"save_steps": 5})
    settings = settings.model_copy(update={"max_concurrent_jobs": 2})
    store = JobStore(settings.resolved_trainer_db)
    first = store.create_job(spec, status=QUEUED)
    others = [store.create_job(spec, status=PAUSED) for _ in range(2)]
    executor = Held()
    scheduler = JobScheduler(settings, JobJournal(store), executor)
    paused = scheduler._paused

    def paused_then_resumed_at_once(job_id, workdir):
        paused(job_id, workdir)
        if job_id == first.id:  # before its attempt ends: a new one takes its place
            for job in (first, *others):
                scheduler.resume(job.id)

    monkeypatch.setattr(scheduler, "_paused", paused_then_resumed_at_once)
    scheduler.start()
    try:
        wait_until(lambda: executor.alive == 1, timeout=10)
        scheduler.pause(first.id)
        wait_until(lambda: store.get_job(others[1].id).status == QUEUED, timeout=10)
        time.sleep(0.5)  # the first attempt's end has run by now
        statuses = [store.get_job(job.id).status for job in (first, *others)]
        assert statuses == [RUNNING, RUNNING, QUEUED] and executor.alive == 2
        assert executor.most == 2
    finally:
        scheduler.close(timeout=5)
        store.close()


def test_a_cancel_that_lands_before_the_worker_starts_cancels_it(settings, tiny_llama, email_jsonl):
    spec = make_spec(tiny_llama, email_jsonl, training={"save_steps": 5})
    store = JobStore(settings.resolved_trainer_db)
    job = store.create_job(spec, status=QUEUED)
    executor = Held()
    scheduler = JobScheduler(settings, JobJournal(store), executor)
    start = executor.start

    def cancelled_first(job_id, workdir):
        assert scheduler.cancel(job_id).status == RUNNING  # its worker is not there yet
        return start(job_id, workdir)

    executor.start = cancelled_first
    scheduler.start()
    try:
        done = wait_until(lambda: terminal(scheduler, job.id), timeout=10)
        assert done.status == CANCELLED and executor.alive == 0
        assert [e.message for e in store.events(job.id)][-2:] == [
            "cancellation requested; stopping the worker",
            "cancelled; nothing was published",
        ]
    finally:
        scheduler.close(timeout=5)
        store.close()
