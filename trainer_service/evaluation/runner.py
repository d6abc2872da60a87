"""Running a plan: every arm generates an answer for every row and scores the reference
answer's loss, all through the inference service; then per-arm means."""

import math
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from trainer_service.evaluation.inference import Generation, InferenceClient
from trainer_service.evaluation.plan import Arm, Case, Plan
from tuneyard.errors import TuneyardError


class EvaluationCancelled(TuneyardError):
    code = "CANCELLED"


@dataclass
class ArmOutput:
    arm: str
    text: str
    checks: dict[str, float]
    latency_s: float
    output_tokens: int


@dataclass
class Example:
    line: int
    prompt: str
    reference: str
    outputs: list[ArmOutput] = field(default_factory=list)


@dataclass
class ArmResult:
    name: str
    adapter_id: str
    eval_loss: float
    perplexity: float
    loss_tokens: int
    checks: dict[str, float]
    mean_output_tokens: float
    mean_output_chars: float
    mean_latency_s: float
    p50_latency_s: float
    tokens_per_second: float
    requests: int
    shots: int = 0


@dataclass
class Result:
    arms: list[ArmResult]
    examples: list[Example]


@dataclass
class _Row:
    output: ArmOutput
    nll: float
    tokens: int


class Runner:
    def __init__(self, client: InferenceClient, concurrency: int = 4):
        self.client = client
        self.concurrency = concurrency

    def run(
        self,
        plan: Plan,
        progress: Callable[[int], None] = lambda done: None,
        cancelled: threading.Event | None = None,
    ) -> Result:
        """Two requests per arm and row (answer, reference loss); `progress` gets the
        number of requests done so far."""
        cancelled = cancelled or threading.Event()
        done, lock = 0, threading.Lock()
        examples = [Example(c.line, c.prompt, c.expected) for c in plan.cases]
        results = []

        def one(arm: Arm, case: Case) -> _Row:
            nonlocal done
            if cancelled.is_set():
                raise EvaluationCancelled("evaluation cancelled")
            row = self._row(plan, arm, case)
            with lock:
                done += 2
                progress(done)
            return row

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="eval") as pool:
            for arm in plan.arms:
                started = time.monotonic()
                rows = list(pool.map(lambda case, arm=arm: one(arm, case), plan.cases))
                results.append(_summary(plan, arm, rows, time.monotonic() - started))
                for example, row in zip(examples, rows, strict=True):
                    example.outputs.append(row.output)
        return Result(results, examples)

    def _row(self, plan: Plan, arm: Arm, case: Case) -> _Row:
        prompt = plan.prompt(arm, case, len(plan.shots))
        sampling = plan.sampling
        stop = plan.stop(arm)
        parameters = dict(
            max_new_tokens=sampling.max_new_tokens, do_sample=sampling.do_sample, stop=stop
        )
        if sampling.do_sample:
            # One seed per row, so a rerun repeats each answer whatever the batching.
            parameters["seed"] = sampling.seed + case.line
            if sampling.temperature is not None:
                parameters["temperature"] = sampling.temperature
            if sampling.top_p is not None:
                parameters["top_p"] = sampling.top_p
        generation = self.client.generate(prompt, arm.adapter_id, parameters)
        if plan.turn_end is not None:
            generation = cut_at(generation, plan.turn_end.token_ids)
        text = _strip_stop(generation.text, stop)
        nll, tokens = self.client.reference_nll(
            prompt, case.reference, arm.adapter_id, generation.prompt_tokens
        )
        checks = {s.name: s.score(text, case.expected) for s in plan.scorers}
        return _Row(
            ArmOutput(arm.name, text, checks, generation.latency_s, generation.output_tokens),
            nll,
            tokens,
        )


def cut_at(generation: Generation, token_ids: frozenset[int]) -> Generation:
    """The generation as if it had stopped at the first of `token_ids` (a special
    end-of-turn token, which the engine does not stop at unless it is the eos): the text
    of the tokens before it; the token itself counts as an output token."""
    for i, (token_id, _) in enumerate(generation.tokens):
        if token_id in token_ids:
            text = "".join(t for _, t in generation.tokens[:i])
            return replace(
                generation, text=text, output_tokens=i + 1, tokens=generation.tokens[: i + 1]
            )
    return generation


def _strip_stop(text: str, stop: list[str]) -> str:
    for s in stop:
        if s and text.endswith(s):
            return text[: -len(s)]
    return text


def _summary(plan: Plan, arm: Arm, rows: list[_Row], wall_s: float) -> ArmResult:
    tokens = sum(r.tokens for r in rows)
    loss = sum(r.nll for r in rows) / tokens
    latencies = [r.output.latency_s for r in rows]
    output_tokens = sum(r.output.output_tokens for r in rows)
    return ArmResult(
        name=arm.name,
        adapter_id=arm.adapter_id,
        eval_loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        loss_tokens=tokens,
        checks={
            s.name: statistics.fmean(r.output.checks[s.name] for r in rows) for s in plan.scorers
        },
        mean_output_tokens=output_tokens / len(rows),
        mean_output_chars=statistics.fmean(len(r.output.text) for r in rows),
        mean_latency_s=statistics.fmean(latencies),
        p50_latency_s=statistics.median(latencies),
        tokens_per_second=output_tokens / wall_s if wall_s > 0 else 0.0,
        requests=2 * len(rows),
        shots=len(plan.shots) if arm.few_shot else 0,
    )
