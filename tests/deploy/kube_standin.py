"""A small stand-in for the Kubernetes API on loopback, for the kubernetes executor's tests.

It serves just what the executor calls (create/read/delete a namespaced Job, list pods by
label selector, follow a pod's log) and plays a kubelet and the Job controller: each pod
runs a `PodScript` (log lines and an exit code, or the container's own command as a local
process), a failed pod is retried up to `backoffLimit`, deleting a Job sends SIGTERM.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PodScript:
    lines: list[str] = field(default_factory=list)
    exit_code: int = 0
    hold: bool = False  # keep running after the lines, until the Job is deleted
    waiting: str = ""  # stay Pending with this container waiting reason
    run_command: bool = False  # run the container's command (the image = this checkout)


@dataclass
class Pod:
    name: str
    labels: dict
    created: int
    script: PodScript
    phase: str = "Pending"
    exit_code: int | None = None
    log: str = ""
    process: subprocess.Popen | None = None

    def to_json(self, namespace: str) -> dict:
        if self.exit_code is not None:
            state = {"terminated": {"exitCode": self.exit_code}}
        elif self.phase == "Running":
            state = {"running": {}}
        else:
            reason = self.script.waiting or "ContainerCreating"
            state = {"waiting": {"reason": reason, "message": "stand-in"}}
        created = EPOCH + timedelta(seconds=self.created)
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": namespace,
                "labels": self.labels,
                "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "status": {
                "phase": self.phase,
                "containerStatuses": [
                    {
                        "name": "worker",
                        "image": "tuneyard",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": state,
                    }
                ],
            },
        }


class KubeStandIn:
    """Run with `with KubeStandIn(scripts) as kube:`; `kube.url` is the API server."""

    def __init__(self, scripts: list[PodScript], line_delay: float = 0.01):
        self.scripts = list(scripts)
        self.line_delay = line_delay
        self.jobs: dict[str, dict] = {}
        self.pods: dict[str, Pod] = {}
        self.created_bodies: list[dict] = []
        self.deletes: list[dict] = []
        self.lock = threading.Condition()
        self._counter = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        with self.lock:
            for pod in self.pods.values():  # release any log still being followed
                if pod.process is not None:
                    pod.process.kill()
                pod.exit_code = 137 if pod.exit_code is None else pod.exit_code
            self.lock.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # --- the cluster's behaviour --------------------------------------------------------
    def _start_pod(self, job: dict) -> None:
        self._counter += 1
        labels = dict(job["spec"]["template"]["metadata"]["labels"])
        labels["job-name"] = job["metadata"]["name"]
        name = f"{job['metadata']['name']}-{self._counter:03d}"
        pod = Pod(name, labels, self._counter, self.scripts.pop(0))
        self.pods[pod.name] = pod
        if pod.script.run_command:
            threading.Thread(target=self._exec, args=(job, pod), daemon=True).start()
        elif not pod.script.waiting:
            threading.Thread(target=self._run, args=(job, pod), daemon=True).start()

    def _run(self, job: dict, pod: Pod) -> None:
        time.sleep(self.line_delay)
        with self.lock:
            pod.phase = "Running"
            self.lock.notify_all()
        for line in pod.script.lines:
            time.sleep(self.line_delay)
            with self.lock:
                if pod.exit_code is not None:
                    return
                pod.log += line + "\n"
                self.lock.notify_all()
        with self.lock:
            while pod.script.hold and pod.exit_code is None:
                self.lock.wait()
            if pod.exit_code is None:  # else killed by a delete
                self._finish(job, pod, pod.script.exit_code)

    def _exec(self, job: dict, pod: Pod) -> None:
        """The container's command and env as a local process; `python` is this one."""
        container = job["spec"]["template"]["spec"]["containers"][0]
        command = [sys.executable if c == "python" else c for c in container["command"]]
        env = os.environ | {e["name"]: e["value"] for e in container.get("env", [])}
        env["PYTHONPATH"] = str(ROOT)
        with self.lock:
            pod.process = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            pod.phase = "Running"
            self.lock.notify_all()
        for line in pod.process.stdout:
            with self.lock:
                pod.log += line
                self.lock.notify_all()
        code = pod.process.wait()
        with self.lock:
            self._finish(job, pod, 128 - code if code < 0 else code)

    def _finish(self, job: dict, pod: Pod, code: int) -> None:
        """A container ended: the Job completes, fails, or gets a new pod (backoffLimit)."""
        pod.exit_code = code
        pod.phase = "Succeeded" if code == 0 else "Failed"
        self.lock.notify_all()
        if job["metadata"]["name"] not in self.jobs:  # deleted meanwhile
            return
        status = job["status"]
        if code == 0:
            status["succeeded"] = 1
            self._condition(job, "Complete", "Completed")
        else:
            status["failed"] = status.get("failed", 0) + 1
            if status["failed"] > job["spec"].get("backoffLimit", 6):
                message = "Job has reached the specified backoff limit"
                self._condition(job, "Failed", "BackoffLimitExceeded", message)
            else:
                self._start_pod(job)

    @staticmethod
    def _condition(job: dict, kind: str, reason: str, message: str = "") -> None:
        job["status"].setdefault("conditions", []).append(
            {"type": kind, "status": "True", "reason": reason, "message": message}
        )

    def fail_job(self, name: str, reason: str, message: str) -> None:
        """What the Job controller does at activeDeadlineSeconds: delete pods, mark Failed."""
        with self.lock:
            job = self.jobs[name]
            for pod in self._pods_of(name):
                del self.pods[pod.name]
                pod.exit_code, pod.phase = 137, "Failed"
            self._condition(job, "Failed", reason, message)
            self.lock.notify_all()

    def _pods_of(self, job_name: str) -> list[Pod]:
        return [p for p in self.pods.values() if p.labels["job-name"] == job_name]

    # --- HTTP ---------------------------------------------------------------------------
    def _handler(self):
        kube = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self, what: str) -> None:
                self._send(
                    404,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "NotFound",
                        "code": 404,
                        "message": f"{what} not found",
                    },
                )

            def _body(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def do_POST(self):
                m = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs", self.path)
                if not m:
                    return self._not_found(self.path)
                body = self._body()
                kube.created_bodies.append(body)
                name = body["metadata"]["name"]
                with kube.lock:
                    if name in kube.jobs:
                        return self._send(
                            409,
                            {
                                "kind": "Status",
                                "status": "Failure",
                                "reason": "AlreadyExists",
                                "code": 409,
                                "message": f"jobs {name} already exists",
                            },
                        )
                    job = dict(body, status={})
                    job["metadata"] = dict(body["metadata"], namespace=m[1], uid=name)
                    kube.jobs[name] = job
                    kube._start_pod(job)
                self._send(201, job)

            def do_GET(self):
                url = urlparse(self.path)
                if m := re.fullmatch(
                    r"/apis/batch/v1/namespaces/[^/]+/jobs/([^/]+)(/status)?", url.path
                ):
                    with kube.lock:
                        job = kube.jobs.get(m[1])
                        job = json.loads(json.dumps(job)) if job else None
                    return self._send(200, job) if job else self._not_found(f"jobs {m[1]}")
                if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", url.path):
                    selector = parse_qs(url.query).get("labelSelector", [""])[0]
                    wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
                    with kube.lock:
                        items = [
                            p.to_json(m[1])
                            for p in kube.pods.values()
                            if wanted.items() <= p.labels.items()
                        ]
                    return self._send(
                        200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
                    )
                if m := re.fullmatch(r"/api/v1/namespaces/[^/]+/pods/([^/]+)/log", url.path):
                    return self._follow_log(m[1])
                self._not_found(self.path)

            def _follow_log(self, name: str) -> None:
                pod = kube.pods.get(name)
                if pod is None:
                    return self._not_found(f"pods {name}")
                # Chunked, like the API server's followed log.
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = 0
                while True:
                    with kube.lock:
                        while len(pod.log) == sent and pod.exit_code is None:
                            kube.lock.wait()
                        chunk, done = pod.log[sent:], pod.exit_code is not None
                    # Split a line across two writes: the reader must join them.
                    half = len(chunk) // 2
                    for part in (chunk[:half], chunk[half:]):
                        if part:
                            data = part.encode()
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                            self.wfile.flush()
                    sent += len(chunk)
                    if done:
                        self.wfile.write(b"0\r\n\r\n")
                        return

            def do_DELETE(self):
                url = urlparse(self.path)
                m = re.fullmatch(r"/apis/batch/v1/namespaces/[^/]+/jobs/([^/]+)", url.path)
                if not m:
                    return self._not_found(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                kube.deletes.append(query | self._body())
                with kube.lock:
                    job = kube.jobs.pop(m[1], None)
                    if job is None:
                        return self._not_found(f"jobs {m[1]}")
                    for pod in kube._pods_of(m[1]):
                        del kube.pods[pod.name]
                        if pod.process is not None:
                            pod.process.terminate()  # its log ends when it has stopped
                        elif pod.exit_code is None:
                            pod.exit_code, pod.phase = 143, "Failed"
                    kube.lock.notify_all()
                self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

        return Handler
