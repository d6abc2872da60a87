"""Where the service's time goes under the serving benchmark's load: py-spy samples the
inference service and the gateway (real processes, as `benchmarks/serving.py` starts them)
while `--clients` streaming clients run over `--adapters` adapters, then prints each
process's top frames, by their own time and including what they call.

    TUNEYARD_HOME=.tuneyard .venv/bin/python -m benchmarks.profile_serving

Takes the serving benchmark's options (model, dtype, clients, adapters, prompt and output
lengths); the raw samples stay in --out as py-spy's "raw" (collapsed stacks) files.
"""

import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks import serving
from tuneyard.adapter_store import AdapterStore
from tuneyard.local_stack import LocalStack

PROFILED = ("inference", "gateway")


def main(argv=None) -> dict[str, Path]:
    parser = serving._parser()
    parser.add_argument("--seconds", type=int, default=25, help="how long to sample")
    parser.add_argument("--rate", type=int, default=50, help="samples per second")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    args.dtype = str(serving.pick_dtype(args.dtype, args.device, cpu_bf16_if_native=True))
    args.dtype = args.dtype.removeprefix("torch.")
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    work = Path(tempfile.mkdtemp(prefix="tuneyard-profile-"))
    args.out.mkdir(parents=True, exist_ok=True)
    outputs = {name: args.out / f"profile-{name}.txt" for name in PROFILED}
    try:
        base = serving.prepare_base(args, work)
        store = AdapterStore(work / "adapters")
        names = serving.make_adapters(base, store, args.adapters, args.rank)
        prompts = serving.make_prompts(args.clients * args.requests_per_client, args.prompt_tokens)
        jobs = [(names[i % len(names)], p) for i, p in enumerate(prompts)]
        env = serving.service_env(args, store, names, "native")
        with LocalStack(home=work / "home", base_model=str(base), extra_env=env) as stack:
            warm = [(name, jobs[0][1]) for name in names]
            asyncio.run(serving.run_load(stack.gateway_url, warm, len(warm), 2))
            pids = {s.name: s.process.pid for s in stack.services}
            samplers = [
                subprocess.Popen(
                    [py_spy, "record", "-p", str(pids[name]), "-d", str(args.seconds)]
                    + ["-r", str(args.rate), "-f", "raw", "-o", str(outputs[name])]
                    + ["--nonblocking"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for name in PROFILED
            ]
            load = asyncio.run(
                serving.run_load(stack.gateway_url, jobs, args.clients, args.max_new_tokens)
            )
            for sampler in samplers:
                sampler.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load while sampling: {load['tokens_per_s']:.1f} tokens/s")
    for name, path in outputs.items():
        print(summary(name, path, args.top))
    return outputs


def summary(name: str, path: Path, top: int) -> str:
    """The frames with the most samples: by their own time, and including their callees."""
    own, inclusive, total = Counter(), Counter(), 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    lines = [f"== {name}: {total} samples"]
    for title, counts in (("own time", own), ("including callees", inclusive)):
        lines.append(f"-- {title}")
        lines += [f"{100 * n / total:6.1f}%  {frame}" for frame, n in counts.most_common(top)]
    return "\n".join(lines)


def _frame(text: str) -> str:
    """py-spy's "function (path/to/file.py:line)" as "function file.py:line"."""
    function, _, where = text.partition(" (")
    return f"{function} {where.rstrip(')').rsplit('/', 1)[-1]}".strip()


if __name__ == "__main__":
    main()
