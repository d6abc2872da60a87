"""Offline checks of deploy/ and the compose files with the tools an operator would use:
kubectl kustomize + kubernetes-validate, docker-compose config, promtool, hadolint."""

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "k8s" / "overlays").iterdir())
DOCKERFILES = sorted(DEPLOY.glob("Dockerfile*"))
# Custom resources: kubernetes-validate has no schema for them and only warns; each is
# checked below against what it refers to instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(VENV_BIN))
    if path is None:
        pytest.skip(f"{name} is not installed (make tools, and pyproject's [dev] extra)")
    return path


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120)


@functools.cache
def kustomize(overlay: str) -> str:
    result = run(tool("kubectl"), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay))
    assert result.returncode == 0, result.stderr
    return result.stdout


def resources(overlay: str) -> dict[tuple[str, str], dict]:
    docs = [d for d in yaml.safe_load_all(kustomize(overlay)) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_the_overlays_are_gpu_and_cpu():
    assert OVERLAYS == ["cpu", "gpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_strict_schema_validation(overlay):
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", "-", stdin=kustomize(overlay))
    assert result.returncode == 0, result.stdout + result.stderr
    unvalidated = set(re.findall(r"Couldn't find schema for kind (\w+)", result.stdout))
    assert unvalidated <= CRD_KINDS, result.stdout
    assert "ERROR" not in result.stdout


def test_strict_validation_catches_a_typo():
    """The check above can fail: an unknown field is rejected."""
    bad = kustomize("gpu").replace("terminationGracePeriodSeconds:", "terminationGraceSeconds:")
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", "-", stdin=bad)
    assert result.returncode != 0 and "terminationGraceSeconds" in result.stdout


def test_gpu_overlay_puts_inference_on_the_gpu_pool_with_grpc_probes():
    res = resources("gpu")
    pod = res[("Deployment", "tuneyard-inference")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50052
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    trainer_env = {
        e["name"]: e.get("value")
        for e in res[("Deployment", "tuneyard-trainer")]["spec"]["template"]["spec"]["containers"][
            0
        ]["env"]
    }
    assert trainer_env["TUNEYARD_EXECUTOR"] == "kubernetes"
    assert json.loads(trainer_env["TUNEYARD_K8S_NODE_SELECTOR"]) == pod["nodeSelector"]
    assert json.loads(trainer_env["TUNEYARD_K8S_TOLERATIONS"]) == pod["tolerations"]


def test_cpu_overlay_asks_for_no_gpu_and_has_no_autoscaler():
    text = kustomize("cpu")
    assert "nvidia.com/gpu" not in text
    assert not any(kind == "ScaledObject" for kind, _ in resources("cpu"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_between_resources_resolve(overlay):
    res = resources(overlay)
    names = {kind: {n for k, n in res if k == kind} for kind, _ in res}
    for (kind, name), doc in res.items():
        if kind != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in pod.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        assert claims <= names["PersistentVolumeClaim"], name
        for source in pod["containers"][0].get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            kind_ref = "ConfigMap" if "configMapRef" in source else "Secret"
            assert ref["name"] in names[kind_ref], name
        if account := pod.get("serviceAccountName"):
            assert account in names["ServiceAccount"]
    # The trainer's Role lets it run Jobs and read their pods' logs.
    rules = res[("Role", "tuneyard-trainer")]["rules"]
    granted = {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    for needed in [
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("batch", "jobs", "get"),
        ("", "pods", "list"),
        ("", "pods/log", "get"),
    ]:
        assert needed in granted
    # The executor mounts these claims by name in every training Job.
    env = {
        e["name"]: e.get("value")
        for e in res[("Deployment", "tuneyard-trainer")]["spec"]["template"]["spec"]["containers"][
            0
        ]["env"]
    }
    assert {env["TUNEYARD_K8S_HOME_PVC"], env["TUNEYARD_K8S_ADAPTERS_PVC"]} <= names[
        "PersistentVolumeClaim"
    ]
    assert res[("PersistentVolumeClaim", "tuneyard-adapters")]["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_point_at_real_targets(overlay):
    res = resources(overlay)
    monitor = res[("ServiceMonitor", "tuneyard")]["spec"]
    scraped = [
        d
        for (k, _), d in res.items()
        if k == "Service"
        and monitor["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()
    ]
    assert {d["metadata"]["name"] for d in scraped} == {
        "tuneyard-gateway",
        "tuneyard-inference",
        "tuneyard-trainer",
    }
    endpoint_ports = {e["port"] for e in monitor["endpoints"]}
    for service in scraped:
        assert endpoint_ports & {p["name"] for p in service["spec"]["ports"]}
    rules = res[("PrometheusRule", "tuneyard")]["spec"]
    assert rules == yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    if ("ScaledObject", "tuneyard-inference") in res:
        target = res[("ScaledObject", "tuneyard-inference")]["spec"]["scaleTargetRef"]["name"]
        assert ("Deployment", target) in res


SERVICE_PODS = ("tuneyard-gateway", "tuneyard-trainer", "tuneyard-inference")


def pod_of(res: dict, name: str) -> dict:
    return res[("Deployment", name)]["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_token_is_a_file_in_the_three_service_pods_only(overlay):
    """tuneyard.service_auth: TUNEYARD_SERVICE_TOKENS_FILE names the mounted Secret's key."""
    res = resources(overlay)
    secret = res[("Secret", "tuneyard-service-token")]
    (key,) = secret["stringData"]
    assert secret["stringData"][key].startswith("replace-me")  # the services warn of it
    for name in SERVICE_PODS:
        pod = pod_of(res, name)
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        volume = next(
            v
            for v in pod["volumes"]
            if v.get("secret", {}).get("secretName") == "tuneyard-service-token"
        )
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        assert mount["readOnly"] is True
        assert env["TUNEYARD_SERVICE_TOKENS_FILE"] == f"{mount['mountPath']}/{key}", name
        # Readable by the service's user through its group, by no one else.
        assert volume["secret"]["defaultMode"] == 0o440
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    # Not in the Secret every training pod gets as its environment.
    trainer_env = {
        e["name"]: e.get("value") for e in pod_of(res, "tuneyard-trainer")["containers"][0]["env"]
    }
    shared = res[("Secret", trainer_env["TUNEYARD_K8S_SECRET"])]
    assert not any("SERVICE_TOKEN" in k for k in shared.get("stringData", {}))


def policies_of(res: dict, target: str) -> list[dict]:
    """The specs of the NetworkPolicies that select `target`'s pods."""
    labels = res[("Deployment", target)]["spec"]["template"]["metadata"]["labels"]
    return [
        policy["spec"]
        for (kind, _), policy in res.items()
        if kind == "NetworkPolicy"
        and policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]


def allowed_sources(res: dict, target: str, port: int) -> list[dict]:
    """The `from` peers of every NetworkPolicy rule that lets them reach `target`'s port."""
    peers = []
    for spec in policies_of(res, target):
        assert "Ingress" in spec["policyTypes"]
        for rule in spec.get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            assert rule.get("from") and ports, "a rule open to every source or port"
            if port in ports:
                peers.extend(rule["from"])
    return peers


def pods_named(peers: list[dict]) -> set[str]:
    names = set()
    for peer in peers:
        if "podSelector" in peer and "namespaceSelector" not in peer:
            names.add(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_only_the_callers_reach_the_grpc_ports(overlay):
    res = resources(overlay)
    ports = {
        name: {p["name"]: p["containerPort"] for p in pod_of(res, name)["containers"][0]["ports"]}
        for name in ("tuneyard-trainer", "tuneyard-inference")
    }
    # Inference: the gateway, and the trainer (adapter notices, parity gate, evaluations).
    inference = allowed_sources(res, "tuneyard-inference", ports["tuneyard-inference"]["grpc"])
    assert pods_named(inference) == {"tuneyard-gateway", "tuneyard-trainer"}
    assert all("namespaceSelector" not in p and "ipBlock" not in p for p in inference)
    # Trainer: the gateway only; training pods report through their log.
    trainer = allowed_sources(res, "tuneyard-trainer", ports["tuneyard-trainer"]["grpc"])
    assert pods_named(trainer) == {"tuneyard-gateway"} and len(trainer) == 1
    # Metrics: from the namespace of the Prometheus that KEDA asks.
    for name in ("tuneyard-trainer", "tuneyard-inference"):
        (peer,) = allowed_sources(res, name, ports[name]["metrics"])
        namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        if ("ScaledObject", "tuneyard-inference") in res:
            keda = res[("ScaledObject", "tuneyard-inference")]["spec"]["triggers"][0]
            assert f".{namespace}.svc:" in keda["metadata"]["serverAddress"]
        assert namespace == "monitoring"
    assert all(policies_of(res, name) for name in ("tuneyard-trainer", "tuneyard-inference"))
    # The gateway stays reachable (its Service is the way in): no policy selects it.
    assert not policies_of(res, "tuneyard-gateway")


@pytest.mark.parametrize("override", ["docker-compose.gpu.yml", "docker-compose.cpu.yml"])
def test_compose_publishes_no_grpc_port_and_gives_the_three_the_token(override):
    services = compose_config(override)["services"]
    assert not services["inference"].get("ports") and not services["trainer"].get("ports")
    for name in ("prometheus", "grafana"):  # UIs on the host's loopback only
        for port in services[name]["ports"]:  # "ip:host:container" (v1), a mapping (v2)
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", name
    for name in ("inference", "trainer", "gateway"):
        assert "TUNEYARD_SERVICE_TOKENS" in services[name]["environment"], name


def test_grafana_dashboard_configmap_is_the_dashboard_file():
    data = resources("gpu")[("ConfigMap", "tuneyard-grafana-dashboard")]["data"]
    assert json.loads(data["tuneyard.json"]) == json.loads(
        (DEPLOY / "grafana" / "dashboards" / "tuneyard.json").read_text()
    )


@pytest.mark.parametrize("override", ["docker-compose.gpu.yml", "docker-compose.cpu.yml", None])
def test_compose_config_is_valid(override):
    files = ["-f", "docker-compose.yml"] + (["-f", override] if override else [])
    result = run(tool("docker-compose"), *files, "config", "-q")
    assert result.returncode == 0, result.stderr


def compose_config(override: str) -> dict:
    result = run(tool("docker-compose"), "-f", "docker-compose.yml", "-f", override, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_gpu_stack_reserves_gpus_and_waits_for_health():
    services = compose_config("docker-compose.gpu.yml")["services"]
    for name in ("inference", "trainer"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert "adapters:/adapters" in str(services[name]["volumes"]) or any(
            v.get("source") == "adapters" for v in services[name]["volumes"]
        )
        assert services[name]["healthcheck"]["test"]
    assert services["gateway"]["depends_on"]["inference"]["condition"] == "service_healthy"
    assert services["inference"]["shm_size"]


def test_compose_cpu_stack_reserves_no_gpu():
    services = compose_config("docker-compose.cpu.yml")["services"]
    for name in ("inference", "trainer", "gateway"):
        assert "deploy" not in services[name]
        assert services[name]["image"] == "tuneyard:cpu"


def test_promtool_checks_config_and_rules():
    promtool = tool("promtool")
    result = run(promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(promtool, "check", "rules", str(DEPLOY / "prometheus" / "rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path):
    """The rules check can fail: a bad expression is an error."""
    broken = (DEPLOY / "prometheus" / "rules.yml").read_text().replace("> 32", "> > 32")
    (tmp_path / "rules.yml").write_text(broken)
    assert run(tool("promtool"), "check", "rules", str(tmp_path / "rules.yml")).returncode != 0


def test_compose_scrapes_all_three_services():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert targets == {"gateway:8080", "inference:9102", "trainer:9101"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    result = run(tool("hadolint"), str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfiles_are_multistage_non_root_with_healthcheck():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu"}
    for path in DOCKERFILES:
        text = path.read_text()
        assert text.count("\nFROM ") >= 2, path.name
        assert "\nUSER 10001" in text and "\nHEALTHCHECK " in text, path.name
        assert "-c constraints.txt" in text, path.name
    assert "tuneyard.embedded_model" in (DEPLOY / "Dockerfile.cpu").read_text()


@pytest.mark.parametrize(
    ("target", "override"),
    [
        (["up"], "docker-compose.gpu.yml"),
        (["up", "UP_CPU=1"], "docker-compose.cpu.yml"),
        (["up-cpu"], "docker-compose.cpu.yml"),
        (["down"], "docker-compose.gpu.yml"),
        (["logs"], "docker-compose.gpu.yml"),
    ],
)
def test_make_targets_use_the_right_compose_files(target, override):
    result = run(tool("make"), "-n", "--no-print-directory", *target)
    assert result.returncode == 0, result.stderr
    assert f"-f docker-compose.yml -f {override}" in result.stdout
    assert (ROOT / override).is_file()
