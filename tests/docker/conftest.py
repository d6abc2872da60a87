"""The Docker engine and the build inputs of the `docker` tests, taken from this machine the
way deploy/README.md tells an operator behind a proxy or air-gapped to give them: a base image
made from Debian's packages, the CPU torch wheel from a local folder served over HTTP, and the
CA bundle pip trusts."""

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "tuneyard-base:bookworm"
ENGINE_LOG = ROOT / ".tuneyard" / "dockerd.log"


def sh(*args: str, timeout: float = 120, check: bool = True, env: dict | None = None) -> str:
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result.stdout.strip()


def _engine_answers(docker: str) -> bool:
    return subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode == 0


def _buildkit_client() -> str:
    """A docker client that builds with BuildKit: one with buildx, or one older than 23, whose
    own builder is BuildKit under DOCKER_BUILDKIT=1 (Debian's docker.io)."""
    for candidate in dict.fromkeys(filter(None, [shutil.which("docker"), "/usr/bin/docker"])):
        if not os.access(candidate, os.X_OK):
            continue
        if subprocess.run([candidate, "buildx", "version"], capture_output=True).returncode == 0:
            return candidate
        version = sh(candidate, "version", "--format", "{{.Client.Version}}", check=False)
        if version and int(version.split(".")[0]) < 23:
            return candidate
    raise AssertionError("no docker client with BuildKit: install buildx or Debian's docker.io")


@pytest.fixture(scope="session")
def docker() -> str:
    """The engine, started here when it is installed but not running (as .ci/run's machine
    has it after `make tools`)."""
    if not shutil.which("dockerd"):
        pytest.fail("no Docker engine: `make tools` installs Debian's docker.io and debootstrap")
    client = _buildkit_client()
    if not _engine_answers(client):
        if os.geteuid() != 0:
            pytest.fail("the Docker engine is not running, and starting it needs root")
        ENGINE_LOG.parent.mkdir(parents=True, exist_ok=True)
        with open(ENGINE_LOG, "ab") as log:
            subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while not _engine_answers(client):
            assert time.monotonic() < deadline, f"dockerd did not start: see {ENGINE_LOG}"
            time.sleep(1)
    return client


@pytest.fixture(scope="session")
def compose(docker) -> list[str]:
    """The compose command the Makefile picks (v2 plugin, else Debian's docker-compose)."""
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    path = shutil.which("docker-compose")
    assert path, "no docker compose: `make tools` installs Debian's docker-compose"
    return [path]


@pytest.fixture(scope="session")
def base_image(docker) -> str:
    """Debian bookworm from debootstrap, kept between runs (a minute to make)."""
    if not sh(docker, "images", "-q", BASE_IMAGE):
        if not shutil.which("debootstrap"):
            pytest.fail("no debootstrap: `make tools` installs it")
        sh("make", "--no-print-directory", "base-image", timeout=900)
    return BASE_IMAGE


def pip_config() -> dict[str, str]:
    listing = sh(sys.executable, "-m", "pip", "config", "list", check=False)
    found = re.findall(r"^(?:[^.\n]*\.)?([a-z-]+)='(.*)'$", listing, flags=re.M)
    config: dict[str, str] = {}
    for key, value in found:
        config.setdefault(key, value)
    return config


def _bridge_gateway(docker: str) -> str:
    """The host's address on the default bridge: IPAM's gateway, which the engine leaves out
    of the default bridge (20.10), else the subnet's first address, which it then takes."""
    config = json.loads(sh(docker, "network", "inspect", "bridge", "-f", "{{json .IPAM.Config}}"))
    return config[0].get("Gateway") or str(ipaddress.ip_network(config[0]["Subnet"])[1])


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class BuildInputs:
    make_vars: list[str]  # as an operator passes them to `make image` / `make up-cpu`
    ca_bundle: str  # the CA_BUNDLE among them, "" if none


@pytest.fixture(scope="session")
def build_inputs(docker, base_image):
    """The Makefile's build variables for this machine. The CPU torch wheel pip's find-links
    hold is served over HTTP on the Docker bridge, in place of PyTorch's CPU index (which is
    unreachable here); without one, the Dockerfile's default index stays."""
    config = pip_config()
    make_vars = [f"BASE_IMAGE={base_image}"]
    if config.get("cert"):
        make_vars.append(f"CA_BUNDLE={config['cert']}")
    folders = [Path(p) for p in config.get("find-links", "").split()]
    wheels = next((f for f in folders if list(f.glob("torch-*+cpu-cp311-*.whl"))), None)
    server = None
    if wheels is not None:
        host = _bridge_gateway(docker)
        port = free_port(host)
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", host, "--directory", str(wheels),
             str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        make_vars += [
            "EXTRA_INDEX_URL=",
            f"FIND_LINKS=http://{host}:{port}/",
            f"TRUSTED_HOST={host}:{port}",
        ]
    yield BuildInputs(make_vars + [f"DOCKER={docker}"], config.get("cert", ""))
    if server is not None:
        server.terminate()
        server.wait(timeout=10)
