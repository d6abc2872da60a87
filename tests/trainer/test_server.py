"""TrainerService over a real loopback gRPC server, with health and /metrics."""

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.trainer.conftest import make_spec, wait_until
from trainer_service.notify import InferenceNotifier
from trainer_service.server import serve
from tuneyard.errors import TuneyardError
from tuneyard.grpc_server import build_server
from tuneyard.v1 import inference_pb2, inference_pb2_grpc, trainer_pb2, trainer_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandInInference(inference_pb2_grpc.InferenceServiceServicer):
    """Only LoadAdapter, as the inference service answers it; refuses names in `refuse`."""

    def __init__(self, refuse=()):
        self.loaded: list[str] = []
        self.refuse = set(refuse)

    def LoadAdapter(self, request, context):
        if request.adapter_id in self.refuse:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "base model mismatch")
        self.loaded.append(request.adapter_id)
        return inference_pb2.Adapter(id=request.adapter_id, loaded=True)


@pytest.fixture
def inference():
    servicer = StandInInference(refuse={"emails@1"})
    server = build_server(max_workers=2)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    servicer.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    yield servicer
    server.stop(0)


@pytest.fixture
def running(settings, inference):
    server = serve(
        settings.model_copy(
            update={"trainer_metrics_port": free_port(), "inference_addr": inference.address}
        )
    )
    yield server
    server.stop(grace=1)


@pytest.fixture
def stub(running):
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield trainer_pb2_grpc.TrainerServiceStub(channel)


@pytest.mark.slow
def test_create_and_watch_until_succeeded(running, stub, tiny_llama, email_jsonl):
    spec = make_spec(tiny_llama, email_jsonl, data={"eval_fraction": 0.25}).to_proto()
    job = stub.CreateJob(trainer_pb2.CreateJobRequest(spec=spec), timeout=10)
    assert job.id.startswith("ftjob-") and job.status == trainer_pb2.VALIDATING_FILES
    assert job.spec.adapter_name == "emails" and job.spec.training.max_steps == 2

    events = list(stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=180))
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    assert events[-1].message == "succeeded: published emails@1"
    # The inference service refused to load it: a warning, the job still succeeds.
    warnings = [e.message for e in events if e.level == "warn"]
    assert any(
        "could not tell the inference service" in w and "base model mismatch" in w for w in warnings
    )
    steps = [e.metrics for e in events if e.HasField("metrics") and e.metrics.HasField("loss")]
    assert [m.step for m in steps] == [1, 2] and steps[-1].tokens_per_second > 0
    assert any(e.metrics.HasField("eval_loss") for e in events)

    done = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.id), timeout=5)
    assert done.status == trainer_pb2.SUCCEEDED and done.fine_tuned_model == "emails@1"
    assert done.trained_tokens > 0 and done.finished_at >= done.started_at > 0
    assert not done.HasField("error")

    # Resuming a watch after the last seen event of a finished job returns nothing.
    again = stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id, after_seq=events[-1].seq))
    assert list(again) == []
    listed = stub.ListJobEvents(trainer_pb2.ListJobEventsRequest(job_id=job.id, limit=2))
    assert [e.seq for e in listed.events] == [e.seq for e in events[:2]]
    jobs = stub.ListJobs(trainer_pb2.ListJobsRequest())
    assert [j.id for j in jobs.jobs] == [job.id] and not jobs.has_more

    scrape = (
        urllib.request.urlopen(
            f"http://127.0.0.1:{running.metrics_server.server_port}/metrics", timeout=5
        )
        .read()
        .decode()
    )
    assert 'tuneyard_trainer_jobs{status="succeeded"} 1.0' in scrape
    assert 'tuneyard_trainer_jobs_finished_total{status="succeeded"} 1.0' in scrape
    assert "tuneyard_trainer_tokens_per_second" in scrape


def test_job_with_bad_data_is_refused_before_it_exists(stub, tiny_llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"product": "a", "description": "b", "email": "c"}\n{"product": "a"}\n')
    for path, param, line, needle in [
        (tmp_path / "absent.jsonl", "data.path", None, "absent.jsonl does not exist"),
        (bad, "data.columns", "2", "line 2 has no column"),
    ]:
        spec = make_spec(tiny_llama, path).to_proto()
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateJob(trainer_pb2.CreateJobRequest(spec=spec), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in caught.value.details()
        metadata = dict(caught.value.trailing_metadata())
        assert metadata["tuneyard-param"] == param and metadata.get("tuneyard-line") == line
    assert stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs == []


def test_validation_failure_over_grpc(stub, tmp_path, email_jsonl):
    """What only the background validation finds (here: the base model) fails the job,
    which says why."""
    spec = make_spec(tmp_path / "no-model", email_jsonl).to_proto()
    job = stub.CreateJob(trainer_pb2.CreateJobRequest(spec=spec), timeout=10)
    events = list(stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=60))
    assert events[-1].level == "error"
    done = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.id))
    assert done.status == trainer_pb2.FAILED
    assert done.error.code == "invalid_base_model" and done.error.param == "base_model"


def test_errors_map_to_status_codes(stub, tiny_llama, email_jsonl):
    for call, request in [
        (stub.GetJob, trainer_pb2.GetJobRequest(job_id="ftjob-unknown")),
        (stub.CancelJob, trainer_pb2.CancelJobRequest(job_id="ftjob-unknown")),
        (stub.ListJobEvents, trainer_pb2.ListJobEventsRequest(job_id="ftjob-unknown")),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "ftjob-unknown" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.WatchJob(trainer_pb2.WatchJobRequest(job_id="ftjob-unknown"), timeout=5))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    bad = make_spec(tiny_llama, email_jsonl).to_proto()
    bad.adapter_name = "no spaces allowed"
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateJob(trainer_pb2.CreateJobRequest(spec=bad), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "adapter name" in caught.value.details()

    bad = make_spec(tiny_llama, email_jsonl).to_proto()
    bad.recipe = "rlhf"
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateJob(trainer_pb2.CreateJobRequest(spec=bad), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "recipe" in caught.value.details()

    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateJob(trainer_pb2.CreateJobRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_notifier_loads_and_reports_unreachable(inference):
    notifier = InferenceNotifier(inference.address, deadline_s=5)
    notifier.load_adapter("emails@2")
    assert inference.loaded == ["emails@2"]
    notifier.close()
    dead = InferenceNotifier(f"127.0.0.1:{free_port()}", deadline_s=2)
    with pytest.raises(TuneyardError) as caught:
        dead.load_adapter("emails@2")
    assert caught.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    assert caught.value.message == "inference service unavailable"  # no gRPC words
    dead.close()


def test_main_serves_until_sigterm(settings, tmp_path):
    env = {
        **os.environ,
        "TUNEYARD_HOME": str(settings.home),
        "TUNEYARD_TRAINER_PORT": "0",
        "TUNEYARD_TRAINER_METRICS_PORT": "0",
        "PYTHONPATH": str(Path.cwd()),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer_service"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        line = ""
        while "trainer ready on" not in line:
            line = process.stderr.readline()
            assert line or process.poll() is None, "the trainer exited before it was ready"
        assert "127.0.0.1:" in line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
    assert (settings.home / "trainer" / "jobs.db").is_file()


def test_health_serving(running):
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tuneyard.v1.TrainerService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_metric_names_on_own_registry(running):
    names = {m.name for m in running.metrics.registry.collect()}
    assert names == {
        "tuneyard_trainer_jobs",
        "tuneyard_trainer_jobs_finished",
        "tuneyard_trainer_tokens_per_second",
        "tuneyard_trainer_job_loss",
        "tuneyard_trainer_job_step",
    }


@pytest.mark.slow
def test_stop_interrupts_running_job_and_restart_keeps_it(settings, tiny_llama, email_jsonl):
    first = serve(settings)
    with grpc.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        spec = make_spec(tiny_llama, email_jsonl, training={"max_steps": 2000}).to_proto()
        job = stub.CreateJob(trainer_pb2.CreateJobRequest(spec=spec), timeout=10)
        wait_until(
            lambda: (
                stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.id)).status == trainer_pb2.RUNNING
            ),
            timeout=60,
        )
    first.stop(grace=1)

    second = serve(settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            after = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.id), timeout=5)
            assert after.status == trainer_pb2.FAILED and after.error.code == "interrupted"
            assert stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs[0].id == job.id
    finally:
        second.stop(grace=1)
