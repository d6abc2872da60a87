"""Training workers as Kubernetes Jobs: one `batch/v1` Job per training job, on the GPU pool.

The pod runs the same `worker_command` as the local executor, with the job's workdir on a
volume the trainer shares with the pod (mounted at the same path in both). Events are read
from the pod's log, the exit status from the pod (or the Job's failure condition), and
cancelling deletes the Job, which sends SIGTERM to the worker.
"""

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from pydantic import Field
from urllib3.exceptions import HTTPError

from trainer_service.executors.base import (
    CANCELLED_EXIT,
    parse_event_line,
    worker_command,
    worker_env,
)
from tuneyard.config import CommonSettings
from tuneyard.errors import FailedPrecondition, Unavailable

JOB_LABEL = "tuneyard.dev/job-id"
K8S_JOB_LABEL = "tuneyard.dev/k8s-job"
NORMAL_WAITING = {"ContainerCreating", "PodInitializing"}
FAILED_EXIT = 1  # the Job failed without a container exit code (deadline, image pull...)


class KubernetesExecutorSettings(CommonSettings):
    """`TUNEYARD_K8S_*`: where and how training Jobs run."""

    trainer_device: str = Field("auto", description="The worker's device, as for the trainer.")
    k8s_namespace: str = "default"
    k8s_image: str = Field("tuneyard:gpu", description="Image with the worker installed.")
    k8s_image_pull_policy: str = "IfNotPresent"
    k8s_gpus: int = Field(1, ge=0, description=">1 launches the worker with torchrun.")
    k8s_gpu_resource: str = "nvidia.com/gpu"
    k8s_cpu: str = "4"
    k8s_memory: str = "32Gi"
    k8s_shm_size: str = "8Gi"
    k8s_node_selector: dict[str, str] = Field(default_factory=dict, description="JSON object.")
    k8s_tolerations: list[dict[str, Any]] = Field(default_factory=list, description="JSON list.")
    k8s_home_pvc: str = Field(..., description="PVC mounted at TUNEYARD_HOME (job folders).")
    k8s_adapters_pvc: str = Field("", description="PVC at the adapters dir; '' = under home.")
    k8s_secret: str = Field("", description="Secret passed as env (HF_TOKEN...); '' = none.")
    k8s_service_account: str = ""
    k8s_backoff_limit: int = Field(0, ge=0, description="Retries of a failed worker pod.")
    k8s_ttl_seconds: int = Field(86400, ge=0, description="Finished Jobs are deleted after.")
    k8s_deadline_seconds: int = Field(7 * 86400, ge=1, description="activeDeadlineSeconds.")
    k8s_poll_seconds: float = Field(2.0, gt=0)


def job_name(job_id: str, run: int = 1) -> str:
    """A DNS-1123 name for the Job, stable for a job id and its run (63 characters at most):
    `tuneyard-train-<job id>`, then `-2`, `-3`... for the runs that resume it after a death."""
    slug = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-")
    suffix = f"-{run}" if run > 1 else ""
    return f"tuneyard-train-{slug}"[: 63 - len(suffix)].rstrip("-") + suffix


def label_value(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63].strip("-_.")


class KubernetesExecutor:
    """Starts one Job per training job; `api_client` defaults to the in-cluster config
    (or ~/.kube/config outside a cluster)."""

    def __init__(
        self, settings: KubernetesExecutorSettings, api_client: client.ApiClient | None = None
    ):
        self.settings = settings
        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                try:
                    config.load_kube_config()
                except (config.ConfigException, OSError) as err:
                    raise FailedPrecondition(
                        f"no Kubernetes API to run jobs on: not in a cluster, and {err}"
                    ) from err
            api_client = client.ApiClient()
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    def build_job(self, job_id: str, workdir: Path, name: str = "") -> client.V1Job:
        s = self.settings
        name = name or job_name(job_id)
        labels = {
            "app.kubernetes.io/name": "tuneyard-worker",
            "app.kubernetes.io/part-of": "tuneyard",
            JOB_LABEL: label_value(job_id),
            K8S_JOB_LABEL: name,
        }
        command = worker_command(job_id, workdir, python="python")
        if s.k8s_gpus > 1:  # one process per GPU; the worker itself stays the same module
            command = ["torchrun", "--standalone", f"--nproc-per-node={s.k8s_gpus}", *command[1:]]

        resources = {"cpu": s.k8s_cpu, "memory": s.k8s_memory}
        limits = {"memory": s.k8s_memory}
        if s.k8s_gpus:
            resources[s.k8s_gpu_resource] = limits[s.k8s_gpu_resource] = str(s.k8s_gpus)

        env = [client.V1EnvVar(name=k, value=v) for k, v in worker_env(s).items()]
        env.append(client.V1EnvVar(name="PYTHONUNBUFFERED", value="1"))
        env_from = (
            [client.V1EnvFromSource(secret_ref=client.V1SecretEnvSource(name=s.k8s_secret))]
            if s.k8s_secret
            else None
        )

        mounts = [
            client.V1VolumeMount(name="home", mount_path=str(s.home)),
            client.V1VolumeMount(name="shm", mount_path="/dev/shm"),
        ]
        volumes = [
            client.V1Volume(
                name="home",
                persistent_volume_claim=(
                    client.V1PersistentVolumeClaimVolumeSource(claim_name=s.k8s_home_pvc)
                ),
            ),
            client.V1Volume(
                name="shm",
                empty_dir=client.V1EmptyDirVolumeSource(medium="Memory", size_limit=s.k8s_shm_size),
            ),
        ]
        if s.k8s_adapters_pvc:
            mounts.append(
                client.V1VolumeMount(name="adapters", mount_path=str(s.resolved_adapters_dir))
            )
            volumes.append(
                client.V1Volume(
                    name="adapters",
                    persistent_volume_claim=(
                        client.V1PersistentVolumeClaimVolumeSource(claim_name=s.k8s_adapters_pvc)
                    ),
                )
            )

        container = client.V1Container(
            name="worker",
            image=s.k8s_image,
            image_pull_policy=s.k8s_image_pull_policy,
            command=command,
            env=env,
            env_from=env_from,
            volume_mounts=mounts,
            resources=client.V1ResourceRequirements(requests=resources, limits=limits),
            security_context=client.V1SecurityContext(allow_privilege_escalation=False),
        )
        pod = client.V1PodSpec(
            containers=[container],
            volumes=volumes,
            restart_policy="Never",
            node_selector=s.k8s_node_selector or None,
            tolerations=[client.V1Toleration(**t) for t in s.k8s_tolerations] or None,
            service_account_name=s.k8s_service_account or None,
            automount_service_account_token=False,
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True, run_as_user=10001, run_as_group=10001, fs_group=10001
            ),
        )
        return client.V1Job(
            api_version="batch/v1",
            kind="Job",
            metadata=client.V1ObjectMeta(name=name, namespace=s.k8s_namespace, labels=labels),
            spec=client.V1JobSpec(
                backoff_limit=s.k8s_backoff_limit,
                ttl_seconds_after_finished=s.k8s_ttl_seconds,
                active_deadline_seconds=s.k8s_deadline_seconds,
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels), spec=pod
                ),
            ),
        )

    def start(self, job_id: str, workdir: Path) -> "KubernetesHandle":
        if not Path(workdir).is_relative_to(self.settings.home):
            raise FailedPrecondition(
                f"job folder {workdir} is not under TUNEYARD_HOME ({self.settings.home}), "
                f"the volume {self.settings.k8s_home_pvc} shared with the training pods"
            )
        run = 1
        while True:
            job = self.build_job(job_id, workdir, job_name(job_id, run))
            name = job.metadata.name
            try:
                self.batch.create_namespaced_job(self.settings.k8s_namespace, job)
                return KubernetesHandle(self, name)
            except ApiException as err:
                if err.status != 409:
                    raise Unavailable(
                        f"could not create Kubernetes Job {name}: {err.status} {err.reason}"
                    ) from err
            except HTTPError as err:
                raise Unavailable(f"Kubernetes API unreachable: {err}") from err
            # The name is taken: by an earlier run of this job that ended (its worker died
            # and the scheduler resumes it), whose Job stays until its TTL; take the next.
            try:
                existing = self.batch.read_namespaced_job_status(name, job.metadata.namespace)
            except ApiException as err:
                if err.status == 404:  # deleted meanwhile: the name is free again
                    continue
                raise
            if not _finished(existing):
                raise FailedPrecondition(
                    f"a Kubernetes Job {name} already exists and has not finished"
                )
            run += 1


class KubernetesHandle:
    """A started Job: its pods' logs as events, its outcome as an exit status."""

    def __init__(self, executor: KubernetesExecutor, name: str):
        self.batch, self.core = executor.batch, executor.core
        self.namespace = executor.settings.k8s_namespace
        self.poll = executor.settings.k8s_poll_seconds
        self.name = name
        self._cancelled = threading.Event()

    def events(self) -> Iterator[dict]:
        """Each pod's log in turn (a retried pod gets a new one) until the Job is over."""
        followed: set[str] = set()
        reported: set[str] = set()
        while True:
            job = self._read_job()
            pods = self._pods()
            for pod in pods:
                if pod.metadata.name in followed or pod.status.phase == "Pending":
                    continue
                followed.add(pod.metadata.name)
                yield from self._log_events(pod.metadata.name)
            if job is None or _finished(job):
                break
            for pod in pods:
                message = _pending_reason(pod)
                if message and message not in reported:
                    reported.add(message)
                    yield {"type": "message", "level": "info", "message": message}
            time.sleep(self.poll)
        if job is None:
            if not self._cancelled.is_set():  # not a death: someone meant it to end
                message = f"Kubernetes Job {self.name} was deleted by someone else"
                yield {"type": "message", "level": "error", "message": message}
        elif failed := _conditions(job).get("Failed"):
            message = f"Kubernetes Job {self.name} failed: {failed.reason}: {failed.message or ''}"
            # Its pods failed (BackoffLimitExceeded): their exit says how, and the scheduler
            # tells a worker's own error from a death it resumes. Any other reason (a
            # DeadlineExceeded) ends the job.
            level = "warn" if failed.reason == "BackoffLimitExceeded" else "error"
            yield {"type": "message", "level": level, "message": message}

    def cancel(self) -> None:
        self._cancelled.set()
        try:
            self.batch.delete_namespaced_job(
                self.name, self.namespace, propagation_policy="Background"
            )
        except ApiException as err:
            if err.status != 404:
                raise Unavailable(
                    f"could not delete Kubernetes Job {self.name}: {err.status} {err.reason}"
                ) from err

    def wait(self) -> int:
        while True:
            job = self._read_job()
            if job is None:  # deleted: by our cancel, or by someone else
                return CANCELLED_EXIT if self._cancelled.is_set() else FAILED_EXIT
            if _finished(job):
                if "Complete" in _conditions(job):
                    return 0
                return self._last_exit_code() or FAILED_EXIT
            time.sleep(self.poll)

    # --- reading the cluster ----------------------------------------------------------
    def _read_job(self) -> client.V1Job | None:
        try:
            return self.batch.read_namespaced_job_status(self.name, self.namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def _pods(self) -> list[client.V1Pod]:
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{K8S_JOB_LABEL}={self.name}"
        ).items
        return sorted(pods, key=lambda p: (p.metadata.creation_timestamp or 0, p.metadata.name))

    def _log_events(self, pod_name: str) -> Iterator[dict]:
        try:
            stream = self.core.read_namespaced_pod_log(
                pod_name, self.namespace, container="worker", follow=True, _preload_content=False
            )
        except ApiException as err:
            if err.status == 404:  # deleted before we got to it
                return
            raise
        try:
            # read1, not stream(): the latter blocks until its buffer is full, and a log
            # line must come out as soon as it is written. A line may span two reads.
            pending = b""
            while chunk := stream.read1(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if event := parse_event_line(line.decode("utf-8", "replace")):
                        yield event
            if event := parse_event_line(pending.decode("utf-8", "replace")):
                yield event
        finally:
            stream.release_conn()

    def _last_exit_code(self) -> int | None:
        for pod in reversed(self._pods()):
            for status in pod.status.container_statuses or []:
                if status.state and status.state.terminated:
                    return status.state.terminated.exit_code
        return None


def _conditions(job: client.V1Job) -> dict[str, client.V1JobCondition]:
    return {c.type: c for c in (job.status and job.status.conditions) or [] if c.status == "True"}


def _finished(job: client.V1Job) -> bool:
    return bool({"Complete", "Failed"} & _conditions(job).keys())


def _pending_reason(pod: client.V1Pod) -> str | None:
    """Why a pod is stuck before running (unschedulable, image pull failing...), if it says;
    the normal steps of a start are not worth an event."""
    if pod.status.phase != "Pending":
        return None
    for status in pod.status.container_statuses or []:
        waiting = status.state and status.state.waiting
        if waiting and waiting.reason and waiting.reason not in NORMAL_WAITING:
            return f"pod {pod.metadata.name} waiting: {waiting.reason} {waiting.message or ''}"
    for condition in pod.status.conditions or []:
        if condition.status == "False" and condition.reason:
            return f"pod {pod.metadata.name} {condition.reason}: {condition.message or ''}"
    return None
