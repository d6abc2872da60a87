"""vLLM's OpenAI-compatible server as a child process of the inference service, driven the
way a service drives its database: started from vLLM's own environment (its pins clash with
ours), watched, and restarted when it dies. Or, with TUNEYARD_VLLM_URL, a server someone
else runs (a sidecar container), only watched.

Readiness is vLLM's own `/health`; every change is reported to `on_ready`, which the
service wires to its gRPC health status.
"""

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tuneyard.errors import FailedPrecondition
from tuneyard.local_stack import free_port

from .settings import InferenceSettings

log = logging.getLogger(__name__)

SOURCE_ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = SOURCE_ROOT / ".venv-vllm"
SERVED_BASE = "base"  # vLLM's name for the base model; adapters are "name@version"
_MISSES_BEFORE_DOWN = 3  # failed /health polls in a row before a live child is not ready
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM takes


def vllm_python(settings: InferenceSettings) -> str:
    if settings.vllm_python:
        return settings.vllm_python
    venv_python = VLLM_VENV / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def vllm_installed(settings: InferenceSettings) -> bool:
    """Whether vLLM is in its environment (asked of that Python: it is not ours)."""
    if settings.vllm_url:
        return True
    check = subprocess.run(
        [vllm_python(settings), "-c", "import importlib.util as u; exit(not u.find_spec('vllm'))"],
        capture_output=True,
    )
    return check.returncode == 0


def vllm_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM takes that holds adapters of `rank`."""
    return next((r for r in _LORA_RANKS if r >= rank), _LORA_RANKS[-1])


def server_args(
    settings: InferenceSettings, model_path: Path, device: str, dtype: str, lora_rank: int
) -> list[str]:
    """The vLLM server's command line for these settings (the child's port comes after).
    `lora_rank`: its --max-lora-rank. vLLM sizes every LoRA kernel by it, so it is the
    largest rank served, not the largest allowed: rank 64 for rank-16 adapters made vLLM
    4x slower on a CPU."""
    args = [
        vllm_python(settings),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_path),
        "--served-model-name",
        SERVED_BASE,
        "--dtype",
        dtype,
        "--max-model-len",
        str(settings.max_total_tokens),
        "--max-num-seqs",
        str(settings.max_batch_size),
        "--tensor-parallel-size",
        str(settings.vllm_tensor_parallel_size),
        # Our logprobs are of the distribution the token was chosen from, as the native
        # engine reports them (penalties, bias and temperature applied).
        "--logprobs-mode",
        "processed_logprobs",
        # llguidance, as the native engine's grammars: the same schemas and regexes compile.
        "--structured-outputs-config",
        '{"backend": "guidance"}',
        "--disable-uvicorn-access-log",
        "--uvicorn-log-level",
        "warning",
    ]
    if settings.merged_adapter == "":
        args += [
            "--enable-lora",
            "--max-lora-rank",
            str(vllm_lora_rank(lora_rank)),
            "--max-loras",
            str(min(settings.max_loaded_adapters, settings.max_batch_size)),
            "--max-cpu-loras",
            str(settings.max_loaded_adapters),
        ]
    if device.startswith("cuda"):
        args += ["--gpu-memory-utilization", str(settings.vllm_gpu_memory_utilization)]
    if settings.quantization == "4bit":
        if (settings.quant_type, settings.double_quant) != ("nf4", True):
            raise FailedPrecondition(
                "the vllm engine quantizes in flight to NF4 with double quantization only: "
                "set TUNEYARD_QUANT_TYPE=nf4 and TUNEYARD_DOUBLE_QUANT=true, or use the "
                "native engine",
                param="quant_type",
            )
        args += ["--quantization", "bitsandbytes"]
    elif settings.quantization == "8bit":
        raise FailedPrecondition(
            "the vllm engine quantizes in flight to 4 bit only (bitsandbytes): set "
            "TUNEYARD_QUANTIZATION=4bit, or serve an AWQ/GPTQ checkpoint (vLLM reads its "
            "quantization from its config)",
            param="quantization",
        )
    return args + shlex.split(settings.vllm_extra_args)


# Run first in the child, a fresh process (a `preexec_fn` runs Python between fork and exec
# of this threaded service, where a lock another thread held can crash it): SIGTERM when
# the thread that started it ends (Linux), then exec vLLM's server in its place.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        sys.exit("the service that started vLLM is gone")
os.execv(sys.argv[2], sys.argv[2:])
"""


def _end(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()  # vLLM's server then stops its engine processes
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _kill_group(process: subprocess.Popen | None) -> None:
    """What is left of a child's process group (its engine core and workers, which
    outlive a killed server and would hold its memory and cores)."""
    if process is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


class VllmServer:
    def __init__(
        self,
        settings: InferenceSettings,
        args: list[str],
        on_ready: Callable[[bool], None] = lambda ready: None,
    ):
        self.settings = settings
        self.on_ready = on_ready
        self.url = settings.vllm_url.rstrip("/")
        self.port = 0  # 0: not our child
        if not self.url:
            self.port = settings.vllm_port or free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        self._args = [*args, "--host", "127.0.0.1", "--port", str(self.port)]
        self._planned = threading.Event()  # the child's next exit is restart()'s
        self.ready = False
        # Bumped at each (re)start: runtime-loaded adapters must be loaded again after one.
        self.generation = 0
        self.restarts = 0
        self._process: subprocess.Popen | None = None
        self._unhealthy_since: float | None = None  # since its start, or its last 200
        self._stopping = threading.Event()
        self._ready_changed = threading.Condition()
        self._watcher = threading.Thread(target=self._watch, name="vllm-watch", daemon=True)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        self._watcher.start()

    def wait_ready(self, timeout: float) -> bool:
        with self._ready_changed:
            return self._ready_changed.wait_for(lambda: self.ready, timeout)

    def stop(self) -> None:
        self._stopping.set()
        _end(self._process)
        self._watcher.join(timeout=5)
        _kill_group(self._process)  # the last child the watcher started

    def restart(self, args: list[str]) -> None:
        """A planned restart with a new command line: not ready from now on, the child
        stopped cleanly; the watcher starts the new one at once (no back-off, not counted
        as a crash). `wait_ready` then waits for it."""
        self._args = [*args, "--host", "127.0.0.1", "--port", str(self.port)]
        self._planned.set()
        self._set_ready(False)
        # This child, held here: once it exits the watcher may already start the next,
        # which the kill of this one's process group must not reach.
        process = self._process
        _end(process)
        _kill_group(process)

    def _spawn(self) -> None:
        env = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": f"{self.settings.vllm_cpu_kv_cache_gib:g}",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
        }
        if "--gpu-memory-utilization" not in self._args:
            env.setdefault("VLLM_TARGET_DEVICE", "cpu")  # vllm-cpu registers as a plugin
        log.info("starting vLLM: %s", shlex.join(self._args))
        self._unhealthy_since = time.monotonic()
        # Its own session: a signal to the service's process group is not its stop (stop()
        # is); and it dies with the service, even a killed one, rather than hold the GPU.
        command = [self._args[0], "-c", _DIE_WITH_PARENT, str(os.getpid()), *self._args]
        self._process = subprocess.Popen(command, env=env, start_new_session=True)

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            with self._ready_changed:
                self.ready = ready
                if ready:
                    self.generation += 1
                self._ready_changed.notify_all()
            log.info("vLLM %s", "ready" if ready else "not ready")
            self.on_ready(ready)

    def _healthy(self, client: httpx.Client) -> bool:
        try:
            return client.get(self.url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _watch(self) -> None:
        """Start the child, poll /health, restart the child when it exits (backing off)."""
        backoff, misses = 1.0, 0
        with httpx.Client() as client:
            while not self._stopping.is_set():
                if self.port and (self._process is None or self._process.poll() is not None):
                    if self._planned.is_set():
                        self._planned.clear()
                        log.info("restarting vLLM with new arguments")
                    elif self._process is not None:
                        log.error(
                            "vLLM exited with code %s; restarting in %.0f s",
                            self._process.returncode,
                            backoff,
                        )
                        self._set_ready(False)
                        _kill_group(self._process)
                        self.restarts += 1
                        if self._stopping.wait(backoff):
                            return
                        backoff = min(backoff * 2, 30)
                    self._spawn()
                healthy = self._healthy(client)
                if healthy and not self.ready:
                    backoff = 1.0
                if healthy:
                    self._unhealthy_since = None
                    misses = 0
                else:
                    misses += 1
                    if self._unhealthy_since is None:
                        self._unhealthy_since = time.monotonic()
                # A live child that misses one poll (a busy machine) is not yet down.
                if healthy or misses >= _MISSES_BEFORE_DOWN:
                    self._set_ready(healthy)
                down_for = time.monotonic() - (self._unhealthy_since or time.monotonic())
                if self.port and down_for > self.settings.vllm_start_timeout_s:
                    log.error("vLLM not healthy for %.0f s: killing it", down_for)
                    self._process.kill()
                    self._unhealthy_since = None
                self._stopping.wait(0.5 if healthy else 0.25)
        self._set_ready(False)
