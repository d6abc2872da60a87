"""`make up-cpu` for real: the CPU image built as the Makefile builds it, the compose stack
started on a real Docker engine, and the whole loop driven through the published gateway port
only. The tests run in file order on one stack; the last one takes it down and comes back."""

import json
import os
import re
import signal
import subprocess
import time
import tomllib

import httpx
import lorax
import openai
import pytest
import yaml
from huggingface_hub import InferenceClient

from tests.docker.conftest import ROOT, BuildInputs, free_port, sh
from tuneyard.statuses import TERMINAL

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

IMAGE = "tuneyard:cpu"
PROJECT = "tuneyard-docker-test"
SERVICES = ["inference", "trainer", "gateway"]
REPORT = ROOT / ".tuneyard" / "docker-stack.json"
PROMPT = "### Product\nA bamboo toothbrush\n\n### Description\nBiodegradable handle.\n\n### Email\n"
# The README's example job, saving checkpoints so that a killed trainer has one to resume from.
SAVE_STEPS = 4


class Stack:
    """One compose project of the three services, and what the tests measured on it."""

    def __init__(self, docker: str, compose: list[str], build: BuildInputs, port: int):
        self.docker = docker
        self.make_vars = build.make_vars + [
            f"TUNEYARD_PORT={port}",
            f"SERVICES={' '.join(SERVICES)}",
        ]
        self.url = f"http://127.0.0.1:{port}"
        ca = build.ca_bundle
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "TUNEYARD_PORT": str(port),
            "TUNEYARD_CA_BUNDLE": ca,
        }
        files = ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]
        self.compose_cmd = [*compose, *files, *(["-f", "docker-compose.ca.yml"] if ca else [])]
        self.report: dict = {}

    def make(self, *target: str, timeout: float) -> float:
        started = time.monotonic()
        result = subprocess.run(
            ["make", "--no-print-directory", *target, *self.make_vars],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert result.returncode == 0, f"make {target}:\n{result.stdout[-3000:]}{result.stderr}"
        return time.monotonic() - started

    def compose(self, *args: str, timeout: float = 300) -> str:
        return sh(*self.compose_cmd, *args, timeout=timeout, env=self.env)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service)

    def inspect(self, service: str) -> dict:
        return json.loads(sh(self.docker, "inspect", self.container(service)))[0]

    def exec_python(self, service: str, code: str) -> str:
        return self.compose("exec", "-T", service, "python", "-c", code)

    def wait_healthy(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {s: self.inspect(s)["State"] for s in SERVICES}
            health = {s: st.get("Health", {}).get("Status") for s, st in states.items()}
            if all(h == "healthy" for h in health.values()):
                return
            if time.monotonic() > deadline:
                logs = self.compose("logs", "--tail=40")
                raise AssertionError(f"not healthy after {timeout:.0f} s: {health}\n{logs}")
            time.sleep(3)


@pytest.fixture(scope="module")
def stack(docker, compose, build_inputs):
    stack = Stack(docker, compose, build_inputs, free_port("127.0.0.1"))
    stack.compose("down", "-v", "--remove-orphans")  # a previous run's leftovers
    try:
        stack.report["build_s"] = round(stack.make("image", "UP_CPU=1", timeout=1500), 1)
        # `make up-cpu` does both: the build again (all cached now) and compose up.
        stack.report["up_s"] = round(stack.make("up-cpu", timeout=600), 1)
        started = time.monotonic()
        stack.wait_healthy()
        stack.report["healthy_s"] = round(time.monotonic() - started, 1)
        yield stack
    finally:
        try:
            subprocess.run(
                [*stack.compose_cmd, "down", "-v", "--remove-orphans"],
                cwd=ROOT, env=stack.env, capture_output=True, timeout=300,
            )  # fmt: skip
        finally:
            # The image goes; the base image and BuildKit's cache stay for the next run.
            subprocess.run([docker, "image", "rm", "-f", IMAGE], capture_output=True)
            subprocess.run([docker, "image", "prune", "-f"], capture_output=True)
            REPORT.parent.mkdir(parents=True, exist_ok=True)
            REPORT.write_text(json.dumps(stack.report, indent=2) + "\n")
            print(f"\ndocker stack: {json.dumps(stack.report)} (in {REPORT})")


@pytest.fixture(scope="module")
def oai(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)


def test_the_image_is_a_cpu_build_for_a_non_root_user(stack):
    image = json.loads(sh(stack.docker, "image", "inspect", IMAGE))[0]
    stack.report["image_bytes"] = image["Size"]
    assert image["Config"]["User"] == "10001"
    listed = sh(stack.docker, "run", "--rm", "--entrypoint", "pip", IMAGE, "list", "--format=json")
    packages = {p["name"]: p["version"] for p in json.loads(listed)}
    assert packages["torch"].endswith("+cpu"), packages["torch"]
    # The code is the tree's, not the empty stand-ins its dependency layer was built with.
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert packages["tuneyard"] == version
    code = "import tuneyard, gateway.app; print(tuneyard.__version__)"
    assert sh(stack.docker, "run", "--rm", IMAGE, "python", "-c", code) == version
    assert not [name for name in packages if name.startswith("nvidia-")]
    # PyPI's CUDA torch made it 6.4 GB; the CPU build, the base and the model are 2.3 GB here.
    assert image["Size"] < 3 * 1024**3, image["Size"]


def test_services_run_as_non_root_and_only_the_gateway_port_is_published(stack):
    for service in SERVICES:
        assert stack.compose("exec", "-T", service, "id", "-u") == "10001", service
        assert stack.inspect(service)["State"]["Health"]["Status"] == "healthy"
    published = {
        service: sorted(
            f"{binding['HostIp']}:{binding['HostPort']}->{port}"
            for port, bindings in (stack.inspect(service)["NetworkSettings"]["Ports"] or {}).items()
            for binding in bindings or []
        )
        for service in SERVICES
    }
    port = stack.env["TUNEYARD_PORT"]
    assert published["inference"] == published["trainer"] == []
    assert {b.rsplit(":", 1)[1] for b in published["gateway"]} == {f"{port}->8080/tcp"}


def test_every_service_serves_metrics_to_the_compose_network(stack):
    """What Prometheus scrapes (deploy/prometheus/prometheus.yml), from inside the network."""
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    assert sorted(t.split(":")[0] for t in targets) == sorted(SERVICES)
    code = (
        "import sys, urllib.request\n"
        "for target in sys.argv[1:]:\n"
        "    reply = urllib.request.urlopen(f'http://{target}/metrics', timeout=10)\n"
        "    body = reply.read().decode()\n"
        "    print(target, sum(1 for l in body.splitlines() if l.startswith('tuneyard_')))\n"
    )
    out = stack.compose("exec", "-T", "gateway", "python", "-c", code, *targets)
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()}
    assert set(counts) == set(targets)
    assert all(n > 0 for n in counts.values()), counts


def test_containers_trust_the_ca_bundle_they_were_given(stack):
    if not stack.env["TUNEYARD_CA_BUNDLE"]:
        pytest.fail("pip here names no CA bundle; the test expects the machine's (DESIGN.md)")
    status = stack.exec_python(
        "trainer",
        "import urllib.request\n"
        "print(urllib.request.urlopen('https://pypi.org/simple/pip/', timeout=30).status)",
    )
    assert status == "200"


def _wait_job(oai: openai.OpenAI, job_id: str, until, timeout: float = 1200):
    deadline = time.monotonic() + timeout
    while True:
        job = oai.fine_tuning.jobs.retrieve(job_id)
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(3)


def test_example_job_outlives_a_killed_trainer_and_its_adapter_is_served(stack, oai, tmp_path):
    spec = yaml.safe_load((ROOT / "examples/marketing_email_cpu.yaml").read_text())
    spec["data"]["path"] = str(ROOT / "examples" / spec["data"]["path"])
    spec["training"]["save_steps"] = SAVE_STEPS
    spec_path = tmp_path / "marketing_email_cpu.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    started = time.monotonic()
    created = subprocess.run(
        [str(ROOT / ".venv/bin/tuneyard"), "--url", stack.url, "train", str(spec_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert re.search(r"uploaded \S+train\.jsonl as file-", created.stderr), created.stderr
    job_id = json.loads(created.stdout)["id"]
    stack.report["job_id"] = job_id

    # A checkpoint exists: SIGKILL the trainer's process, as the OOM killer would. Not with
    # `docker kill`: the engine takes that for a manual stop and its restart policy leaves
    # the container stopped (20.10, `unless-stopped` and `always` alike).
    _wait_job(oai, job_id, lambda j: list(oai.fine_tuning.jobs.checkpoints.list(j.id)))
    trainer = stack.inspect("trainer")
    os.kill(trainer["State"]["Pid"], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while stack.inspect("trainer")["State"]["StartedAt"] == trainer["State"]["StartedAt"]:
        assert time.monotonic() < deadline, "compose did not restart the killed trainer"
        time.sleep(1)
    assert stack.inspect("trainer")["RestartCount"] == trainer["RestartCount"] + 1
    stack.wait_healthy(timeout=300)

    job = _wait_job(oai, job_id, lambda j: j.status in TERMINAL)
    stack.report["job_s"] = round(time.monotonic() - started, 1)
    assert job.status == "succeeded", job.error
    events = [e.message for e in oai.fine_tuning.jobs.list_events(job_id, limit=1000).data]
    restarted = "the trainer restarted while the job was running; it will resume from"
    assert any(m.startswith(restarted) for m in events), events

    name = spec["adapter_name"]
    assert oai.models.retrieve(name).model_extra["root"] == job.fine_tuned_model
    tuned = InferenceClient(model=stack.url, timeout=120).text_generation(
        PROMPT, adapter_id=name, max_new_tokens=24
    )
    completion = oai.completions.create(model=name, prompt=PROMPT, max_tokens=24, temperature=0)
    assert completion.choices[0].text == tuned
    base = lorax.Client(stack.url, timeout=120).generate(PROMPT, max_new_tokens=24)
    assert base.generated_text != tuned
    stack.report["tuned_text"] = tuned


def test_down_and_up_keep_the_job_its_events_its_file_and_the_adapter(stack, oai):
    job_id = stack.report["job_id"]
    before = {
        "job": oai.fine_tuning.jobs.retrieve(job_id).status,
        "events": len(oai.fine_tuning.jobs.list_events(job_id, limit=1000).data),
        "files": sorted(f.id for f in oai.files.list()),
    }
    stack.compose("down")
    started = time.monotonic()
    stack.compose("up", "-d", *SERVICES)
    stack.wait_healthy()
    stack.report["restart_healthy_s"] = round(time.monotonic() - started, 1)
    assert before["files"], "the upload is gone before the restart"
    after = {
        "job": oai.fine_tuning.jobs.retrieve(job_id).status,
        "events": len(oai.fine_tuning.jobs.list_events(job_id, limit=1000).data),
        "files": sorted(f.id for f in oai.files.list()),
    }
    assert after == before
    parameters = {"adapter_id": "marketing-email", "max_new_tokens": 24}
    again = httpx.post(
        f"{stack.url}/generate", json={"inputs": PROMPT, "parameters": parameters}, timeout=120
    )
    assert again.status_code == 200, again.text
    assert again.json()["generated_text"] == stack.report["tuned_text"]
