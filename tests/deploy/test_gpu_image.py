"""What can be checked of the GPU image without a GPU or its CUDA base: the same build
arguments as the CPU image, and pins that resolve for the image's Python on Linux x86_64 with
CUDA wheels matching the base image's CUDA (pip's resolver against PyPI, nothing installed)."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.docker.conftest import pip_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# The base image's Ubuntu, and the Python its python3 package is.
UBUNTU_PYTHON = {"ubuntu24.04": "3.12", "ubuntu22.04": "3.10"}


def build_args(dockerfile: Path) -> set[str]:
    return set(re.findall(r"^ARG (\w+)", dockerfile.read_text(), flags=re.M))


def gpu_base_image() -> str:
    found = re.search(r"^ARG BASE_IMAGE=(\S+)", (DEPLOY / "Dockerfile.gpu").read_text(), re.M)
    assert found, "Dockerfile.gpu has no default BASE_IMAGE"
    return found.group(1)


def test_both_dockerfiles_take_the_same_build_arguments_and_ca_secret():
    cpu, gpu = DEPLOY / "Dockerfile.cpu", DEPLOY / "Dockerfile.gpu"
    assert build_args(cpu) == build_args(gpu)
    assert {"BASE_IMAGE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"} <= build_args(cpu)
    for dockerfile in (cpu, gpu):
        text = dockerfile.read_text()
        assert "--mount=type=secret,id=ca_bundle" in text, dockerfile.name
        # A `# syntax=` line makes BuildKit pull its frontend from Docker Hub: no air-gap.
        assert not re.search(r"^# *syntax=", text, flags=re.M), dockerfile.name


def resolve(requirements: list[str], constraints: Path, python: str, scratch: Path) -> dict:
    """pip's resolution for Linux x86_64 wheels of `python`, as {name: version}. pip takes
    another platform only for a --target, which a dry run never writes."""
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 16, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    cert = pip_config().get("cert")
    args = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
        "--report", "-", "--target", str(scratch / "target"), "--only-binary=:all:",
        "--python-version", python, "--implementation", "cp",
        "--index-url", "https://pypi.org/simple", "-c", str(constraints),
        *[f"--platform={p}" for p in platforms], *(["--cert", cert] if cert else []),
        *requirements,
    ]  # fmt: skip
    # As pip in the image sees it: no pip configuration of this machine (its local wheels).
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}


@pytest.fixture(scope="module")
def gpu_python() -> str:
    ubuntu = next((u for u in UBUNTU_PYTHON if gpu_base_image().endswith(u)), None)
    assert ubuntu, f"which Python is in {gpu_base_image()}? add it to UBUNTU_PYTHON"
    return UBUNTU_PYTHON[ubuntu]


def cuda_major(base_image: str) -> str:
    found = re.search(r"nvidia/cuda:(\d+)\.", base_image)
    assert found, base_image
    return found.group(1)


@pytest.mark.slow
def test_the_gpu_images_pins_resolve_to_cuda_wheels_of_the_base_images_cuda(gpu_python, tmp_path):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dependencies = pyproject["project"]["dependencies"]
    services = resolve(dependencies, ROOT / "constraints.txt", gpu_python, tmp_path)
    vllm = resolve(["vllm"], DEPLOY / "constraints-vllm-gpu.txt", gpu_python, tmp_path)
    major = cuda_major(gpu_base_image())
    for name, resolved in (("services", services), ("vllm", vllm)):
        assert "+" not in resolved["torch"], (name, resolved["torch"])  # PyPI's CUDA build
        runtime = resolved.get("nvidia-cuda-runtime") or resolved.get(
            f"nvidia-cuda-runtime-cu{major}"
        )
        assert runtime and runtime.split(".")[0] == major, (name, runtime, gpu_base_image())
    assert "bitsandbytes" in services
