"""Settings of the inference service (environment variables with the TUNEYARD_ prefix)."""

from typing import Literal

from pydantic import Field, model_validator

from tuneyard.config import CommonSettings


class InferenceSettings(CommonSettings):
    inference_host: str = "127.0.0.1"
    inference_port: int = 50052
    inference_metrics_port: int = Field(9102, description="Prometheus /metrics port; 0 = off.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1...")
    dtype: str = Field(
        "auto",
        description="auto (bf16 on GPUs and on CPUs with native bf16, AMX or AVX512-BF16; "
        "fp32 on other CPUs) or a torch dtype.",
    )
    quantization: Literal["none", "8bit", "4bit"] = "none"
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type (quantization 4bit; the vllm engine: nf4 only)."
    )
    double_quant: bool = Field(
        True,
        description="4 bit: quantize the quantization constants too (QLoRA's default; the "
        "vllm engine: on only).",
    )
    adapter_quant_mismatch: Literal["allow", "warn", "refuse"] = Field(
        "warn",
        description="An adapter trained on a base quantized otherwise than this service "
        "serves it (QLoRA served on 16 bit...): allow it, warn (log it at load; both list it "
        "unfaithful and count its requests), or refuse it at load (FAILED_PRECONDITION).",
    )
    merged_adapter: str = Field(
        "", description="Serve only this adapter, merged into the base weights; '' = off."
    )
    max_loaded_adapters: int = Field(8, ge=1)
    max_adapter_rank: int = Field(64, ge=1)
    max_input_tokens: int = Field(1024, ge=1)
    max_total_tokens: int = Field(2048, ge=2)
    default_max_new_tokens: int = Field(100, ge=1)
    max_batch_size: int = Field(8, ge=1)
    max_batch_wait_ms: float = Field(5.0, ge=0)
    max_queue: int = Field(64, ge=1)
    engine_threads: int = Field(
        0,
        ge=0,
        description="CPU threads of the engine's forward (no other thread of the service "
        "computes on more than one); 0 = torch's choice: OMP_NUM_THREADS, else the cores.",
    )
    decode: Literal["auto", "dynamic", "static"] = Field(
        "auto",
        description="static: preallocated KV buffers, CUDA graphs on a GPU (Llama-shaped "
        "models); dynamic: a growing KV cache, any model; auto: static on CUDA when supported.",
    )
    cuda_graphs: bool = Field(True, description="Replay decode steps as CUDA graphs (static).")
    engine: Literal["auto", "native", "vllm"] = Field(
        "auto",
        description="native: our PyTorch engine in this process; vllm: vLLM's server as a "
        "child process (or TUNEYARD_VLLM_URL); auto: vllm on CUDA hosts where it is "
        "installed, native elsewhere.",
    )
    vllm_python: str = Field(
        "",
        description="The Python of vLLM's own environment; '' = .venv-vllm beside the "
        "source tree (make vllm) when it exists, else this interpreter.",
    )
    vllm_url: str = Field(
        "", description="A vLLM server run by someone else (a sidecar); '' = start a child."
    )
    vllm_port: int = Field(0, ge=0, description="The child's loopback port; 0 = any free one.")
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    vllm_cpu_kv_cache_gib: float = Field(1.0, gt=0, description="KV cache size on a CPU host.")
    vllm_extra_args: str = Field("", description="More vLLM server flags, shell-quoted.")
    vllm_start_timeout_s: float = Field(900, gt=0)
    metrics_max_adapters: int = Field(
        20, ge=1, description="Distinct `adapter` label values in metrics; others are 'other'."
    )

    @model_validator(mode="after")
    def _input_fits_total(self):
        if self.max_input_tokens >= self.max_total_tokens:
            raise ValueError(
                f"max_input_tokens ({self.max_input_tokens}) must be below "
                f"max_total_tokens ({self.max_total_tokens})"
            )
        return self
