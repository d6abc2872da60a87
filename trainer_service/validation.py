"""Validation of a job before it spends compute: the base model, the data, every row
against the template, token lengths and rows left. The first problem found is raised as a
JobValidationError naming the spec field and, where it is a row, the line.

The worker runs the same function, so it trains on exactly the rows validation kept."""

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import nodes

from trainer_service import preference
from trainer_service.dataset import (
    LoadedData,
    Row,
    RowError,
    load_data,
    load_eval_data,
    split_rows,
)
from trainer_service.preference import Preference
from tuneyard.errors import InvalidArgument
from tuneyard.jobspec import JobSpec
from tuneyard.modeling import BaseModelRef, add_tokens, load_tokenizer, resolve_base_model
from tuneyard.templates import ChatTemplate, parse

MAX_EXAMPLES = 5


class JobValidationError(InvalidArgument):
    """A job that must not run; `reason` is the job error's code (e.g. "missing_column")."""

    def __init__(self, reason: str, message: str, *, param: str = "", line: int = 0):
        super().__init__(message, param=param, line=line)
        self.reason = reason


@dataclass
class TokenStats:
    min: int
    mean: float
    p50: int
    p95: int
    max: int

    @classmethod
    def of(cls, lengths: list[int]) -> "TokenStats":
        ordered = sorted(lengths)

        def pct(q: float) -> int:
            return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

        return cls(ordered[0], statistics.fmean(ordered), pct(0.5), pct(0.95), ordered[-1])


@dataclass
class ValidationReport:
    base_model: BaseModelRef
    rows: int
    train_rows: int
    eval_rows: int
    max_tokens: int
    too_long: int = 0
    too_long_lines: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tokens: TokenStats | None = None
    # What the worker trains on (not part of the report a client sees).
    train: list[Row] = field(default_factory=list, repr=False)
    eval: list[Row] = field(default_factory=list, repr=False)
    data_source: str = ""
    data_sha256: str = ""
    eval_sha256: str = ""  # the eval file's, where the eval rows come from one


def validate(spec: JobSpec, files_root: Path) -> ValidationReport:
    try:
        ref = resolve_base_model(spec.base_model)
    except InvalidArgument as err:
        raise JobValidationError("invalid_base_model", err.message, param="base_model") from err
    loaded = _read(spec, files_root)
    rows = loaded.rows
    tokenizer = load_tokenizer(ref)
    try:
        add_tokens(tokenizer, spec.added_tokens)  # rows are measured as they will train
    except ValueError as err:
        raise JobValidationError("invalid_added_tokens", str(err), param="added_tokens") from err
    lengths = _token_lengths(spec, rows, tokenizer)
    limit = spec.training.max_seq_length
    too_long = [row.line for row, n in zip(rows, lengths, strict=True) if n > limit]
    warnings = []
    if too_long:
        # causal_lm truncates long rows; other recipes drop them.
        action = "truncated" if spec.recipe == "causal_lm" else "dropped"
        warnings.append(
            f"{len(too_long)} of {len(rows)} rows are longer than max_seq_length={limit} "
            f"tokens and will be {action} (lines {', '.join(map(str, too_long[:MAX_EXAMPLES]))}"
            f"{', ...' if len(too_long) > MAX_EXAMPLES else ''})"
        )
        if action == "dropped":
            kept = set(too_long)
            rows = [r for r in rows if r.line not in kept]
            if not rows:
                raise JobValidationError(
                    "no_rows",
                    f"no rows are left: every row is longer than {limit} tokens",
                    param="training.max_seq_length",
                )

    eval_loaded = None
    if spec.data.has_eval_file:  # OpenAI's validation_file: train on every row
        eval_loaded, held_out = _eval_rows(spec, files_root, tokenizer)
        train = rows
    else:
        train, held_out = split_rows(rows, spec.data.eval_fraction, spec.training.seed)
    if spec.data.eval_fraction > 0 and not held_out:
        raise JobValidationError(
            "empty_eval_split",
            f"eval_fraction={spec.data.eval_fraction} of {len(rows)} rows leaves no eval rows",
            param="data.eval_fraction",
        )
    if not train:
        raise JobValidationError(
            "no_rows",
            f"eval_fraction={spec.data.eval_fraction} leaves no training rows",
            param="data.eval_fraction",
        )
    return ValidationReport(
        ref,
        len(rows),
        len(train),
        len(held_out),
        max(lengths),
        len(too_long),
        too_long[:MAX_EXAMPLES],
        warnings,
        TokenStats.of(lengths),
        train,
        held_out,
        loaded.source,
        loaded.sha256,
        eval_loaded.sha256 if eval_loaded else "",
    )


def _eval_param(spec: JobSpec) -> str:
    return "data.eval_file_id" if spec.data.eval_file_id else "data.eval_path"


def _eval_rows(spec: JobSpec, files_root: Path, tokenizer) -> tuple[LoadedData, list[Row]]:
    """The eval file's rows, checked as the training rows are (a row too long for a recipe
    that drops rows is dropped); every error names the eval file's field and the line."""
    param = _eval_param(spec)
    try:
        loaded = load_eval_data(spec.data, files_root)
        if not loaded.rows:
            raise JobValidationError("no_rows", f"{loaded.source} has no rows", param=param)
        lengths = _token_lengths(spec, loaded.rows, tokenizer)
    except InvalidArgument as err:
        raise _eval_error(err, param) from err
    rows = loaded.rows
    if spec.recipe != "causal_lm":
        limit = spec.training.max_seq_length
        rows = [r for r, n in zip(rows, lengths, strict=True) if n <= limit]
        if not rows:
            raise JobValidationError(
                "no_rows",
                f"validation file: every row is longer than {limit} tokens",
                param=param,
            )
    return loaded, rows


def _eval_error(err: InvalidArgument, param: str) -> JobValidationError:
    reason = getattr(err, "reason", "invalid_file")
    return JobValidationError(reason, f"validation file: {err.message}", param=param, line=err.line)


def check_data(spec: JobSpec, files_root: Path) -> int:
    """The part of `validate` that needs no model, cheap enough to run while a client waits:
    the data reads, has rows, and every row has the template's fields and renders with it.
    Raises JobValidationError as `validate` does; returns the number of rows. A chat
    template needs the base model's tokenizer to render, so here its rows are only checked
    for their fields; a `data.dataset` source (a hub download, maybe) is not read at all.
    Token lengths and the split stay with `validate`."""
    if spec.data.has_eval_file:
        param = _eval_param(spec)
        try:
            eval_rows = load_eval_data(spec.data, files_root).rows
            if not eval_rows:
                raise JobValidationError("no_rows", "the file has no rows", param=param)
            _check_rows(spec, eval_rows)
        except InvalidArgument as err:
            raise _eval_error(err, param) from err
    if spec.data.dataset:
        return 0
    rows = _read(spec, files_root).rows
    _check_rows(spec, rows)
    return len(rows)


def _check_rows(spec: JobSpec, rows: list[Row]) -> None:
    if spec.recipe == "dpo":
        preferences(rows)
    elif spec.template.is_chat:
        for row in rows:
            _check_fields(row, set(ChatTemplate.fields), spec.data.columns)
    else:
        _rendered(spec, rows, tokenizer=None)


def _token_lengths(spec: JobSpec, rows: list[Row], tokenizer) -> list[int]:
    """Each row's tokens, counted exactly as its recipe encodes it: the longer of prompt +
    chosen and prompt + rejected for a preference row; otherwise the rendered text with
    special tokens, then the EOS that ends a row."""
    if spec.recipe == "dpo":
        return _preference_lengths(spec, rows, tokenizer)
    texts = _rendered(spec, rows, tokenizer)
    eos = tokenizer.eos_token or ""
    return [len(ids) for ids in tokenizer([t + eos for t in texts])["input_ids"]]


def preferences(rows: list[Row]) -> list[Preference]:
    """Each row read in the preference format (recipe dpo); JobValidationError naming the
    line and the field (`preferred_output`...) otherwise."""
    try:
        return [preference.parse(row.fields, row.line) for row in rows]
    except InvalidArgument as err:
        raise JobValidationError(
            "invalid_preference", err.message, param=err.param, line=err.line
        ) from err


def _preference_lengths(spec: JobSpec, rows: list[Row], tokenizer) -> list[int]:
    try:
        spec.template.build(tokenizer)  # the base model has a chat template
    except InvalidArgument as err:
        raise JobValidationError("template_error", err.message, param=err.param) from err
    lengths = []
    for row, pair in zip(rows, preferences(rows), strict=True):
        try:
            lengths.append(max(preference.token_lengths(pair, tokenizer)))
        except Exception as err:  # the chat template's own checks (roles must alternate...)
            raise JobValidationError(
                "template_error",
                f"line {row.line}: the chat template does not render: {type(err).__name__}: {err}",
                param="template",
                line=row.line,
            ) from err
    return lengths


def _read(spec: JobSpec, files_root: Path) -> LoadedData:
    try:
        loaded = load_data(spec.data, files_root)
    except InvalidArgument as err:
        reason = err.reason if isinstance(err, RowError) else "invalid_file"
        raise JobValidationError(reason, err.message, param=err.param, line=err.line) from err
    if not loaded.rows:
        raise JobValidationError(
            "no_rows", f"{loaded.source} has no rows", param=_source_param(spec)
        )
    return loaded


def _rendered(spec: JobSpec, rows: list[Row], tokenizer) -> list[str]:
    """Each row as the template renders it (a chat template needs the tokenizer)."""
    try:
        template = spec.template.build(tokenizer)
    except InvalidArgument as err:
        raise JobValidationError("template_error", err.message, param=err.param) from err
    required = (
        set(template.fields)
        if spec.template.is_chat
        else printed_fields(template.prompt) | printed_fields(template.response)
    )
    return [_render(template, row, required, spec.data.columns) for row in rows]


def _source_param(spec: JobSpec) -> str:
    return next(f"data.{k}" for k in ("path", "dataset", "file_id") if getattr(spec.data, k))


def _render(template, row: Row, required: set[str], columns: dict[str, str]) -> str:
    _check_fields(row, required, columns)
    try:
        return template.render_prompt(row.fields) + template.render_response(row.fields)
    except InvalidArgument as err:
        error = JobValidationError(
            "template_error",
            f"line {row.line}: template does not render: {err.message}",
            # The part that failed (template.prompt / template.response), where known.
            param=err.param if err.param.startswith("template.") else "template",
            line=row.line,
        )
        error.http_status = err.http_status  # a refusal stays a refusal (422)
        raise error from err


def _check_fields(row: Row, required: set[str], columns: dict[str, str]) -> None:
    for name in sorted(required):
        column = columns.get(name, name)
        if name not in row.fields:
            raise JobValidationError(
                "missing_column",
                f"line {row.line} has no column {column!r} (template field {name!r}); "
                f"columns: {', '.join(sorted(row.fields))}",
                param="data.columns",
                line=row.line,
            )
        value = row.fields[name]
        if value is None or (isinstance(value, str) and not value.strip()):
            raise JobValidationError(
                "empty_field",
                f"line {row.line}: column {column!r} is empty",
                param="data.columns",
                line=row.line,
            )


def printed_fields(source: str) -> set[str]:
    """Fields a template prints unconditionally: `{{ x }}` outside `{% if x %}`. A field
    only tested or printed under its own test (`{% if context %}{{ context }}`) is optional."""
    required: set[str] = set()

    def walk(node: nodes.Node, guarded: frozenset[str]) -> None:
        if isinstance(node, nodes.If):
            tested = frozenset(n.name for n in _names(node.test))
            for child in node.body:
                walk(child, guarded | tested)
            for child in [*node.elif_, *node.else_]:
                walk(child, guarded)
            return
        if isinstance(node, nodes.For):
            targets = frozenset(n.name for n in _names(node.target))
            guarded = guarded | targets | {"loop"}
        if isinstance(node, nodes.Output):
            for expr in node.nodes:
                required.update(n.name for n in _names(expr) if n.name not in guarded)
            return
        for child in node.iter_child_nodes():
            walk(child, guarded)

    walk(parse(source), frozenset())
    return required


def _names(node: nodes.Node) -> list[nodes.Name]:
    found = list(node.find_all(nodes.Name))
    return [node, *found] if isinstance(node, nodes.Name) else found
