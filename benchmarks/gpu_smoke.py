"""GPU smoke check: train an adapter through the trainer service, serve it, write numbers.

The one prepared script for a lent GPU machine (DESIGN.md, "GPU checks"), in well under 5
minutes there:

1. a randomly initialised Llama (`llama-1b` on a GPU, `llama-tiny` for a CPU run);
2. a LoRA adapter trained for a few steps through the real trainer service (gRPC, worker
   process, publishing): QLoRA 4-bit on CUDA when bitsandbytes imports, else plain LoRA;
3. the inference engine in-process, `decode="static"` (preallocated KV, CUDA graphs on a
   GPU) then `decode="dynamic"`: one stream, then `--streams` concurrent streams over the
   trained adapter and a few random ones, each after a warm-up of the same shape; and the
   greedy tokens of a few prompts on both paths, which must agree;
4. JSON in benchmarks/results/gpu-smoke-<time>.json and a table.

Every stage is timed and printed as it goes, and the JSON is rewritten after each one: a
stage that fails records its error and the later stages still run, so a GPU minute is never
lost to one bug. `make gpu-smoke` runs it on a GPU; `--model llama-tiny --device cpu` runs
the same path here in under a minute.

On a lent machine (no network, no .venv; its image lacks bitsandbytes, pydantic(-settings),
grpcio 1.85's health/reflection and jsonschema), carry these wheels (cp312, about 52 MB) and
install them with `pip install --no-index --no-deps --target`: bitsandbytes, grpcio,
grpcio-health-checking, grpcio-reflection, protobuf, pydantic, pydantic_core,
pydantic-settings, python-dotenv, annotated-types, typing-inspection, typing_extensions,
jsonschema, jsonschema-specifications, referencing, rpds-py, llguidance (the engine's
constrained decoding), at constraints.txt's versions;
then `python3 -m benchmarks.gpu_smoke --model llama-1b --device cuda --out $OUT`. The
default recipe, causal_lm, needs neither trl nor datasets.
"""

import argparse
import gc
import importlib
import json
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

from benchmarks.serving import GPU_TARGETS, make_adapters, make_prompts, percentile, prepare_base
from benchmarks.training import job_spec, make_rows
from benchmarks.training import run_service as train_through_service
from inference_service.engine import NativeEngine
from inference_service.params import GenerateInput, Parameters
from inference_service.settings import InferenceSettings
from trainer_service.job_store import JobStore
from trainer_service.settings import TrainerSettings
from tuneyard.adapter_store import AdapterStore
from tuneyard.jobspec import JobSpec

RESULTS_DIR = Path(__file__).parent / "results"
# DESIGN.md's baseline: transformers generate + PEFT on an H200, the same random 1.1B Llama.
BASELINE = {
    "source": "DESIGN.md: transformers generate + PEFT, H200, random 1.1B Llama, bf16, "
    "128-token prompts, 128 new tokens",
    "one_stream_unmerged_tokens_per_s": 40.0,
    "batch32_four_adapters_tokens_per_s": 483.0,
}
DECODE_PATHS = ("static", "dynamic")
TIMEOUT_S = 300  # for any one request: a hung engine fails its stage, not the whole run


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-1b", help="llama-1b, llama-tiny or a path")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on a CPU")
    p.add_argument(
        "--quantization",
        default="auto",
        choices=["auto", "none", "4bit"],
        help="of the training; auto: 4bit (QLoRA) on CUDA when bitsandbytes imports",
    )
    p.add_argument(
        "--recipe",
        default="causal_lm",
        choices=["causal_lm", "sft"],
        help="sft needs trl, datasets",
    )
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--adapters", type=int, default=3, help="random adapters beside the trained")
    p.add_argument("--streams", type=int, default=0, help="concurrent; 0: 64 on CUDA, 4 on CPU")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--compare-prompts", type=int, default=4)
    p.add_argument("--compare-tokens", type=int, default=32)
    p.add_argument("--max-batch-wait-ms", type=float, default=10)
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.dtype == "auto":
        args.dtype = "bfloat16" if cuda else "float32"
    args.streams = args.streams or (64 if cuda else 4)
    return args


class Run:
    """The result being built, its JSON file, and the stages that fill it."""

    def __init__(self, args: argparse.Namespace):
        self.started = time.perf_counter()
        args.out.mkdir(parents=True, exist_ok=True)
        self.path = args.out / f"gpu-smoke-{time.strftime('%Y%m%d-%H%M%S')}.json"
        self.result = {
            "benchmark": "gpu_smoke",
            "created_at": time.time(),
            "config": {**vars(args), "out": str(args.out)},
            "environment": environment(args.device),
            "stages": {},
        }

    def say(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f} s] {message}", flush=True)

    def stage(self, name: str, fn, *args):
        """Run `fn(record, *args)`, which fills `record` (kept in the result under `name`)
        as it goes; return its value, or None when it failed (the error is recorded)."""
        record = self.result[name] = {}
        status = self.result["stages"][name] = {"ok": False}
        self.say(f"{name} ...")
        start = time.perf_counter()
        try:
            value = fn(record, *args)
            status["ok"] = True
            return value
        except Exception as err:
            status["error"] = f"{type(err).__name__}: {err}"
            status["traceback"] = traceback.format_exc()
            self.say(f"{name} FAILED: {status['error']}")
            return None
        except BaseException as err:  # interrupted or terminated: keep what there is
            status["error"] = f"interrupted: {type(err).__name__} {err}"
            raise
        finally:
            status["seconds"] = time.perf_counter() - start
            if status["ok"]:
                self.say(f"{name} done in {status['seconds']:.1f} s")
            self.save()

    def skip(self, name: str, why: str) -> None:
        self.result["stages"][name] = {"ok": False, "skipped": why, "seconds": 0.0}
        self.say(f"{name} skipped: {why}")
        self.save()

    def save(self) -> None:
        self.result["wall_s"] = time.perf_counter() - self.started
        self.path.write_text(json.dumps(self.result, indent=2))


def environment(device: str) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "device_name": platform.processor() or platform.machine(),
    }
    for name in ("transformers", "peft", "bitsandbytes"):
        try:
            env[name] = importlib.import_module(name).__version__
        except Exception as err:  # a missing or broken package is a fact worth recording
            env[name] = f"unavailable: {type(err).__name__}: {err}"
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


def training_quantization(args) -> tuple[str, str]:
    """(quantization, why): QLoRA 4-bit on CUDA when bitsandbytes imports."""
    if args.quantization != "auto":
        return args.quantization, "asked for"
    if not args.device.startswith("cuda"):
        return "none", "QLoRA needs a CUDA device"
    try:
        import bitsandbytes
    except Exception as err:
        return "none", f"bitsandbytes does not import ({type(err).__name__}: {err})"
    return "4bit", f"bitsandbytes {bitsandbytes.__version__} imports"


# --- stages --------------------------------------------------------------------------------
def build_base(record: dict, args, work: Path) -> Path:
    base = prepare_base(args, work).resolve()  # absolute: the worker runs in its job folder
    record.update(path=str(base), model=args.model, dtype=args.dtype)
    return base


def train(record: dict, args, base: Path, work: Path, home: Path) -> str:
    """Train through the trainer service; return the published adapter's id."""
    quantization, why = training_quantization(args)
    record.update(quantization=quantization, qlora=quantization == "4bit", why=why)
    data = work / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(args.rows)))
    spec = job_spec(args, base, data, packing=False).model_dump()
    spec.update(recipe=args.recipe, quantization=quantization)
    record.update(train_through_service(args, JobSpec.model_validate(spec), home))
    version = adapter_store(home).resolve(spec["adapter_name"])
    manifest = version.manifest()
    record.update(
        adapter=version.id,
        published=(version.path / "adapter_config.json").is_file(),
        manifest_quantization=manifest.hyperparameters["quantization"],
        metrics=manifest.metrics,
    )
    # The worker's own peak from its metrics events: GPU memory on CUDA, else its RSS.
    store = JobStore(TrainerSettings(home=home).resolved_trainer_db)
    try:
        events = store.events(manifest.job_id)
    finally:
        store.close()
    peak = max(((e.metrics or {}).get("peak_memory_bytes", 0) for e in events), default=0)
    record["peak_memory_gib"] = peak / 2**30
    if not record["published"]:
        raise RuntimeError(f"{version.id} has no adapter_config.json in {version.path}")
    return version.id


def random_adapters(record: dict, args, base: Path, home: Path) -> list[str]:
    names = make_adapters(base, adapter_store(home), args.adapters, args.rank)
    record["names"] = names
    return names


def serve(record: dict, args, base: Path, home: Path, decode: str, adapters: list[str]):
    """One engine on one decode path: one stream, concurrent streams, the compared tokens."""
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    engine = NativeEngine.load(
        InferenceSettings(
            base_model=str(base),
            adapters_dir=adapter_store(home).root,
            device=args.device,
            dtype=args.dtype,
            decode=decode,
            cuda_graphs=True,
            inference_metrics_port=0,
            max_batch_size=args.streams,
            max_batch_wait_ms=args.max_batch_wait_ms,
            max_queue=2 * args.streams + 8,
            max_loaded_adapters=len(adapters) + 2,
        )
    )
    try:
        prompts = make_prompts(args.streams + args.compare_prompts, args.prompt_tokens)
        one = [(adapters[0], prompts[0])]
        run_streams(engine, one, args.max_new_tokens)  # warm-up: graph capture, adapter load
        record["one_stream"] = run_streams(engine, one, args.max_new_tokens)
        print(f"    one stream: {record['one_stream']['tokens_per_s']:.1f} tokens/s", flush=True)
        load = [(adapters[i % len(adapters)], p) for i, p in enumerate(prompts[: args.streams])]
        run_streams(engine, load, args.max_new_tokens)  # warm-up of the same load
        record["concurrent"] = run_streams(engine, load, args.max_new_tokens)
        record["concurrent"]["adapters"] = sorted(set(adapters))
        print(
            f"    {args.streams} streams: {record['concurrent']['tokens_per_s']:.1f} tokens/s, "
            f"TTFT p50 {record['concurrent']['ttft_p50_s'] * 1000:.0f} ms",
            flush=True,
        )
        record["greedy_tokens"] = [
            greedy(engine, prompt, adapters[i % len(adapters)], args)
            for i, prompt in enumerate(prompts[args.streams :])
        ]
    finally:
        engine.stop()
        if cuda:
            record["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        del engine
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def run_streams(engine: NativeEngine, jobs: list[tuple[str, str]], max_new: int) -> dict:
    """Each (adapter, prompt) streamed from its own thread, all released at once."""
    barrier = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)

    def client(i: int, adapter: str, prompt: str) -> None:
        try:
            barrier.wait()
            start = time.perf_counter()
            params = Parameters(max_new_tokens=max_new)
            seq = engine.submit(GenerateInput(inputs=prompt, adapter_id=adapter, parameters=params))
            first, tokens = None, 0
            for chunk in seq.stream(timeout=TIMEOUT_S):
                first = first or time.perf_counter()
                if chunk.details is not None:
                    tokens = chunk.details.generated_tokens
            results[i] = (start, first - start, time.perf_counter(), tokens)
        except Exception as err:
            barrier.abort()
            results[i] = err

    threads = [threading.Thread(target=client, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise errors[0]
    seconds = max(end for _, _, end, _ in results) - min(start for start, _, _, _ in results)
    tokens = sum(n for *_, n in results)
    ttft = [first for _, first, _, _ in results]
    return {
        "requests": len(jobs),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
    }


def greedy(engine: NativeEngine, prompt: str, adapter: str, args) -> list[int]:
    params = Parameters(max_new_tokens=args.compare_tokens, details=True)
    seq = engine.submit(GenerateInput(inputs=prompt, adapter_id=adapter, parameters=params))
    return [t.id for t in seq.result(timeout=TIMEOUT_S).details.tokens]


def adapter_store(home: Path) -> AdapterStore:
    # The trainer service's own choice of folder for this home.
    return AdapterStore(TrainerSettings(home=home).resolved_adapters_dir)


# --- report --------------------------------------------------------------------------------
def compare_paths(result: dict) -> dict | None:
    """How often the static and the dynamic path chose the same greedy tokens."""
    static, dynamic = (result.get(f"serve_{d}", {}).get("greedy_tokens") for d in DECODE_PATHS)
    if not static or not dynamic:
        return None
    same = sum(a == b for a, b in zip(static, dynamic, strict=True))
    tokens = sum(len(a) for a in static)
    agree = sum(_common_prefix(a, b) for a, b in zip(static, dynamic, strict=True))
    return {
        "prompts": len(static),
        "equal_prompts": same,
        "fraction_equal": same / len(static),
        "fraction_tokens_before_first_difference": agree / tokens if tokens else 1.0,
    }


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def peak_gpu_memory(result: dict, device: str) -> dict | None:
    """GiB per stage that held the GPU: the training worker's and each engine's."""
    if not device.startswith("cuda"):
        return None
    peaks = {"train": result.get("train", {}).get("peak_memory_gib")}
    for decode in DECODE_PATHS:
        peaks[f"serve_{decode}"] = result.get(f"serve_{decode}", {}).get("peak_gpu_memory_gib")
    return peaks


def targets(result: dict) -> dict:
    """GPU_TARGETS against the static path, and the DESIGN.md baseline beside it."""
    static = result.get("serve_static", {})
    one = static.get("one_stream", {}).get("tokens_per_s")
    load = static.get("concurrent", {}).get("tokens_per_s")
    return {
        **GPU_TARGETS,
        "one_stream_tokens_per_s": one,
        "concurrent_tokens_per_s": load,
        "one_stream_met": one is not None and one >= GPU_TARGETS["one_stream_tokens_per_s_min"],
        "concurrent_met": load is not None and load >= GPU_TARGETS["concurrent_tokens_per_s_min"],
        "one_stream_vs_baseline": one and one / BASELINE["one_stream_unmerged_tokens_per_s"],
        "concurrent_vs_baseline": load and load / BASELINE["batch32_four_adapters_tokens_per_s"],
    }


def table(result: dict) -> str:
    def fmt(value, spec=".1f"):
        return "-" if value is None else format(value, spec)

    lines = [f"{'stage':<16}{'ok':>6}{'seconds':>10}"]
    for name, status in result["stages"].items():
        ok = "yes" if status["ok"] else "SKIP" if "skipped" in status else "FAIL"
        lines.append(f"{name:<16}{ok:>6}{status['seconds']:>10.1f}")
    train = result.get("train", {})
    lines += [
        "",
        f"adapter {train.get('adapter', '-')}: quantization {train.get('quantization', '-')} "
        f"({train.get('why', '-')}), {fmt(train.get('tokens_per_s'))} training tokens/s, "
        f"peak memory {fmt(train.get('peak_memory_gib'), '.2f')} GiB",
        "",
        f"{'decode':<10}{'1 stream tok/s':>16}{'N streams tok/s':>17}{'TTFT p50 ms':>13}"
        f"{'peak GiB':>10}",
    ]
    for decode in DECODE_PATHS:
        r = result.get(f"serve_{decode}", {})
        one, load = r.get("one_stream", {}), r.get("concurrent", {})
        ttft = load.get("ttft_p50_s")
        lines.append(
            f"{decode:<10}{fmt(one.get('tokens_per_s')):>16}{fmt(load.get('tokens_per_s')):>17}"
            f"{fmt(ttft and ttft * 1000, '.0f'):>13}{fmt(r.get('peak_gpu_memory_gib'), '.2f'):>10}"
        )
    lines.append(
        f"{'baseline':<10}{BASELINE['one_stream_unmerged_tokens_per_s']:>16.1f}"
        f"{BASELINE['batch32_four_adapters_tokens_per_s']:>17.1f}   (DESIGN.md, batch 32 / 4)"
    )
    same = result.get("static_vs_dynamic")
    if same:
        lines.append(
            f"\nstatic == dynamic greedy tokens: {same['equal_prompts']}/{same['prompts']} "
            f"prompts, {same['fraction_tokens_before_first_difference']:.2f} of the tokens "
            "before a first difference"
        )
    t = result["targets"]
    lines.append(
        f"targets (static): one stream >= {t['one_stream_tokens_per_s_min']:.0f}: "
        f"{'met' if t['one_stream_met'] else 'NOT met'}; concurrent >= "
        f"{t['concurrent_tokens_per_s_min']:.0f}: {'met' if t['concurrent_met'] else 'NOT met'}"
    )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = Run(args)
    run.say(f"gpu smoke: {args.model} on {run.result['environment']['device_name']}")
    work = Path(tempfile.mkdtemp(prefix="tuneyard-gpu-smoke-"))
    home = work / "home"
    try:
        base = run.stage("base", build_base, args, work)
        if base is None:
            for name in ("train", "adapters", *(f"serve_{d}" for d in DECODE_PATHS)):
                run.skip(name, "no base model")
        else:
            trained = run.stage("train", train, args, base, work, home)
            extra = run.stage("adapters", random_adapters, args, base, home) or []
            adapters = (([trained] if trained else []) + extra) or [""]  # "": the base alone
            for decode in DECODE_PATHS:
                run.stage(f"serve_{decode}", serve, args, base, home, decode, adapters)
        run.result["static_vs_dynamic"] = compare_paths(run.result)
        run.result["peak_gpu_memory_gib"] = peak_gpu_memory(run.result, args.device)
        run.result["targets"] = targets(run.result)
        run.result["baseline"] = BASELINE
        run.save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(run.result))
    print(f"\nwritten to {run.path}")
    return run.result


def _terminate(signum, frame):
    raise SystemExit(f"signal {signum}")  # so that a stage cut short by `timeout` says so


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    result = main()
    sys.exit(0 if all(s["ok"] for s in result["stages"].values()) else 1)
