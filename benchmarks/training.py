"""Training benchmark: the trainer service against a plain TRL script, in one run.

- plain: a minimal SFTTrainer script (PEFT LoRA, the same data, template and arguments) in
  its own process, as a seed notebook would run it;
- service: the same job through the trainer service (gRPC CreateJob, the worker process,
  events, publishing); the service must reach >= 0.95 of the plain script's tokens/s;
- packing: the service on rows of varied length with sft packing (TRL's bfd) on and off,
  counting real (non-pad) tokens only.

tokens/s = non-pad input tokens trained on / the Trainer's train_runtime, the same
measure on both sides (start-up, validation and publishing are reported as wall time);
runs are interleaved `--repeats` times and the best of each kind is compared.
CPU (default): the embedded SmolLM2-135M. GPU host: `--model llama-1b --device cuda`.
Writes benchmarks/results/training-<time>.json and prints a table.
"""

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.serving import WORDS, prepare_base
from trainer_service.server import serve
from trainer_service.settings import TrainerSettings
from tuneyard.adapter_store import AdapterStore
from tuneyard.jobspec import JobSpec
from tuneyard.service_auth import client_channel
from tuneyard.v1 import trainer_pb2, trainer_pb2_grpc

RESULTS_DIR = Path(__file__).parent / "results"
TEMPLATE = {
    "prompt": "### Instruction\n{{ instruction }}\n\n### Response\n",
    "response": "{{ response }}",
}
TARGET_RATIO = 0.95


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded", help="embedded, llama-1b, llama-tiny or a path")
    p.add_argument("--home", type=Path, default=Path(".tuneyard"), help="holds the embedded model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs; best of each")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--plain-config", type=Path, help=argparse.SUPPRESS)  # the plain side
    return p.parse_args(argv)


def make_rows(count: int, seed: int = 0) -> list[dict]:
    """Instruction rows of widely varied length (a few to ~150 words)."""
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    return [
        {"instruction": text(rng.randint(3, 40)), "response": text(rng.randint(2, 110))}
        for _ in range(count)
    ]


def job_spec(args, base: Path, data: Path, packing: bool) -> JobSpec:
    return JobSpec.parse(
        {
            "base_model": str(base),
            "adapter_name": "bench",
            "recipe": "sft",
            "data": {"path": str(data)},
            "template": TEMPLATE,
            "lora": {"r": args.rank, "alpha": 2 * args.rank, "dropout": 0.05},
            "training": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "learning_rate": 2e-4,
                "max_seq_length": args.max_seq_length,
                "seed": 0,
                "logging_steps": 1,
                "packing": packing,
            },
        }
    )


# --- the plain TRL script ------------------------------------------------------------------
def plain_trl(config: dict) -> dict:
    """What a seed script does: load, LoRA, SFTTrainer, train. Runs in its own process."""
    import torch
    from datasets import Dataset
    from jinja2 import Template
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    spec = JobSpec.model_validate(config["spec"])
    t = spec.training
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        spec.base_model, dtype=getattr(torch, config["dtype"])
    ).to(config["device"])
    prompt, response = (Template(TEMPLATE[k], keep_trailing_newline=True) for k in TEMPLATE)
    rows = [json.loads(line) for line in Path(spec.data.path).read_text().splitlines()]
    data = Dataset.from_list(
        [{"prompt": prompt.render(**r), "completion": response.render(**r)} for r in rows]
    )
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=config["output_dir"],
            max_steps=t.max_steps,
            learning_rate=t.learning_rate,
            per_device_train_batch_size=t.batch_size,
            max_length=t.max_seq_length,
            seed=t.seed,
            logging_steps=t.logging_steps,
            packing=t.packing,
            padding_free=t.packing,
            completion_only_loss=True,
            gradient_checkpointing=False,
            save_strategy="no",
            report_to=[],
            use_cpu=config["device"] == "cpu",
            bf16=config["dtype"] == "bfloat16",
            include_num_input_tokens_seen="non_padding",
        ),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=spec.lora.r,
            lora_alpha=spec.lora.alpha,
            lora_dropout=spec.lora.dropout,
            target_modules=["q_proj", "v_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    output = trainer.train()
    return {
        "trained_tokens": int(trainer.state.num_input_tokens_seen),
        "train_runtime_s": output.metrics["train_runtime"],
    }


def run_plain(args, spec: JobSpec, work: Path) -> dict:
    config = work / "plain.json"
    config.write_text(
        json.dumps(
            {
                "spec": spec.model_dump(),
                "device": args.device,
                "dtype": args.dtype,
                "output_dir": str(work / "plain"),
            }
        )
    )
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.training", "--plain-config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the plain TRL script failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return _rate(result, time.monotonic() - start)


# --- the service ---------------------------------------------------------------------------
def run_service(args, spec: JobSpec, home: Path) -> dict:
    settings = TrainerSettings(
        home=home,
        trainer_port=0,
        trainer_metrics_port=0,
        trainer_device=args.device,
        # The benchmark's own data file is the one server path this trainer may read.
        data_dirs=[Path(spec.data.path).parent] if spec.data.path else [],
    )
    running = serve(settings)
    start = time.monotonic()
    try:
        # The token of the environment's TUNEYARD_SERVICE_TOKENS(_FILE), if it sets one.
        with client_channel(f"127.0.0.1:{running.port}", settings.service_tokens) as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            job = stub.CreateJob(trainer_pb2.CreateJobRequest(spec=spec.to_proto()), timeout=30)
            last = None
            for event in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id)):
                last = event
            job = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.id), timeout=10)
    finally:
        running.stop(grace=1)
    if job.status != trainer_pb2.SUCCEEDED:
        raise RuntimeError(f"the service job ended {job.status}: {job.error.message or last}")
    metrics = AdapterStore(settings.resolved_adapters_dir).resolve(job.fine_tuned_model)
    return _rate(metrics.manifest().metrics, time.monotonic() - start)


def _rate(metrics: dict, wall_s: float) -> dict:
    return {
        "trained_tokens": metrics["trained_tokens"],
        "train_runtime_s": metrics["train_runtime_s"],
        "tokens_per_s": metrics["trained_tokens"] / metrics["train_runtime_s"],
        "wall_s": wall_s,
    }


def table(result: dict) -> str:
    rows = [
        ("plain TRL script", result["plain"]),
        ("service", result["service"]),
        ("service, packing off", result["packing_off"]),
        ("service, packing on (bfd)", result["packing_on"]),
    ]
    lines = [f"{'run':<28}{'tokens':>9}{'train s':>10}{'tokens/s':>10}{'wall s':>9}", "-" * 66]
    for name, r in rows:
        lines.append(
            f"{name:<28}{r['trained_tokens']:>9}{r['train_runtime_s']:>10.1f}"
            f"{r['tokens_per_s']:>10.1f}{r['wall_s']:>9.1f}"
        )
    lines.append("")
    lines.append(
        f"service / plain: {result['service_vs_plain']:.3f} "
        f"(target >= {TARGET_RATIO}: {'met' if result['target_met'] else 'NOT met'})"
    )
    lines.append(f"packing on / off (real tokens/s): {result['packing_speedup']:.2f}x")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.plain_config:
        print(json.dumps(plain_trl(json.loads(args.plain_config.read_text()))))
        return {}
    work = Path(tempfile.mkdtemp(prefix="tuneyard-bench-train-"))
    try:
        base = prepare_base(args, work).resolve()  # the worker runs in its job folder
        data = work / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(args.rows)))
        same = job_spec(args, base, data, packing=False)
        packed = job_spec(args, base, data, packing=True)
        runs = {"plain": [], "service": [], "packing_on": []}
        # Interleaved and best-of: a shared machine's noise hits both sides alike.
        for i in range(args.repeats):
            runs["plain"].append(run_plain(args, same, work))
            runs["service"].append(run_service(args, same, work / f"home-service-{i}"))
            runs["packing_on"].append(run_service(args, packed, work / f"home-packing-{i}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    plain, service, packing_on = (
        max(runs[k], key=lambda r: r["tokens_per_s"]) for k in ("plain", "service", "packing_on")
    )
    ratio = service["tokens_per_s"] / plain["tokens_per_s"]
    result = {
        "benchmark": "training",
        "created_at": time.time(),
        "config": {
            **vars(args),
            "home": str(args.home),
            "out": str(args.out),
            "plain_config": None,
            "base": str(base),
        },
        "plain": plain,
        "service": service,
        # The service run above is the packing-off run: same spec, packing false.
        "packing_off": service,
        "packing_on": packing_on,
        "service_vs_plain": ratio,
        "target_met": ratio >= TARGET_RATIO,
        "packing_speedup": packing_on["tokens_per_s"] / service["tokens_per_s"],
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"training-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"\nwritten to {path}")
    return result


if __name__ == "__main__":
    main()
