"""Serving benchmark: the naive way against the service, on the same prompts, in one run.

- naive: one request at a time, transformers `generate` on a PEFT model, `set_adapter` per
  request (what a seed script does);
- service: the inference service and the gateway as real processes (tuneyard.local_stack),
  `--clients` concurrent streaming clients spread over `--adapters` adapters;
- gateway overhead: p50 of a 1-token request through the gateway minus the same request
  straight to the inference service over gRPC, from this (separate) process;
- hot load: from the publication of a new adapter version to its first generated token;
- the bound: plain transformers `generate` with no adapter, on the same prompts and dtype,
  as one static batch of `--clients` prompts and one prompt at a time. The service is
  measured against it (`ratios`): what the machine does when nothing else is in the way.

CPU (default): the embedded SmolLM2-135M, 16 clients over 4 random r=16 q/v adapters.
GPU host: `--model llama-1b --device cuda --clients 64 --adapters 8` (bf16 there)
(a randomly initialised 1.1B Llama). `--model llama-tiny` runs that same path on a CPU.
`--engine native,vllm` measures the service once per engine, on the same prompts and
adapters, side by side (`engines` in the JSON; `service` is the first one's).
`--hot-load-stall` measures only the streams' inter-token gaps, quiet and while large new
adapters load one after another (`hot_load_stall` in the JSON).
Writes benchmarks/results/serving-<time>.json and prints a table.
"""

import argparse
import asyncio
import http.client
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import torch

from tuneyard.adapter_store import AdapterStore, Manifest
from tuneyard.local_stack import LocalStack
from tuneyard.modeling import pick_dtype, resolve_base_model
from tuneyard.service_auth import Tokens, client_channel
from tuneyard.v1 import inference_pb2, inference_pb2_grpc

RESULTS_DIR = Path(__file__).parent / "results"
# The targets: on the CPU against the naive way, on a GPU in absolute tokens/s.
CPU_TARGETS = {
    "speedup_min": 12.0,
    "gateway_overhead_ms_max": 2.0,
    "concurrent_vs_bound_min": 0.7,
    "one_stream_vs_bound_min": 1.0,
}
GPU_TARGETS = {"one_stream_tokens_per_s_min": 200.0, "concurrent_tokens_per_s_min": 5000.0}
# A large adapter loading beside running streams: their inter-token gaps, loading / quiet.
STALL_TARGETS = {"gap_p99_max": 1.5, "gap_max_max": 2.0}
# Randomly initialised Llamas: TinyLlama-1.1B's shape, and a tiny one for CPU smoke runs.
LLAMA_SHAPES = {
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
    ),
    "llama-tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}
VOCAB = 32000
WORDS = [
    "product",
    "email",
    "order",
    "today",
    "save",
    "bamboo",
    "lamp",
    "garden",
    "coffee",
    "team",
    "quality",
    "fresh",
    "design",
    "price",
    "offer",
    "launch",
    "customer",
    "delivery",
    "style",
    "comfort",
    "light",
    "travel",
    "winter",
    "summer",
    "gift",
]


def parse_args(argv=None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    # Resolved once, so the naive run, the bound and the service all use the same dtype.
    args.dtype = str(pick_dtype(args.dtype, args.device, cpu_bf16_if_native=True))
    args.dtype = args.dtype.removeprefix("torch.")
    args.engines = args.engine.split(",")
    unknown = set(args.engines) - {"native", "vllm"}
    if unknown:
        raise SystemExit(f"--engine: unknown engine(s) {', '.join(sorted(unknown))}")
    return args


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded", help="embedded, llama-1b, llama-tiny or a path")
    p.add_argument("--home", type=Path, default=Path(".tuneyard"), help="holds the embedded model")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        default="auto",
        help="both sides use it; auto: the service's choice on this machine (bf16 on GPUs and "
        "on CPUs with native bf16, else fp32)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads on both sides; 0: torch's default"
    )
    p.add_argument(
        "--engine",
        default="native",
        help="the inference service's engine: native, vllm, or both as native,vllm",
    )
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--adapters", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--naive-requests", type=int, default=0, help="0: all the prompts")
    p.add_argument("--overhead-requests", type=int, default=100)
    p.add_argument(
        "--overhead-repeats", type=int, default=3, help="the machine is noisy: its spread"
    )
    p.add_argument(
        "--one-stream-requests",
        type=int,
        default=4,
        help="one stream: this many requests one after another, on the bound and the service",
    )
    p.add_argument("--max-batch-wait-ms", type=float, default=20)
    p.add_argument(
        "--gateway-workers", type=int, default=1, help="TUNEYARD_GATEWAY_WORKERS of the service"
    )
    p.add_argument(
        "--hot-load-stall",
        action="store_true",
        help="only the hot-load stall phase: --clients streams over --adapters adapters, "
        "quiet, then while --stall-adapters adapters of rank --stall-rank load one by one",
    )
    p.add_argument("--stall-adapters", type=int, default=7)
    p.add_argument("--stall-rank", type=int, default=512)
    p.add_argument("--stall-quiet-s", type=float, default=15.0)
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    return p


# --- setup ---------------------------------------------------------------------------------
def prepare_base(args, work: Path) -> Path:
    if args.model == "embedded":
        from tuneyard.embedded_model import prepare

        return prepare(args.home)
    if args.model not in LLAMA_SHAPES:
        return Path(args.model)
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = work / args.model
    tokenizer = word_tokenizer()
    config = LlamaConfig(
        vocab_size=VOCAB,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **LLAMA_SHAPES[args.model],
    )
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(getattr(torch, args.dtype))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def word_tokenizer():
    """A word-level tokenizer with the whole vocabulary, so every id the random model
    picks decodes to text and every prompt word is exactly one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    vocab.update({f"w{i}": i for i in range(len(vocab), VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def make_adapters(
    base: Path, store: AdapterStore, count: int, rank: int, prefix: str = "bench"
) -> list[str]:
    """Random, non-zero LoRA adapters on q/v, published as trained ones would be."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ref = resolve_base_model(str(base))
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    names = []
    for i in range(count):
        torch.manual_seed(100 + i)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.normal_(0, 0.02)
        staging = store.staging_dir(f"{prefix}-{i}")
        peft_model.save_pretrained(staging)
        manifest = Manifest(
            name=f"{prefix}-{i}",
            base_model=ref.id,
            base_model_revision=ref.revision,
            recipe="causal_lm",
            template_prompt="{{ text }}",
            template_response="",
            template_sha256="",
        )
        names.append(store.publish(staging, manifest).name)
    return names


def publish_new_version(store: AdapterStore, name: str):
    latest = store.resolve(name)
    staging = store.staging_dir(name)
    for file in latest.path.iterdir():
        shutil.copy(file, staging / file.name)
    return store.publish(staging, latest.manifest())


def make_prompts(count: int, tokens: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(tokens)) for _ in range(count)]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


# --- naive -------------------------------------------------------------------------------------
def run_naive(args, base: Path, store: AdapterStore, jobs: list[tuple[str, str]]) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, args.dtype))
    names = sorted({name for name, _ in jobs})
    model = PeftModel.from_pretrained(model, store.resolve(names[0]).path, adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(store.resolve(name).path, adapter_name=name)
    model.to(args.device).eval()
    tokens = 0
    start = time.perf_counter()
    for name, prompt in jobs:
        model.set_adapter(name)
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(args.device)
        with torch.inference_mode():
            out = model.generate(
                ids,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        tokens += out.shape[1] - ids.shape[1]
    seconds = time.perf_counter() - start
    del model
    return {
        "requests": len(jobs),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
    }


def run_bound(args, base: Path, prompts: list[str]) -> dict:
    """Plain `generate`, no adapter: one static batch of `--clients` prompts (left-padded),
    and the first prompts one at a time. Every row generates `--max-new-tokens` tokens, so
    this is the machine's rate for the work, not an artefact of early stops."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(base, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, args.dtype))
    model.to(args.device).eval()
    new = args.max_new_tokens

    def timed(batch: list[str]) -> tuple[int, float]:
        encoded = tokenizer(batch, return_tensors="pt", padding=True).to(args.device)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                **encoded,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        if args.device != "cpu":
            torch.cuda.synchronize()
        return len(batch) * new, time.perf_counter() - start

    batch = prompts[: args.clients]
    timed(batch[:2])  # warm-up
    tokens, seconds = timed(batch)
    one_tokens, one_seconds = 0, 0.0
    for prompt in prompts[: args.one_stream_requests]:
        n, t = timed([prompt])
        one_tokens, one_seconds = one_tokens + n, one_seconds + t
    return {
        "static_batch_rows": len(batch),
        "static_batch_tokens_per_s": tokens / seconds,
        "one_stream_requests": args.one_stream_requests,
        "one_stream_tokens_per_s": one_tokens / one_seconds,
    }


def combine(*runs: dict) -> dict:
    requests, tokens = sum(r["requests"] for r in runs), sum(r["tokens"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    return {
        "requests": requests,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
    }


# --- service -----------------------------------------------------------------------------------
async def sse_data(http: httpx.AsyncClient, path: str, body: dict):
    """The data of each event of a streamed POST, with the time it arrived."""
    async with http.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {await response.aread()}")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                yield time.perf_counter(), line.removeprefix("data:")


async def stream_one(http: httpx.AsyncClient, prompt: str, adapter: str, max_new: int) -> tuple:
    """(seconds to the first token, generated tokens) of one streamed request."""
    body = {
        "inputs": prompt,
        "parameters": {"adapter_id": adapter, "max_new_tokens": max_new, "details": True},
    }
    start = time.perf_counter()
    first = None
    async for at, data in sse_data(http, "/generate_stream", body):
        if first is None:
            first = at - start
        event = json.loads(data)
        if event["details"] is not None:
            return first, event["details"]["generated_tokens"]
    raise RuntimeError("the stream ended without details")


async def run_load(
    url: str, jobs: list[tuple[str, str]], clients: int, max_new: int, stream=stream_one
) -> dict:
    """`clients` concurrent clients, each streaming its share of `jobs` one after another
    with `stream` (TGI's `stream_one`, or OpenAI's `stream_completion`)."""
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:

        async def client(mine):
            return [await stream(http, prompt, name, max_new) for name, prompt in mine]

        start = time.perf_counter()
        done = await asyncio.gather(*(client(jobs[i::clients]) for i in range(clients)))
        seconds = time.perf_counter() - start
    results = [r for per_client in done for r in per_client]
    ttft = [first for first, _ in results]
    tokens = sum(n for _, n in results)
    return {
        "requests": len(results),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
    }


def cpu_seconds(stack: LocalStack) -> dict[str, float]:
    """CPU time (user + system) each process has used so far: the services (the gateway
    with its workers), the vLLM child with everything it started (where it runs), and this
    process, the load client. A process that ended meanwhile is not counted."""
    used = {"client": time.process_time()}
    for service in stack.services:
        process = psutil.Process(service.process.pid)
        used[service.name] = sum(process.cpu_times()[:2])
        children = sum(sum(c.cpu_times()[:2]) for c in process.children(recursive=True))
        if service.name == "inference" and children:
            used["vllm"] = children
        else:  # the gateway's workers
            used[service.name] += children
    return used


def measured_load(stack: LocalStack, jobs, clients: int, max_new: int) -> dict:
    """`run_load`, with each process's CPU time per generated token (`cpu_us_per_token`):
    the layer's cost apart from the client's."""
    before = cpu_seconds(stack)
    load = asyncio.run(run_load(stack.gateway_url, jobs, clients, max_new))
    after = cpu_seconds(stack)
    per_token = {
        name: (after[name] - before.get(name, 0.0)) * 1e6 / load["tokens"] for name in after
    }
    per_token["layer"] = sum(v for name, v in per_token.items() if name != "client")
    load["cpu_us_per_token"] = per_token
    return load


async def stream_completion(http: httpx.AsyncClient, prompt: str, model: str, max_new: int):
    """(seconds to the first token, completion tokens) of one streamed OpenAI completion."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_new,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start, first, usage = time.perf_counter(), None, None
    async for at, data in sse_data(http, "/v1/completions", body):
        if data.strip() == "[DONE]":
            continue
        chunk = json.loads(data)
        if first is None and chunk["choices"]:
            first = at - start
        usage = chunk.get("usage") or usage
    return first, usage["completion_tokens"]


def run_raw_vllm(args, base: Path, store: AdapterStore, jobs, names) -> dict:
    """vLLM's own OpenAI server, run by hand as its docs say: the same model, adapters
    (--lora-modules at their rank), prompts, engine flags and client as the vllm engine."""
    from inference_service.settings import InferenceSettings
    from inference_service.vllm_server import VllmServer, server_args

    env = service_env(args, store, names, "vllm")
    fields = {k.removeprefix("TUNEYARD_").lower(): v for k, v in env.items()}
    settings = InferenceSettings(
        **{k: v for k, v in fields.items() if k in InferenceSettings.model_fields}
    )
    modules = [f"{name}={store.resolve(name).path}" for name in names]
    command = server_args(settings, base, args.device, args.dtype, args.rank)
    server = VllmServer(settings, [*command, "--lora-modules", *modules])
    server.start()
    try:
        if not server.wait_ready(900):
            raise RuntimeError("raw vLLM did not start")
        url = server.url
        asyncio.run(
            run_load(url, [(n, jobs[0][1]) for n in names], len(names), 2, stream_completion)
        )
        process = psutil.Process(server.pid)
        tree = [process, *process.children(recursive=True)]
        before = sum(sum(p.cpu_times()[:2]) for p in tree)
        load = asyncio.run(
            run_load(url, jobs, args.clients, args.max_new_tokens, stream_completion)
        )
        used = sum(sum(p.cpu_times()[:2]) for p in tree) - before
        load["cpu_us_per_token"] = {"vllm": used * 1e6 / load["tokens"]}
    finally:
        server.stop()
    return {"concurrent": load}


def gateway_overhead(url: str, inference_addr: str, n: int, tokens: Tokens = ()) -> dict:
    """Alternate 1-token requests through the gateway and straight over gRPC.

    Both sides use a thin client (the standard library's keep-alive HTTP connection, the
    sync gRPC stub), so the difference is the gateway's and not the HTTP library's (httpx
    costs about 1 ms more per call than http.client here). Each pair runs back to back, so
    the median of the paired differences is also given: it is less noisy than the
    difference of the two medians, which is the issue's measure and the one checked."""
    body = json.dumps({"inputs": "order today", "parameters": {"max_new_tokens": 1}})
    headers = {"content-type": "application/json"}
    request = inference_pb2.GenerateRequest(
        inputs="order today", parameters=inference_pb2.GenerationParameters(max_new_tokens=1)
    )
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    via_gateway, via_grpc = [], []
    with client_channel(inference_addr, tokens) as ch:  # the stack's service token
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        for i in range(n + 10):
            start = time.perf_counter()
            conn.request("POST", "/generate", body, headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"gateway answered {response.status}")
            middle = time.perf_counter()
            stub.Generate(request, timeout=60)
            end = time.perf_counter()
            if i >= 10:  # warm-up
                via_gateway.append(middle - start)
                via_grpc.append(end - middle)
    conn.close()
    gateway_p50, grpc_p50 = statistics.median(via_gateway), statistics.median(via_grpc)
    paired = statistics.median(g - r for g, r in zip(via_gateway, via_grpc, strict=True))
    return {
        "requests": n,
        "gateway_p50_ms": gateway_p50 * 1000,
        "grpc_p50_ms": grpc_p50 * 1000,
        "overhead_p50_ms": (gateway_p50 - grpc_p50) * 1000,
        "paired_overhead_p50_ms": paired * 1000,
    }


def overhead_repeated(url: str, inference_addr: str, args, tokens: Tokens = ()) -> dict:
    """`gateway_overhead` several times: the median of the repetitions' p50s, and their
    spread, since one run on this noisy machine says little."""
    runs = [
        gateway_overhead(url, inference_addr, args.overhead_requests, tokens)
        for _ in range(max(1, args.overhead_repeats))
    ]
    p50s = [r["overhead_p50_ms"] for r in runs]
    paired = [r["paired_overhead_p50_ms"] for r in runs]
    return {
        "requests": sum(r["requests"] for r in runs),
        "repeats": len(runs),
        "gateway_p50_ms": statistics.median(r["gateway_p50_ms"] for r in runs),
        "grpc_p50_ms": statistics.median(r["grpc_p50_ms"] for r in runs),
        "overhead_p50_ms": statistics.median(p50s),
        "overhead_p50_ms_each": p50s,
        "overhead_p50_ms_spread": [min(p50s), max(p50s)],
        "paired_overhead_p50_ms": statistics.median(paired),
    }


def hot_load(url: str, store: AdapterStore, name: str, max_new: int) -> dict:
    version = publish_new_version(store, name)
    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=60) as http:
        body = {"inputs": "order today", "parameters": {"adapter_id": name, "max_new_tokens": 1}}
        with http.stream("POST", "/generate_stream", json=body) as response:
            response.raise_for_status()
            next(line for line in response.iter_lines() if line.startswith("data:"))
            seconds = time.perf_counter() - start
        listed = http.get("/v1/adapters").json()["data"]
    loaded = any(a["id"] == version.id and a["loaded"] for a in listed)
    return {"adapter": version.id, "seconds": seconds, "new_version_loaded": loaded}


def service_env(args, store: AdapterStore, names: list[str], engine: str) -> dict[str, str]:
    """The inference service's settings for a benchmark run."""
    env = {
        "TUNEYARD_ENGINE": engine,
        "TUNEYARD_ADAPTERS_DIR": str(store.root),
        "TUNEYARD_DEVICE": args.device,
        "TUNEYARD_DTYPE": args.dtype,
        "TUNEYARD_MAX_BATCH_SIZE": str(args.clients),
        "TUNEYARD_MAX_BATCH_WAIT_MS": str(args.max_batch_wait_ms),
        "TUNEYARD_MAX_QUEUE": str(4 * args.clients),
        "TUNEYARD_MAX_LOADED_ADAPTERS": str(len(names) + 2),
        "TUNEYARD_LOG_LEVEL": "WARNING",
        "TUNEYARD_GATEWAY_WORKERS": str(args.gateway_workers),
    }
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def run_service(args, base: Path, home: Path, store: AdapterStore, jobs, names, engine) -> dict:
    env = service_env(args, store, names, engine)
    # vLLM loads and warms up for a minute or more on a small CPU.
    with LocalStack(home=home, base_model=str(base), extra_env=env, startup_timeout_s=900) as stack:
        url = stack.gateway_url
        # Adapters loaded and the engine warm before timing, as in the naive run.
        warm = [(name, jobs[0][1]) for name in names]
        asyncio.run(run_load(url, warm, len(warm), 2))
        if args.device != "cpu":
            # On a GPU, each batch shape is captured as a CUDA graph on first use: once
            # here, not in the timed runs (as vLLM captures at start-up).
            asyncio.run(run_load(url, jobs[:1], 1, args.max_new_tokens))
            asyncio.run(run_load(url, jobs, args.clients, args.max_new_tokens))
        one = asyncio.run(run_load(url, jobs[: args.one_stream_requests], 1, args.max_new_tokens))
        load = measured_load(stack, jobs, args.clients, args.max_new_tokens)
        if engine == "vllm":  # as raw vLLM is measured: the same client and route
            openai_load = asyncio.run(
                run_load(url, jobs, args.clients, args.max_new_tokens, stream_completion)
            )
        overhead = overhead_repeated(url, stack.inference_addr, args, stack.service_tokens)
        hot = hot_load(url, store, names[0], args.max_new_tokens)
    run = {"one_stream": one, "concurrent": load, "gateway_overhead": overhead, "hot_load": hot}
    if engine == "vllm":
        run["openai_concurrent"] = openai_load
    return run


# --- hot-load stall ------------------------------------------------------------------------------
async def stream_gaps(http, prompt: str, adapter: str, max_new: int, gaps: list) -> None:
    """Stream one request; append (time, seconds since its previous token) for each token
    after the first to `gaps`."""
    body = {"inputs": prompt, "parameters": {"adapter_id": adapter, "max_new_tokens": max_new}}
    last = None
    async for now, _ in sse_data(http, "/generate_stream", body):
        if last is not None:
            gaps.append((now, now - last))
        last = now


async def stall_phase(url: str, jobs, clients: int, max_new: int, work) -> dict:
    """`clients` streams, each requesting one job after another, while `work()` runs
    (a sleep, or adapters loading): the gaps between their tokens in that window."""
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        stop, gaps = asyncio.Event(), []

        async def client(i: int) -> None:
            n = i
            while not stop.is_set():
                name, prompt = jobs[n % len(jobs)]
                await stream_gaps(http, prompt, name, max_new, gaps)
                n += clients

        streams = [asyncio.create_task(client(i)) for i in range(clients)]
        await asyncio.sleep(3)  # every stream past its first request's prefill
        start = time.perf_counter()
        # One second at least: some tokens in the window however quick the work is.
        await asyncio.gather(work(http), asyncio.sleep(1))
        end = time.perf_counter()
        stop.set()
        await asyncio.gather(*streams)
    window = sorted(gap for at, gap in gaps if start <= at <= end)
    return {
        "seconds": end - start,
        "tokens": len(window),
        "tokens_per_s": len(window) / (end - start),
        "gap_p50_ms": percentile(window, 50) * 1000,
        "gap_p99_ms": percentile(window, 99) * 1000,
        "gap_max_ms": window[-1] * 1000,
    }


def run_hot_load_stall(args, base: Path, home: Path, store: AdapterStore) -> dict:
    """Streams over small adapters, quiet and then while large new adapters load one after
    another: a load must not stall the running batch. One large adapter is loaded before
    both phases, so that both compute at the same padded rank."""
    names = make_adapters(base, store, args.adapters, args.rank)
    large = make_adapters(base, store, args.stall_adapters + 1, args.stall_rank, prefix="large")
    prompts = make_prompts(args.clients * args.requests_per_client, args.prompt_tokens)
    jobs = [(names[i % len(names)], prompt) for i, prompt in enumerate(prompts)]
    env = service_env(args, store, [*names, *large], "native")
    env["TUNEYARD_MAX_ADAPTER_RANK"] = str(args.stall_rank)
    with LocalStack(home=home, base_model=str(base), extra_env=env, startup_timeout_s=900) as stack:
        url = stack.gateway_url
        asyncio.run(run_load(url, [(n, prompts[0]) for n in [*names, large[0]]], 3, 2))

        async def quiet(http):
            await asyncio.sleep(args.stall_quiet_s)

        async def loading(http):
            for name in large[1:]:
                (await http.post(f"/v1/adapters/{name}/load")).raise_for_status()

        phases = {
            "quiet": asyncio.run(stall_phase(url, jobs, args.clients, args.max_new_tokens, quiet)),
            "loading": asyncio.run(
                stall_phase(url, jobs, args.clients, args.max_new_tokens, loading)
            ),
        }
    sizes = [sum(f.stat().st_size for f in store.resolve(n).path.iterdir()) for n in large]
    calm, busy = phases["quiet"], phases["loading"]
    ratios = {
        "gap_p99_loading_vs_quiet": busy["gap_p99_ms"] / calm["gap_p99_ms"],
        "gap_max_loading_vs_quiet": busy["gap_max_ms"] / calm["gap_max_ms"],
        "tokens_per_s_loading_vs_quiet": busy["tokens_per_s"] / calm["tokens_per_s"],
    }
    return {
        **phases,
        "adapters_loaded": len(large) - 1,
        "adapter_mb": statistics.mean(sizes) / 1e6,
        "ratios": ratios,
        "targets": {
            **STALL_TARGETS,
            "gap_p99_met": ratios["gap_p99_loading_vs_quiet"] <= STALL_TARGETS["gap_p99_max"],
            "gap_max_met": ratios["gap_max_loading_vs_quiet"] <= STALL_TARGETS["gap_max_max"],
        },
    }


def stall_table(stall: dict) -> str:
    rows = [
        (
            f"{phase}: {stall[phase]['seconds']:.0f} s, tokens/s",
            f"{stall[phase]['tokens_per_s']:.1f}",
        )
        for phase in ("quiet", "loading")
    ]
    for phase in ("quiet", "loading"):
        gaps = stall[phase]
        rows.append(
            (
                f"{phase}: inter-token gap p50 / p99 / max (ms)",
                f"{gaps['gap_p50_ms']:.0f} / {gaps['gap_p99_ms']:.0f} / {gaps['gap_max_ms']:.0f}",
            )
        )
    rows += [(name, f"{value:.2f}") for name, value in stall["ratios"].items()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value:>16}" for name, value in rows)


# --- report ------------------------------------------------------------------------------------
def table(result: dict) -> str:
    naive, svc, bound = result["naive"], result["service"], result["bound"]
    load, over, hot = svc["concurrent"], svc["gateway_overhead"], svc["hot_load"]
    ratios = result["ratios"]
    low, high = over["overhead_p50_ms_spread"]
    rows = [
        (
            f"bound: plain generate, static batch of {bound['static_batch_rows']} (tokens/s)",
            f"{bound['static_batch_tokens_per_s']:.1f}",
        ),
        ("bound: plain generate, one prompt (tokens/s)", f"{bound['one_stream_tokens_per_s']:.1f}"),
        ("naive, one at a time (tokens/s)", f"{naive['tokens_per_s']:.1f}"),
        ("service, one stream (tokens/s)", f"{svc['one_stream']['tokens_per_s']:.1f}"),
        (
            f"service, {result['config']['clients']} clients / "
            f"{result['config']['adapters']} adapters (tokens/s)",
            f"{load['tokens_per_s']:.1f}",
        ),
        (
            "CPU us per token: " + ", ".join(load["cpu_us_per_token"]),
            " / ".join(f"{v:.0f}" for v in load["cpu_us_per_token"].values()),
        ),
        ("speed-up over naive", f"{result['speedup']:.1f}x"),
        ("concurrent / bound static batch", f"{ratios['concurrent_vs_bound']:.2f}"),
        ("one stream / bound one prompt", f"{ratios['one_stream_vs_bound']:.2f}"),
        (
            "TTFT p50 / p95 under load (ms)",
            f"{load['ttft_p50_s'] * 1000:.0f} / {load['ttft_p95_s'] * 1000:.0f}",
        ),
        (
            "1-token p50: gateway / gRPC (ms)",
            f"{over['gateway_p50_ms']:.2f} / {over['grpc_p50_ms']:.2f}",
        ),
        (
            f"gateway overhead p50, median of {over['repeats']} (ms)",
            f"{over['overhead_p50_ms']:.2f} [{low:.2f}, {high:.2f}]",
        ),
        ("gateway overhead, p50 of pairs (ms)", f"{over['paired_overhead_p50_ms']:.2f}"),
        (f"hot load of {hot['adapter']} to first token (ms)", f"{hot['seconds'] * 1000:.0f}"),
    ]
    if "raw_vllm" in result:
        ours, raw = result["raw_vllm"]["vllm_engine"], result["raw_vllm"]["concurrent"]
        rows += [
            ("raw vLLM OpenAI server, concurrent (tokens/s)", f"{raw['tokens_per_s']:.1f}"),
            ("vllm engine, same client and route (tokens/s)", f"{ours['tokens_per_s']:.1f}"),
            ("vllm engine / raw vLLM", f"{ratios['vllm_engine_vs_raw_vllm']:.2f}"),
            (
                "TTFT p50: vllm engine / raw vLLM (ms)",
                f"{ours['ttft_p50_s'] * 1000:.0f} / {raw['ttft_p50_s'] * 1000:.0f}",
            ),
        ]
    for engine, run in result.get("engines", {}).items():
        load, over = run["concurrent"], run["gateway_overhead"]
        rows += [
            (f"{engine}: one stream (tokens/s)", f"{run['one_stream']['tokens_per_s']:.1f}"),
            (f"{engine}: concurrent (tokens/s)", f"{load['tokens_per_s']:.1f}"),
            (
                f"{engine}: TTFT p50 / p95 under load (ms)",
                f"{load['ttft_p50_s'] * 1000:.0f} / {load['ttft_p95_s'] * 1000:.0f}",
            ),
            (f"{engine}: gateway overhead p50 (ms)", f"{over['overhead_p50_ms']:.2f}"),
        ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value:>12}" for name, value in rows)


def check_targets(result: dict, device: str) -> dict:
    svc = result["service"]
    overhead = svc["gateway_overhead"]["overhead_p50_ms"]
    if device == "cpu":
        ratios = result["ratios"]
        return {
            **CPU_TARGETS,
            "speedup_met": result["speedup"] >= CPU_TARGETS["speedup_min"],
            "gateway_overhead_met": overhead <= CPU_TARGETS["gateway_overhead_ms_max"],
            "concurrent_vs_bound_met": ratios["concurrent_vs_bound"]
            >= CPU_TARGETS["concurrent_vs_bound_min"],
            "one_stream_vs_bound_met": ratios["one_stream_vs_bound"]
            >= CPU_TARGETS["one_stream_vs_bound_min"],
        }
    return {
        **GPU_TARGETS,
        "one_stream_met": svc["one_stream"]["tokens_per_s"]
        >= GPU_TARGETS["one_stream_tokens_per_s_min"],
        "concurrent_met": svc["concurrent"]["tokens_per_s"]
        >= GPU_TARGETS["concurrent_tokens_per_s_min"],
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tuneyard-bench-"))
    if args.hot_load_stall:
        return stall_main(args, work)
    try:
        base = prepare_base(args, work)
        store = AdapterStore(work / "adapters")
        names = make_adapters(base, store, args.adapters, args.rank)
        prompts = make_prompts(args.clients * args.requests_per_client, args.prompt_tokens)
        jobs = [(names[i % len(names)], prompt) for i, prompt in enumerate(prompts)]
        # Half the naive requests before the service and half after, so that a change in
        # what else runs on the machine weighs on both sides alike.
        naive_jobs = jobs[: args.naive_requests or None]
        before = run_naive(args, base, store, naive_jobs[::2])
        bound = run_bound(args, base, prompts)
        engines = {
            engine: run_service(args, base, work / f"home-{engine}", store, jobs, names, engine)
            for engine in args.engines
        }
        raw_vllm = run_raw_vllm(args, base, store, jobs, names) if "vllm" in engines else None
        service = engines[args.engines[0]]
        naive = combine(before, run_naive(args, base, store, naive_jobs[1::2]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        **header(args, base),
        "naive": naive,
        "service": service,
        "speedup": service["concurrent"]["tokens_per_s"] / naive["tokens_per_s"],
        "bound": bound,
        "cpu_us_per_token": service["concurrent"]["cpu_us_per_token"],
        "ratios": {
            "concurrent_vs_bound": service["concurrent"]["tokens_per_s"]
            / bound["static_batch_tokens_per_s"],
            "one_stream_vs_bound": service["one_stream"]["tokens_per_s"]
            / bound["one_stream_tokens_per_s"],
        },
    }
    if len(engines) > 1:
        result["engines"] = engines
    if raw_vllm is not None:
        ours, raw = engines["vllm"]["openai_concurrent"], raw_vllm["concurrent"]
        result["raw_vllm"] = {**raw_vllm, "vllm_engine": ours}
        result["ratios"]["vllm_engine_vs_raw_vllm"] = ours["tokens_per_s"] / raw["tokens_per_s"]
        result["ratios"]["vllm_engine_ttft_vs_raw_vllm"] = ours["ttft_p50_s"] / raw["ttft_p50_s"]
    result["targets"] = check_targets(result, args.device)
    return write(args, "serving", result, table(result), result["targets"])


def stall_main(args, work: Path) -> dict:
    try:
        base = prepare_base(args, work)
        stall = run_hot_load_stall(args, base, work / "home", AdapterStore(work / "adapters"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {**header(args, base), "hot_load_stall": stall}
    return write(args, "serving-stall", result, stall_table(stall), stall["targets"])


def header(args, base: Path) -> dict:
    config = {**vars(args), "home": str(args.home), "out": str(args.out), "base": str(base)}
    return {"benchmark": "serving", "created_at": time.time(), "config": config}


def write(args, stem: str, result: dict, table_text: str, targets: dict) -> dict:
    """The JSON to `--out`/<stem>-<time>.json, and the table and targets printed."""
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(table_text)
    print("targets:", json.dumps(targets))
    print(f"\nwritten to {path}")
    return result


if __name__ == "__main__":
    main()
