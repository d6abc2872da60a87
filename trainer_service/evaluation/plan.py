"""From an evaluation spec to a plan: the adapter and its template, the eval rows, the
few-shot rows, the arms and the checks. Everything that can be wrong with the input is
found here, so a bad evaluation fails before any generation runs.

Two kinds of adapter: a prompt/response template (rows are fields; few-shot examples are
rendered examples joined by a blank line), or the `chat` template (rows are `messages`,
the last one the assistant's reference; few-shot examples are earlier conversations given
as earlier turns, all rendered by the base tokenizer's chat template)."""

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from trainer_service.dataset import Row, Split, load_split, read_rows
from trainer_service.evaluation.checks import Check, Scorer, scorers
from trainer_service.files import FileStore
from trainer_service.job_store import JobStore
from trainer_service.validation import validate
from tuneyard.adapter_store import AdapterStore, AdapterVersion, Manifest
from tuneyard.errors import FailedPrecondition, InvalidArgument, NotFound
from tuneyard.jobspec import JobSpec
from tuneyard.modeling import load_tokenizer, resolve_base_model
from tuneyard.statuses import SUCCEEDED
from tuneyard.templates import ChatTemplate, PromptTemplate, chat_messages
from tuneyard.v1 import evaluation_pb2

ZERO_SHOT, FEW_SHOT, ADAPTER = "zero_shot", "few_shot", "adapter"
ARM_KINDS = (ZERO_SHOT, FEW_SHOT, ADAPTER)
DEFAULT_SHOTS = 3
DEFAULT_MAX_NEW_TOKENS = 128
SHOT_SEPARATOR = "\n\n"
_PROBE = "tuneyard-end-of-turn-probe"


@dataclass(frozen=True)
class Arm:
    name: str
    adapter_id: str  # "" = the base model
    few_shot: bool = False


@dataclass(frozen=True)
class Case:
    """One eval row, rendered. The loss scores `reference` as the template writes it (a
    chat turn with its end-of-turn marker); the checks compare answers with `expected`
    (the same text, or the chat turn's content)."""

    line: int
    prompt: str
    reference: str
    expected: str
    messages: tuple[dict, ...] = ()  # a chat row's turns, for its few-shot prompt


@dataclass
class Sampling:
    max_new_tokens: int
    do_sample: bool
    temperature: float | None
    top_p: float | None
    seed: int
    stop: list[str]


@dataclass(frozen=True)
class TurnEnd:
    """How a chat turn ends: the marker the chat template writes after an assistant's
    content, and its token id when it is a special token. Special tokens never reach the
    generated text, so no stop sequence can match one; the runner cuts the answer at that
    token instead (the engine stops by itself only at the tokenizer's eos)."""

    text: str
    token_ids: frozenset[int]


@dataclass
class Plan:
    adapter: AdapterVersion
    manifest: Manifest
    template: PromptTemplate | ChatTemplate
    cases: list[Case]
    eval_source: str
    arms: list[Arm]
    scorers: list[Scorer]
    sampling: Sampling
    # In order: rendered prompt + response, or (chat) a conversation's non-system turns.
    shots: list = field(default_factory=list)
    job_id: str = ""
    turn_end: TurnEnd | None = None  # chat only

    @property
    def chat(self) -> bool:
        return isinstance(self.template, ChatTemplate)

    def prompt(self, arm: Arm, case: Case, shots: int) -> str:
        if not arm.few_shot:
            return case.prompt
        if self.chat:
            # The eval row's system turn stays first; the shots come before its own turns.
            system = list(case.messages[:1]) if case.messages[0]["role"] == "system" else []
            earlier = [turn for shot in self.shots[:shots] for turn in shot]
            turns = [*system, *earlier, *case.messages[len(system) :]]
            return self.template.render_prompt({ChatTemplate.MESSAGES: turns})
        return "".join(s + SHOT_SEPARATOR for s in self.shots[:shots]) + case.prompt

    def stop(self, arm: Arm) -> list[str]:
        """The stop sequences of an arm's generations: the spec's, then where an answer
        ends: the end of the assistant's turn (chat), or the start of a next example
        (few-shot)."""
        stop = list(self.sampling.stop)
        end = self.turn_end.text if self.chat else (arm.few_shot and self.few_shot_stop)
        if end and end not in stop:
            stop.append(end)
        return stop

    @property
    def few_shot_stop(self) -> str:
        """Where a base model that goes on to write the next example should stop: the
        template's text before its first field (e.g. "### Product"). Not for chat."""
        return self.template.prompt.split("{", 1)[0].strip()

    @property
    def report_settings(self) -> dict:
        """How the prompts were built and the answers stopped, for the report."""
        if self.chat:
            return {
                "prompt": "the base tokenizer's chat template, with the generation prompt",
                "few_shot": "training conversations as earlier turns",
                "end_of_turn": self.turn_end.text,
            }
        return {"few_shot_stop": self.few_shot_stop, "few_shot_separator": SHOT_SEPARATOR}


def checks_from_proto(spec: evaluation_pb2.EvaluationSpec) -> list[Check]:
    return [
        Check(c.type, c.name, c.value, c.pattern, c.fullmatch, c.schema_json) for c in spec.checks
    ]


def build_plan(
    spec: evaluation_pb2.EvaluationSpec,
    adapters: AdapterStore,
    jobs: JobStore,
    files_root: Path,
    job_folders: Path,
    tokenizer_for: Callable[[str], object] = lambda base: load_tokenizer(resolve_base_model(base)),
) -> Plan:
    """`tokenizer_for(base_model)`: the base model's tokenizer, for a chat adapter."""
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
        job_spec = job.spec
        adapter_id = adapter_id or job.fine_tuned_model
    if not adapter_id:
        raise InvalidArgument("give adapter_id or job_id", param="adapter_id")
    adapter = adapters.resolve(adapter_id)
    compared = [adapters.resolve(a) for a in spec.compare_adapters]
    manifest = adapter.manifest()
    template = _template(adapter, manifest, tokenizer_for)
    job_id = spec.job_id or manifest.job_id

    own_eval = bool(spec.eval_file or spec.eval_file_id)
    own_shots = FEW_SHOT not in kinds or bool(spec.few_shot_file)
    split = None
    if job_spec is not None and not (own_eval and own_shots):
        split = _job_split(job_folders / spec.job_id, job_spec, manifest, files_root)
    if split is not None and not own_eval:
        if not split.eval:
            raise InvalidArgument(
                f"job {spec.job_id} has no eval split (data.eval_fraction is 0); give eval_file",
                param="eval_file",
            )
        rows, eval_source = split.eval, f"{split.source} (eval split of {spec.job_id})"
    else:
        rows, eval_source = _eval_rows(spec, files_root)
    if spec.limit:
        rows = rows[: spec.limit]
    cases = [_case(template, row, "eval_file") for row in rows]
    if not cases:
        raise InvalidArgument(f"no rows to evaluate in {eval_source}", param="eval_file")

    shots = []
    if FEW_SHOT in kinds:
        shot_rows = _shot_rows(spec, manifest, split)
        prompts = {c.prompt for c in cases}
        shot_cases = [_case(template, r, "few_shot_file") for r in shot_rows]
        shot_cases = [c for c in shot_cases if c.prompt not in prompts]  # never the answer itself
        random.Random(spec.seed).shuffle(shot_cases)
        picked = shot_cases[: spec.few_shot_k or DEFAULT_SHOTS]
        if isinstance(template, ChatTemplate):
            shots = [tuple(t for t in c.messages if t["role"] != "system") for c in picked]
        else:
            shots = [c.prompt + c.reference for c in picked]
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
    turn_end = _turn_end(template) if isinstance(template, ChatTemplate) else None
    return Plan(
        adapter,
        manifest,
        template,
        cases,
        eval_source,
        arms,
        checks,
        sampling,
        shots,
        job_id,
        turn_end,
    )


def _template(
    adapter: AdapterVersion, manifest: Manifest, tokenizer_for: Callable[[str], object]
) -> PromptTemplate | ChatTemplate:
    """The manifest's template. A chat adapter's manifest holds the chat template's source
    and no response template; it must still be the base tokenizer's, which renders it."""
    if manifest.template_response:
        return PromptTemplate(manifest.template_prompt, manifest.template_response)
    tokenizer = tokenizer_for(manifest.base_model)
    if manifest.template_prompt != getattr(tokenizer, "chat_template", None):
        raise FailedPrecondition(
            f"adapter {adapter.id} has no response template, and its prompt template is not "
            f"the chat template of {manifest.base_model}'s tokenizer: there is no reference "
            "answer to evaluate against (evaluation needs a prompt/response or chat template)",
            param="adapter_id",
        )
    return ChatTemplate(tokenizer)


def _turn_end(template: ChatTemplate) -> TurnEnd:
    """What the chat template writes after an assistant's content (e.g. "<|im_end|>")."""
    turns = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _PROBE}]
    try:
        written = template.render_response({ChatTemplate.MESSAGES: turns})
    except (InvalidArgument, jinja2.TemplateError):
        return TurnEnd("", frozenset())
    text = written.partition(_PROBE)[2].strip()
    tokenizer = template.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    # Special, as the engine decodes: the token vanishes from the text.
    hidden = ids[:1] if ids and not tokenizer.decode(ids[:1], skip_special_tokens=True) else []
    return TurnEnd(text, frozenset(hidden))


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


def _job_split(folder: Path, job_spec: JobSpec, manifest: Manifest, files_root: Path) -> Split:
    """The rows the job's worker trained on and held out, as it recorded them; for a job
    that left no record, its split derived again, from the data it trained on only."""
    recorded = load_split(folder, job_spec.data, files_root)
    if recorded is not None:
        return recorded
    report = validate(job_spec, files_root)
    if manifest.dataset_sha256 and report.data_sha256 != manifest.dataset_sha256:
        raise FailedPrecondition(
            f"{report.data_source} changed since {manifest.name} was trained on it, so the "
            "job's eval split is gone; give eval_file",
            param="eval_file",
        )
    return Split(report.train, report.eval, report.data_source)


def _shot_rows(spec, manifest: Manifest, split: Split | None) -> list[Row]:
    """The few-shot examples come from training rows: an explicit file, else the job's
    train split, else the adapter's training file."""
    if spec.few_shot_file:
        return read_rows(spec.few_shot_file, {}, "few_shot_file")
    if split is not None:
        return split.train
    if manifest.dataset_path and Path(manifest.dataset_path).is_file():
        return read_rows(manifest.dataset_path, {}, "few_shot_file")
    raise InvalidArgument(
        f"the few_shot arm needs training rows: adapter {manifest.name} was trained on "
        f"{manifest.dataset_path or 'an unknown source'}, which is not a local file; "
        "give few_shot_file or a job_id",
        param="few_shot_file",
    )


def _case(template: PromptTemplate | ChatTemplate, row: Row, param: str) -> Case:
    try:
        prompt, reference = template.render_prompt(row.fields), template.render_response(row.fields)
    except InvalidArgument as err:  # "missing field: 'email' is undefined"
        raise InvalidArgument(
            f"{param} line {row.line}: {err.message} (the adapter's template uses "
            f"{', '.join(sorted(template.fields))}; the row has {', '.join(sorted(row.fields))})",
            param=param,
            line=row.line,
        ) from err
    except jinja2.TemplateError as err:  # the chat template's own checks (role order, ...)
        raise InvalidArgument(
            f"{param} line {row.line}: the chat template does not render it: {err}",
            param=param,
            line=row.line,
        ) from err
    if isinstance(template, ChatTemplate):
        messages = tuple(chat_messages(row.fields))  # text parts joined, as rendered
        return Case(row.line, prompt, reference, messages[-1]["content"], messages)
    return Case(row.line, prompt, reference, reference)


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
