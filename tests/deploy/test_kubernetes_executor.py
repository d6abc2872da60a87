"""The kubernetes executor against a stand-in API server on loopback: the real `kubernetes`
client over real HTTP, and the Job it sends checked against the Kubernetes schema."""

import json
import threading
from pathlib import Path

import pytest
from kubernetes import client
from pydantic import ValidationError

from tests.conftest import EMAIL_TEMPLATE
from tests.deploy.kube_standin import KubeStandIn, PodScript
from trainer_service.executors.base import CANCELLED_EXIT
from trainer_service.executors.kubernetes import (
    KubernetesExecutor,
    KubernetesExecutorSettings,
    job_name,
)
from tuneyard.adapter_store import AdapterStore
from tuneyard.errors import FailedPrecondition, InvalidArgument, Unavailable
from tuneyard.jobspec import JobSpec


def validate(manifest: dict) -> None:
    """Strict validation against the newest Kubernetes schema kubernetes-validate ships."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.utils.latest_version()
    kubernetes_validate.validate(manifest, version, strict=True)


WORKDIR = Path("/data/trainer/jobs/ftjob-abc123")
METRICS = {"type": "metrics", "metrics": {"step": 1, "total_steps": 2, "loss": 2.5}}
RESULT = {"type": "result", "fine_tuned_model": "email@1", "result_files": [], "trained_tokens": 99}
ERROR = {"type": "message", "level": "error", "message": "dataset row 3: missing 'email'"}


def settings(**overrides) -> KubernetesExecutorSettings:
    values = dict(
        home=Path("/data"),
        adapters_dir=Path("/adapters"),
        k8s_namespace="tuneyard",
        k8s_home_pvc="tuneyard-home",
        k8s_adapters_pvc="tuneyard-adapters",
        k8s_secret="tuneyard-secrets",
        k8s_poll_seconds=0.02,
    )
    return KubernetesExecutorSettings(**(values | overrides))


def executor(kube: KubeStandIn | None = None, **overrides) -> KubernetesExecutor:
    configuration = client.Configuration()
    configuration.host = kube.url if kube else "http://127.0.0.1:9"
    configuration.retries = 0
    return KubernetesExecutor(settings(**overrides), client.ApiClient(configuration))


def manifest(ex: KubernetesExecutor, job_id: str = "ftjob-abc123") -> dict:
    return ex.batch.api_client.sanitize_for_serialization(ex.build_job(job_id, WORKDIR))


def lines(*events) -> list[str]:
    return [json.dumps(e) for e in events]


def test_job_is_valid_and_carries_limits_volumes_and_worker_command():
    job = manifest(executor(k8s_backoff_limit=2, k8s_ttl_seconds=600, k8s_deadline_seconds=3600))
    validate(job)
    spec = job["spec"]
    assert (
        spec["backoffLimit"],
        spec["ttlSecondsAfterFinished"],
        spec["activeDeadlineSeconds"],
    ) == (2, 600, 3600)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (worker,) = pod["containers"]
    assert worker["command"] == [
        "python",
        "-m",
        "trainer_service.worker",
        "--job-id",
        "ftjob-abc123",
        "--workdir",
        str(WORKDIR),
    ]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    claims = {
        v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]
    }
    assert claims[mounts["/data"]] == "tuneyard-home"
    assert claims[mounts["/adapters"]] == "tuneyard-adapters"
    assert mounts["/dev/shm"] == "shm"
    assert {"name": "TUNEYARD_HOME", "value": "/data"} in worker["env"]


def test_multi_gpu_job_launches_torchrun_on_the_gpu_pool(monkeypatch):
    monkeypatch.setenv("TUNEYARD_K8S_NODE_SELECTOR", '{"tuneyard.dev/pool": "gpu"}')
    monkeypatch.setenv(
        "TUNEYARD_K8S_TOLERATIONS",
        '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
    )
    job = manifest(executor(k8s_gpus=4))
    validate(job)
    pod = job["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert worker["command"][:4] == ["torchrun", "--standalone", "--nproc-per-node=4", "-m"]
    assert worker["command"][4:6] == ["trainer_service.worker", "--job-id"]
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert pod["nodeSelector"] == {"tuneyard.dev/pool": "gpu"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_cpu_job_asks_for_no_gpu():
    worker = manifest(executor(k8s_gpus=0))["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]


def test_job_names_are_dns_labels_for_any_job_id():
    for run in (1, 2, 12):
        name = job_name("FTJOB_" + "x" * 80, run)
        assert len(name) <= 63 and name.startswith("tuneyard-train-ftjob-x")
        assert all(c.isalnum() or c == "-" for c in name) and name == name.lower()
        assert name.endswith(f"x-{run}") if run > 1 else name.endswith("x")


def test_settings_require_a_home_volume_and_valid_json(monkeypatch):
    with pytest.raises(ValidationError, match="k8s_home_pvc"):
        KubernetesExecutorSettings()
    monkeypatch.setenv("TUNEYARD_K8S_HOME_PVC", "home")
    monkeypatch.setenv("TUNEYARD_K8S_TOLERATIONS", "not json")
    with pytest.raises(Exception, match="k8s_tolerations"):
        KubernetesExecutorSettings()


def test_submit_streams_pod_log_events_and_succeeds():
    script = PodScript(lines(METRICS) + ["a stray line", ""] + lines(RESULT))
    # Slow enough that the pod is seen ContainerCreating: a normal start, no event.
    with KubeStandIn([script], line_delay=0.1) as kube:
        handle = executor(kube).start("ftjob-abc123", WORKDIR)
        events = list(handle.events())
        assert handle.wait() == 0
    assert events == [
        METRICS,
        {"type": "message", "level": "info", "message": "a stray line"},
        RESULT,
    ]
    (sent,) = kube.created_bodies
    validate(sent)
    assert sent["metadata"]["namespace"] == "tuneyard"


def test_cancel_deletes_the_job_and_reports_cancelled():
    with KubeStandIn([PodScript(lines(METRICS), hold=True)]) as kube:
        handle = executor(kube).start("ftjob-abc123", WORKDIR)
        events = handle.events()
        assert next(events) == METRICS
        handle.cancel()
        assert list(events) == []
        assert handle.wait() == CANCELLED_EXIT
        assert kube.jobs == {}
        handle.cancel()  # cancelling twice is harmless
    assert kube.deletes[0]["propagationPolicy"] == "Background"


def test_worker_failure_gives_its_exit_code_and_the_job_condition():
    with KubeStandIn([PodScript(lines(METRICS, ERROR), exit_code=3)]) as kube:
        handle = executor(kube).start("ftjob-abc123", WORKDIR)
        events = list(handle.events())
        assert handle.wait() == 3
    assert events[:2] == [METRICS, ERROR]
    # The pod's exit and the worker's own error tell what happened: the condition that
    # follows is no error of its own (else a killed worker could not be told apart).
    assert events[2]["level"] == "warn"
    assert "BackoffLimitExceeded" in events[2]["message"]


def test_a_killed_pod_reports_its_exit_and_the_job_runs_again_under_a_new_name():
    scripts = [PodScript(lines(METRICS), exit_code=137), PodScript(lines(METRICS, RESULT))]
    with KubeStandIn(scripts) as kube:
        ex = executor(kube)
        first = ex.start("ftjob-abc123", WORKDIR)
        events = list(first.events())
        assert first.wait() == 137  # what the kubelet reports for SIGKILL (OOMKilled)
        assert [e.get("level") for e in events] == [None, "warn"]
        # The failed Job stays until its TTL: the resumed run is a Job of its own.
        second = ex.start("ftjob-abc123", WORKDIR)
        assert second.name == job_name("ftjob-abc123", 2) == "tuneyard-train-ftjob-abc123-2"
        assert list(second.events()) == [METRICS, RESULT]
        assert second.wait() == 0
    assert set(kube.jobs) == {job_name("ftjob-abc123"), second.name}


def test_a_job_deleted_by_someone_else_is_an_error_not_a_death():
    with KubeStandIn([PodScript(lines(METRICS), hold=True)]) as kube:
        handle = executor(kube).start("ftjob-abc123", WORKDIR)
        events = handle.events()
        assert next(events) == METRICS
        executor(kube).batch.delete_namespaced_job(handle.name, "tuneyard")  # kubectl, say
        (last,) = list(events)
        assert handle.wait() == 1
    assert last["level"] == "error" and "deleted by someone else" in last["message"]


def test_a_retried_pod_is_followed_too():
    scripts = [PodScript(lines(ERROR), exit_code=1), PodScript(lines(METRICS, RESULT))]
    with KubeStandIn(scripts) as kube:
        handle = executor(kube, k8s_backoff_limit=1).start("ftjob-abc123", WORKDIR)
        events = list(handle.events())
        assert handle.wait() == 0
    assert events == [ERROR, METRICS, RESULT]


def test_a_pod_that_never_starts_is_reported_then_fails_at_the_deadline():
    with KubeStandIn([PodScript([], waiting="ImagePullBackOff")]) as kube:
        handle = executor(kube).start("ftjob-abc123", WORKDIR)
        events = handle.events()
        first = next(events)
        assert "ImagePullBackOff" in first["message"]
        threading.Timer(
            0.1,
            kube.fail_job,
            args=(
                job_name("ftjob-abc123"),
                "DeadlineExceeded",
                "Job was active longer than allowed",
            ),
        ).start()
        rest = list(events)
        assert handle.wait() == 1
    assert rest[-1]["level"] == "error"
    assert "DeadlineExceeded" in rest[-1]["message"]


def test_the_scheduler_resumes_a_job_whose_pod_was_killed(tmp_path):
    """The resume decision is the scheduler's, the same for every executor: here a pod
    OOM-killed after a checkpoint, the job going on as a second Job."""
    from tests.trainer.conftest import wait_until
    from trainer_service.job_store import JobStore
    from trainer_service.journal import JobJournal
    from trainer_service.scheduler import JobScheduler
    from trainer_service.settings import TrainerSettings
    from tuneyard.statuses import QUEUED, SUCCEEDED

    home = tmp_path / "home"
    trainer = TrainerSettings(home=home, trainer_metrics_port=0)
    store = JobStore(trainer.resolved_trainer_db)
    spec = JobSpec.parse(
        {
            "base_model": "org/model",
            "adapter_name": "emails",
            "data": {"path": "/data/emails.jsonl"},
            "template": EMAIL_TEMPLATE,
            "training": {"max_steps": 10, "save_steps": 5},
        }
    )
    job = store.create_job(spec, status=QUEUED)
    checkpoint = trainer.resolved_trainer_workdir / job.id / "trainer" / "checkpoint-5"
    checkpoint.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "trainer_state.json"):
        (checkpoint / name).write_text("{}")
    scripts = [PodScript(lines(METRICS), exit_code=137), PodScript(lines(RESULT))]
    with KubeStandIn(scripts) as kube:
        k8s = executor(kube, home=home, adapters_dir=None, k8s_adapters_pvc="")
        scheduler = JobScheduler(trainer, JobJournal(store), k8s)
        scheduler.start()
        try:
            done = wait_until(lambda: (j := store.get_job(job.id)).terminal and j, timeout=30)
            messages = [e.message for e in store.events(job.id)]
        finally:
            scheduler.close(timeout=5)
            store.close()
    assert done.status == SUCCEEDED and done.resumes == 1, messages
    assert (
        "the worker died (exit code 137: killed by SIGKILL) without reporting an error; "
        "resuming from checkpoint step 5 (resume 1 of 3)"
    ) in messages
    assert set(kube.jobs) == {job_name(job.id), job_name(job.id, 2)}


def test_a_job_that_exists_already_is_refused():
    with KubeStandIn([PodScript(lines(RESULT), hold=True)]) as kube:
        ex = executor(kube)
        ex.start("ftjob-abc123", WORKDIR)
        with pytest.raises(FailedPrecondition, match="already exists"):
            ex.start("ftjob-abc123", WORKDIR)


def test_a_job_folder_off_the_shared_volume_is_refused():
    with pytest.raises(FailedPrecondition, match="not under TUNEYARD_HOME"):
        executor().start("ftjob-abc123", Path("/tmp/jobs/ftjob-abc123"))


def test_no_cluster_config_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(FailedPrecondition, match="not in a cluster"):
        KubernetesExecutor(settings())


def test_an_unreachable_api_server_is_unavailable():
    with pytest.raises(Unavailable, match="unreachable"):
        executor().start("ftjob-abc123", WORKDIR)


# --- the real worker in the stand-in's pod: the Job's command and env are right ------------
def real_job(tmp_path, tiny_llama, email_jsonl, max_steps: int):
    home = tmp_path / "home"
    workdir = home / "trainer" / "jobs" / "ftjob-k8s"
    workdir.mkdir(parents=True)
    spec = JobSpec.parse(
        {
            "base_model": str(tiny_llama),
            "adapter_name": "emails",
            "data": {"path": str(email_jsonl)},
            "template": EMAIL_TEMPLATE,
            "lora": {"r": 4},
            "training": {"max_steps": max_steps, "batch_size": 2, "max_seq_length": 128},
            # No trainer runs here to compare with an inference service (test_parity_gate.py).
            "parity_gate": {"prompts": 0},
        }
    )
    (workdir / "spec.json").write_text(spec.model_dump_json())
    overrides = dict(home=home, adapters_dir=None, k8s_adapters_pvc="", trainer_device="cpu")
    return home, workdir, overrides


@pytest.mark.slow
def test_the_real_worker_runs_in_the_job_and_publishes(tmp_path, tiny_llama, email_jsonl):
    home, workdir, overrides = real_job(tmp_path, tiny_llama, email_jsonl, max_steps=2)
    with KubeStandIn([PodScript(run_command=True)]) as kube:
        handle = executor(kube, **overrides).start("ftjob-k8s", workdir)
        events = list(handle.events())
        assert handle.wait() == 0, events
    assert events[-1]["type"] == "result" and events[-1]["fine_tuned_model"] == "emails@1"
    assert any(e["type"] == "metrics" for e in events)
    assert AdapterStore(home / "adapters").resolve("emails").id == "emails@1"


@pytest.mark.slow
def test_cancelling_the_real_worker_publishes_nothing(tmp_path, tiny_llama, email_jsonl):
    home, workdir, overrides = real_job(tmp_path, tiny_llama, email_jsonl, max_steps=500)
    with KubeStandIn([PodScript(run_command=True)]) as kube:
        handle = executor(kube, **overrides).start("ftjob-k8s", workdir)
        events = handle.events()
        assert next(e for e in events if e["type"] == "metrics")
        handle.cancel()
        rest = list(events)
        assert handle.wait() == CANCELLED_EXIT
    assert not any(e["type"] == "result" for e in rest)
    assert not (home / "adapters" / "emails").exists()


def test_the_trainer_setting_picks_the_kubernetes_executor(monkeypatch, tmp_path):
    from trainer_service.executors import make_executor
    from trainer_service.settings import TrainerSettings

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("TUNEYARD_K8S_HOME_PVC", "tuneyard-home")
    # Chosen, configured from TUNEYARD_K8S_*, and then honest that no cluster is reachable.
    with pytest.raises(FailedPrecondition, match="not in a cluster"):
        make_executor(TrainerSettings(home=tmp_path, executor="kubernetes"))
    with pytest.raises(InvalidArgument, match="known: local, kubernetes"):
        make_executor(TrainerSettings(home=tmp_path, executor="slurm"))
