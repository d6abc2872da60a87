"""From an evaluation spec to a plan: the adapter and its template, the eval rows, the
few-shot rows, the arms and the checks. Everything that can be wrong with the input is
found here, so a bad evaluation fails before any generation runs."""

import random
from dataclasses import dataclass, field
from pathlib import Path

from trainer_service.dataset import Row, read_rows
from trainer_service.evaluation.checks import Check, Scorer, scorers
from trainer_service.files import FileStore
from trainer_service.job_store import SUCCEEDED, JobStore
from trainer_service.validation import validate
from tuneyard.adapter_store import AdapterStore, AdapterVersion, Manifest
from tuneyard.errors import FailedPrecondition, InvalidArgument, NotFound
from tuneyard.jobspec import JobSpec
from tuneyard.templates import PromptTemplate
from tuneyard.v1 import evaluation_pb2

ZERO_SHOT, FEW_SHOT, ADAPTER = "zero_shot", "few_shot", "adapter"
ARM_KINDS = (ZERO_SHOT, FEW_SHOT, ADAPTER)
DEFAULT_SHOTS = 3
DEFAULT_MAX_NEW_TOKENS = 128
SHOT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Arm:
    name: str
    adapter_id: str  # "" = the base model
    few_shot: bool = False


@dataclass(frozen=True)
class Case:
    """One eval row, rendered."""

    line: int
    prompt: str
    reference: str


@dataclass
class Sampling:
    max_new_tokens: int
    do_sample: bool
    temperature: float | None
    top_p: float | None
    seed: int
    stop: list[str]


@dataclass
class Plan:
    adapter: AdapterVersion
    manifest: Manifest
    template: PromptTemplate
    cases: list[Case]
    eval_source: str
    arms: list[Arm]
    scorers: list[Scorer]
    sampling: Sampling
    shots: list[str] = field(default_factory=list)  # rendered prompt + response, in order
    job_id: str = ""

    def prompt(self, arm: Arm, case: Case, shots: int) -> str:
        if not arm.few_shot:
            return case.prompt
        return "".join(s + SHOT_SEPARATOR for s in self.shots[:shots]) + case.prompt

    @property
    def few_shot_stop(self) -> str:
        """Where a base model that goes on to write the next example should stop: the
        template's text before its first field (e.g. "### Product")."""
        return self.template.prompt.split("{", 1)[0].strip()


def checks_from_proto(spec: evaluation_pb2.EvaluationSpec) -> list[Check]:
    return [
        Check(c.type, c.name, c.value, c.pattern, c.fullmatch, c.schema_json) for c in spec.checks
    ]


def build_plan(
    spec: evaluation_pb2.EvaluationSpec, adapters: AdapterStore, jobs: JobStore, files_root: Path
) -> Plan:
    checks = scorers(checks_from_proto(spec))  # cheapest first: a config that does not parse
    kinds = list(spec.arms) or list(ARM_KINDS)
    for kind in kinds:
        if kind not in ARM_KINDS:
            raise InvalidArgument(
                f"unknown arm {kind!r}; use any of {', '.join(ARM_KINDS)}", param="arms"
            )
    if len(set(kinds)) != len(kinds):
        raise InvalidArgument("an arm is listed twice", param="arms")

    job_spec, adapter_id = None, spec.adapter_id
    if spec.job_id:
        job = jobs.get_job(spec.job_id)
        if job.status != SUCCEEDED:
            raise FailedPrecondition(
                f"job {job.id} is {job.status}; only a succeeded job has an adapter to evaluate",
                param="job_id",
            )
        job_spec = JobSpec.model_validate(job.spec)
        adapter_id = adapter_id or job.fine_tuned_model
    if not adapter_id:
        raise InvalidArgument("give adapter_id or job_id", param="adapter_id")
    adapter = adapters.resolve(adapter_id)
    compared = [adapters.resolve(a) for a in spec.compare_adapters]
    manifest = adapter.manifest()
    if not manifest.template_response:
        raise FailedPrecondition(
            f"adapter {adapter.id} was trained with a chat template; evaluation needs a "
            "prompt/response template",
            param="adapter_id",
        )
    template = PromptTemplate(manifest.template_prompt, manifest.template_response)
    job_id = spec.job_id or manifest.job_id

    split = None
    if job_spec is not None and not (spec.eval_file or spec.eval_file_id):
        split = validate(job_spec, files_root)
        if not split.eval:
            raise InvalidArgument(
                f"job {spec.job_id} has no eval split (data.eval_fraction is 0); give eval_file",
                param="eval_file",
            )
        rows, eval_source = split.eval, f"{split.data_source} (eval split of {spec.job_id})"
    else:
        rows, eval_source = _eval_rows(spec, files_root)
    if spec.limit:
        rows = rows[: spec.limit]
    cases = [_case(template, row, "eval_file") for row in rows]
    if not cases:
        raise InvalidArgument(f"no rows to evaluate in {eval_source}", param="eval_file")

    shots = []
    if FEW_SHOT in kinds:
        shot_rows = _shot_rows(spec, manifest, job_spec, split, files_root)
        prompts = {c.prompt for c in cases}
        shot_cases = [_case(template, r, "few_shot_file") for r in shot_rows]
        shot_cases = [c for c in shot_cases if c.prompt not in prompts]  # never the answer itself
        random.Random(spec.seed).shuffle(shot_cases)
        shots = [c.prompt + c.reference for c in shot_cases[: spec.few_shot_k or DEFAULT_SHOTS]]
        if not shots:
            raise InvalidArgument(
                "no training rows left for the few-shot arm", param="few_shot_file"
            )

    arms = [Arm(kind, adapter.id if kind == ADAPTER else "", kind == FEW_SHOT) for kind in kinds]
    arms += [Arm(v.id, v.id) for v in compared]
    sampling = Sampling(
        max_new_tokens=spec.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        do_sample=spec.do_sample,
        temperature=spec.temperature if spec.HasField("temperature") else None,
        top_p=spec.top_p if spec.HasField("top_p") else None,
        seed=spec.seed,
        stop=list(spec.stop),
    )
    return Plan(
        adapter, manifest, template, cases, eval_source, arms, checks, sampling, shots, job_id
    )


def _eval_rows(spec, files_root: Path) -> tuple[list[Row], str]:
    if spec.eval_file and spec.eval_file_id:
        raise InvalidArgument("give eval_file or eval_file_id, not both", param="eval_file")
    if spec.eval_file_id:
        try:
            path = FileStore(files_root).path(spec.eval_file_id)
        except NotFound as err:
            raise InvalidArgument(err.message, param="eval_file_id") from err
        return read_rows(path, {}, "eval_file_id"), f"file {spec.eval_file_id}"
    if not spec.eval_file:
        raise InvalidArgument(
            "give eval_file, eval_file_id or a job_id with an eval split", param="eval_file"
        )
    path = Path(spec.eval_file)
    return read_rows(path, {}, "eval_file"), str(path.resolve())


def _shot_rows(spec, manifest: Manifest, job_spec, split, files_root: Path) -> list[Row]:
    """The few-shot examples come from training rows: an explicit file, else the job's
    train split, else the adapter's training file."""
    if spec.few_shot_file:
        return read_rows(spec.few_shot_file, {}, "few_shot_file")
    if job_spec is not None:
        return (split or validate(job_spec, files_root)).train
    if manifest.dataset_path and Path(manifest.dataset_path).is_file():
        return read_rows(manifest.dataset_path, {}, "few_shot_file")
    raise InvalidArgument(
        f"the few_shot arm needs training rows: adapter {manifest.name} was trained on "
        f"{manifest.dataset_path or 'an unknown source'}, which is not a local file; "
        "give few_shot_file or a job_id",
        param="few_shot_file",
    )


def _case(template: PromptTemplate, row: Row, param: str) -> Case:
    try:
        return Case(
            row.line, template.render_prompt(row.fields), template.render_response(row.fields)
        )
    except InvalidArgument as err:  # "missing field: 'email' is undefined"
        raise InvalidArgument(
            f"{param} line {row.line}: {err.message} (the adapter's template uses "
            f"{', '.join(sorted(template.fields))}; the row has {', '.join(sorted(row.fields))})",
            param=param,
            line=row.line,
        ) from err


def fit_shots(plan: Plan, tokenizer, max_input_tokens: int, max_total_tokens: int) -> int:
    """The most shots (up to those planned) with which every row still fits the served
    context: prompt + reference for the loss, prompt + max_new_tokens for generation.
    Raises if a row does not fit even with none."""

    def count(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    new_tokens = plan.sampling.max_new_tokens
    longest_prompt = max(plan.cases, key=lambda c: count(c.prompt))
    longest_reference = max(count(c.reference) for c in plan.cases)
    for shots in range(len(plan.shots), -1, -1):
        prompt = count(plan.prompt(Arm(FEW_SHOT, "", True), longest_prompt, shots))
        if (
            prompt + longest_reference <= max_input_tokens
            and prompt + new_tokens <= max_total_tokens
        ):
            return shots
    raise InvalidArgument(
        f"eval row line {longest_prompt.line} does not fit the served context: its prompt "
        f"and reference need more than max_input_tokens={max_input_tokens}, or prompt + "
        f"max_new_tokens={new_tokens} more than max_total_tokens={max_total_tokens}",
        param="max_new_tokens",
        line=longest_prompt.line,
    )
