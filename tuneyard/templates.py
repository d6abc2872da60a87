"""Prompt templates. A template is two Jinja snippets: the prompt (filled at serving
time from the request's fields) and the response (the part trained on). The exact text of
both travels in the adapter manifest, so serving always uses what training used.

Templates are data from users, so they are rendered in Jinja's immutable sandbox with
less still: no globals, a short allow-list of filters and methods, no macros, includes or
recursive loops, and a budget per render (output length, time) that every loop, operator
and filter that could grow or spin checks before it does the work."""

import contextvars
import hashlib
import json
import time
from dataclasses import dataclass, field

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

from tuneyard.errors import InvalidArgument

MAX_TEMPLATE_CHARS = 64 * 1024
MAX_RENDERED_CHARS = 4 * 1024 * 1024
MAX_RENDER_SECONDS = 2.0
MAX_INT_BITS = 4096


class TemplateRefused(InvalidArgument):
    """A template that asks for more than a template may do (an attribute outside the
    allow-list, a macro, a render over budget). Answered 422: the request is well formed,
    and will never be accepted."""

    http_status = 422


class _OverBudget(Exception):
    """Raised inside a render; `_render` turns it into TemplateRefused naming the part."""


class _OptionalUndefined(jinja2.StrictUndefined):
    """A missing field may be tested (`{% if context %}`) but not printed."""

    def __bool__(self):
        return False


# --- what a template may use -------------------------------------------------------------
_STR_METHODS = frozenset(
    {
        "strip", "lstrip", "rstrip", "lower", "upper", "title", "capitalize", "split",
        "rsplit", "splitlines", "startswith", "endswith", "count", "find", "isdigit",
        "isalpha", "isspace",
    }
)  # fmt: skip
_DICT_METHODS = frozenset({"items", "keys", "values", "get"})
_LOOP_ATTRIBUTES = frozenset(
    {
        "index", "index0", "revindex", "revindex0", "first", "last", "length", "depth",
        "depth0", "previtem", "nextitem", "cycle", "changed",
    }
)  # fmt: skip
_CALLABLE_ATTRIBUTES = _STR_METHODS | _DICT_METHODS | {"cycle", "changed"}
_STATEMENTS = (nodes.Template, nodes.Output, nodes.If, nodes.For, nodes.Assign)
_EXPRESSIONS = (
    nodes.TemplateData, nodes.Const, nodes.Name, nodes.Getattr, nodes.Getitem, nodes.Slice,
    nodes.Filter, nodes.Test, nodes.Compare, nodes.Operand, nodes.BinExpr, nodes.UnaryExpr,
    nodes.Concat, nodes.CondExpr, nodes.List, nodes.Tuple, nodes.Dict, nodes.Pair,
    nodes.Call, nodes.Keyword,
)  # fmt: skip

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("template_deadline")


def _tick() -> None:
    if time.monotonic() > _deadline.get(float("inf")):
        raise _OverBudget(f"takes longer than {MAX_RENDER_SECONDS:g} s to render")


def _check_size(chars: int) -> None:
    if chars > MAX_RENDERED_CHARS:
        raise _OverBudget(f"renders more than {MAX_RENDERED_CHARS} characters")


def _bounded(items):
    """Every `{% for %}` iterates through this, so a loop that prints nothing still ends."""
    for i, item in enumerate(items):
        if i % 256 == 0:
            _tick()
        yield item


def _concat(parts) -> str:
    """`a ~ b ~ c`, sized before it is built."""
    texts = [str(p) for p in parts]
    _check_size(sum(map(len, texts)))
    return "".join(texts)


def _join(items, separator: str = "") -> str:
    texts = [str(i) for i in _bounded(items)]
    _check_size(sum(map(len, texts)) + len(str(separator)) * max(len(texts) - 1, 0))
    return str(separator).join(texts)


def _replace(text, old, new, count: int | None = None) -> str:
    text, old, new = str(text), str(old), str(new)
    hits = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    _check_size(len(text) + hits * (len(new) - len(old)))
    return text.replace(old, new, -1 if count is None else count)


def _length(value) -> int:
    return len(value)


def _sized(operand) -> int | None:
    return len(operand) if isinstance(operand, str | list | tuple) else None


class _TemplateSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def is_safe_attribute(self, obj, attr, value) -> bool:
        if isinstance(obj, str):
            allowed = _STR_METHODS
        elif isinstance(obj, dict):
            allowed = _DICT_METHODS
        elif isinstance(obj, LoopContext):
            allowed = _LOOP_ATTRIBUTES
        else:
            allowed = frozenset()
        return attr in allowed and super().is_safe_attribute(obj, attr, value)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
        _tick()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context, operator, left, right):
        _tick()
        if operator == "%" and isinstance(left, str):
            raise SecurityError("printf-style formatting ('%') is not allowed in templates")
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise SecurityError("exponents above 64 are not allowed in templates")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if _sized(seq) is not None and isinstance(times, int):
                    _check_size(_sized(seq) * times)
            both_int = isinstance(left, int) and isinstance(right, int)
            if both_int and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError(f"integers above {MAX_INT_BITS} bits are not allowed")
        if operator == "+" and _sized(left) is not None and _sized(right) is not None:
            _check_size(_sized(left) + _sized(right))
        return super().call_binop(context, operator, left, right)


_FILTERS = {
    "default": jinja2.filters.do_default,
    "d": jinja2.filters.do_default,
    "lower": jinja2.filters.do_lower,
    "upper": jinja2.filters.do_upper,
    "title": jinja2.filters.do_title,
    "capitalize": jinja2.filters.do_capitalize,
    "trim": jinja2.filters.do_trim,
    "truncate": jinja2.filters.do_truncate,
    "wordcount": jinja2.filters.do_wordcount,
    "first": jinja2.filters.do_first,
    "last": jinja2.filters.do_last,
    "string": jinja2.filters.soft_str,
    "int": jinja2.filters.do_int,
    "float": jinja2.filters.do_float,
    "round": jinja2.filters.do_round,
    "abs": abs,
    "tojson": jinja2.filters.do_tojson,
    "length": _length,
    "count": _length,
    "join": _join,
    "replace": _replace,
    # Used by the rewrite below, not meant to be written by hand (harmless if they are).
    "_bounded": _bounded,
    "_concat": _concat,
}
ALLOWED_FILTERS = frozenset(k for k in _FILTERS if not k.startswith("_"))


def _sandbox() -> _TemplateSandbox:
    env = _TemplateSandbox(undefined=_OptionalUndefined, keep_trailing_newline=True)
    env.globals.clear()
    env.filters = dict(_FILTERS)
    return env


_ENV = _sandbox()


def parse(source: str) -> nodes.Template:
    """A template's syntax tree, parsed by the sandbox (for reading which fields it uses)."""
    return _ENV.parse(source)


def _refuse(part: str, what: str) -> TemplateRefused:
    return TemplateRefused(f"template.{part} {what}", param=f"template.{part}")


def _check_nodes(part: str, tree: nodes.Template) -> None:
    """What a template may contain, checked before it is compiled, so a refusal names
    the construct instead of surfacing from some later render."""
    for node in tree.find_all(nodes.Node):
        if not isinstance(node, _STATEMENTS + _EXPRESSIONS):
            raise _refuse(part, f"uses {type(node).__name__.lower()!r}, which templates may not")
        if isinstance(node, nodes.Name) and node.name == "self":
            raise _refuse(part, "reads 'self', which templates may not")
        if isinstance(node, nodes.For) and node.recursive:
            raise _refuse(part, "uses a recursive loop, which templates may not")
        if isinstance(node, nodes.Getattr | nodes.Getitem):
            name = node.attr if isinstance(node, nodes.Getattr) else _const(node.arg)
            if isinstance(name, str) and name.startswith("_"):
                raise _refuse(part, f"reads {name!r}: names starting with '_' are not allowed")
        if isinstance(node, nodes.Filter) and node.name not in ALLOWED_FILTERS:
            raise _refuse(
                part,
                f"uses the filter {node.name!r}; allowed: {', '.join(sorted(ALLOWED_FILTERS))}",
            )
        if isinstance(node, nodes.Call):
            method = node.node.attr if isinstance(node.node, nodes.Getattr) else None
            if method not in _CALLABLE_ATTRIBUTES or node.dyn_args or node.dyn_kwargs:
                shown = f".{method}()" if method else "a call of something other than a method"
                raise _refuse(
                    part,
                    f"uses {shown}; callable: "
                    f"{', '.join(sorted(_CALLABLE_ATTRIBUTES))} (string and mapping methods)",
                )


def _const(node: nodes.Node):
    return node.value if isinstance(node, nodes.Const) else None


class _Budgeted(NodeTransformer):
    """Routes every loop and every `~` through the budget-checking filters."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "_bounded", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
        self.generic_visit(node)
        items = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(items, "_concat", [], [], None, None, lineno=node.lineno)


def _compile(part: str, source: str) -> jinja2.Template:
    if len(source) > MAX_TEMPLATE_CHARS:
        raise _refuse(part, f"has {len(source)} characters; the limit is {MAX_TEMPLATE_CHARS}")
    try:
        tree = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as err:
        raise InvalidArgument(
            f"template.{part} is not valid Jinja: {err.message} (line {err.lineno})",
            param=f"template.{part}",
        ) from err
    _check_nodes(part, tree)
    try:
        return _ENV.from_string(_Budgeted().visit(tree))
    except jinja2.TemplateError as err:
        raise InvalidArgument(
            f"template.{part} does not compile: {err}", param=f"template.{part}"
        ) from err


def render_bounded(template: jinja2.Template, part: str, row: dict) -> str:
    """Render within the budget; every failure is an InvalidArgument naming the part."""
    token = _deadline.set(time.monotonic() + MAX_RENDER_SECONDS)
    try:
        chunks, size = [], 0
        for chunk in template.generate(row):
            size += len(chunk)
            _check_size(size)
            _tick()
            chunks.append(chunk)
        return "".join(chunks)
    except _OverBudget as err:
        raise _refuse(part, str(err)) from err
    except SecurityError as err:
        raise _refuse(part, f"is refused by the sandbox: {err}") from err
    except jinja2.UndefinedError as err:
        raise InvalidArgument(f"missing field: {err.message}", param="fields") from err
    except jinja2.TemplateError as err:
        raise InvalidArgument(
            f"template.{part} does not render: {err}", param=f"template.{part}"
        ) from err
    except Exception as err:  # the template's own arithmetic, conversions, lookups
        raise InvalidArgument(
            f"template.{part} does not render: {type(err).__name__}: {err}",
            param=f"template.{part}",
        ) from err
    finally:
        _deadline.reset(token)


ALPACA_PROMPT = (
    "Below is an instruction that describes a task"
    "{% if context %}, paired with an input that provides further context{% endif %}. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{{ instruction }}\n\n"
    "{% if context %}### Input:\n{{ context }}\n\n{% endif %}"
    "### Response:\n"
)

BUILTIN = {
    "alpaca": (ALPACA_PROMPT, "{{ response }}"),
}


@dataclass(frozen=True)
class PromptTemplate:
    prompt: str
    response: str
    _compiled: dict = field(init=False, repr=False, compare=False)

    @classmethod
    def builtin(cls, name: str) -> "PromptTemplate":
        if name not in BUILTIN:
            raise InvalidArgument(
                f"unknown template {name!r}; built-in: {', '.join(sorted(BUILTIN))}",
                param="template",
            )
        return cls(*BUILTIN[name])

    def __post_init__(self):
        compiled = {part: _compile(part, getattr(self, part)) for part in ("prompt", "response")}
        object.__setattr__(self, "_compiled", compiled)

    @property
    def prompt_fields(self) -> set[str]:
        return jinja2.meta.find_undeclared_variables(parse(self.prompt))

    @property
    def response_fields(self) -> set[str]:
        return jinja2.meta.find_undeclared_variables(parse(self.response))

    @property
    def fields(self) -> set[str]:
        return self.prompt_fields | self.response_fields

    @property
    def sha256(self) -> str:
        return hashlib.sha256(f"{self.prompt}\0{self.response}".encode()).hexdigest()

    def render_prompt(self, row: dict) -> str:
        return render_bounded(self._compiled["prompt"], "prompt", row)

    def render_response(self, row: dict) -> str:
        return render_bounded(self._compiled["response"], "response", row)


def chat_messages(row: dict) -> list[dict]:
    """A chat row's `messages` in OpenAI's chat format, checked without a tokenizer (so an
    upload can be) and returned as a chat template takes them. Each turn has a string
    `role`; its `content` is a string or a list of text parts (joined), or null on an
    assistant turn that makes `tool_calls` (or the legacy `function_call`), whose JSON-text
    `arguments` become objects. The last turn is the assistant's; `weight` (0 or 1, on
    assistant turns only; 0 keeps a turn out of the loss) leaves at least one to train on;
    `tools`, if given, is a list of objects."""
    messages = row.get(ChatTemplate.MESSAGES)
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("'messages' must be a non-empty list", param="fields")
    turns = [_chat_turn(turn, f"messages[{i}]") for i, turn in enumerate(messages)]
    if turns[-1]["role"] != "assistant":
        raise InvalidArgument(
            f"the last message must be the assistant's (got {turns[-1]['role']!r})",
            param="fields",
        )
    if not any(m["role"] == "assistant" and m.get("weight", 1) for m in turns):
        raise InvalidArgument(
            "every assistant message has weight 0: nothing to train on", param="fields"
        )
    tools = row.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        raise InvalidArgument("'tools' must be a list of objects", param="fields")
    return turns


def _chat_turn(turn, where: str) -> dict:
    if not (isinstance(turn, dict) and isinstance(turn.get("role"), str)):
        raise InvalidArgument(f"{where} needs a string 'role'", param="fields")
    role = turn["role"]
    calls = turn.get("tool_calls")
    if "function_call" in turn:  # OpenAI's legacy form of one tool call
        calls = [{"type": "function", "function": turn["function_call"]}]
    if calls is not None and (role != "assistant" or not isinstance(calls, list) or not calls):
        raise InvalidArgument(
            f"{where}.tool_calls: a non-empty list, on assistant messages only", param="fields"
        )
    out = {k: v for k, v in turn.items() if k not in ("function_call", "tool_calls")}
    out["content"] = _content(turn.get("content"), f"{where}.content", calls is not None)
    if calls is not None:
        out["tool_calls"] = [_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
    if role == "function":  # the legacy function result: a tool's, for chat templates
        out["role"] = "tool"
    if "weight" in turn:
        if role != "assistant":
            raise InvalidArgument(
                f"{where}.weight: for assistant messages only (this one is {role!r})",
                param="fields",
            )
        if turn["weight"] not in (0, 1) or isinstance(turn["weight"], bool):
            raise InvalidArgument(
                f"{where}.weight must be 0 or 1 (got {turn['weight']!r})",
                param="fields",
            )
    return out


def _content(content, where: str, calls: bool) -> str:
    """A turn's text: a string, or text parts joined; null only beside tool calls."""
    if isinstance(content, str):
        return content
    if content is None and calls:
        return ""
    if isinstance(content, list) and content:
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidArgument(
                    f"{where}[{j}] must be a text part to train on (got {kind!r})",
                    param="fields",
                )
            if not isinstance(part.get("text"), str):
                raise InvalidArgument(f"{where}[{j}] needs a string 'text'", param="fields")
        return "".join(part["text"] for part in content)
    raise InvalidArgument(
        f"{where} must be a string or a list of text parts"
        + (" (null only on an assistant message with tool_calls)" if content is None else ""),
        param="fields",
    )


def _tool_call(call, where: str) -> dict:
    """OpenAI's tool call as chat templates take it: `arguments` an object, not JSON text."""
    function = call.get("function") if isinstance(call, dict) else None
    if not (
        isinstance(function, dict)
        and call.get("type", "function") == "function"
        and isinstance(function.get("name"), str)
        and function["name"]
    ):
        raise InvalidArgument(
            f"{where} needs type 'function' and a 'function' with a string 'name'",
            param="fields",
        )
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            arguments = None
    if not isinstance(arguments, dict):
        raise InvalidArgument(
            f"{where}.function.arguments must be a JSON object (as text)",
            param="fields",
        )
    extra = {"id": call["id"]} if "id" in call else {}
    return {
        **extra,
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


class ChatTemplate:
    """The `chat` built-in: the tokenizer's own chat template over a row's `messages`
    (see chat_messages) and its `tools`. Each assistant turn is trained on unless its
    `weight` is 0, as in OpenAI's chat format; `render_prompt`/`render_response` are the
    last turn's. The manifest keeps the chat template's source as the prompt text."""

    MESSAGES = "messages"

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidArgument(
                "template 'chat' needs a tokenizer with a chat template; this base model's "
                "tokenizer has none",
                param="template.builtin",
            )
        self.tokenizer = tokenizer
        self.prompt = tokenizer.chat_template
        self.response = ""

    fields = prompt_fields = frozenset({MESSAGES})
    response_fields = frozenset()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(f"{self.prompt}\0{self.response}".encode()).hexdigest()

    def render_prompt(self, row: dict) -> str:
        """Every turn but the last, then the assistant's generation prompt."""
        return self._prompt(row, len(self._messages(row)) - 1)

    def render_response(self, row: dict) -> str:
        """The assistant's last turn as the template writes it (end-of-turn marker too)."""
        return self._completion(row, len(self._messages(row)) - 1)

    def trained_turns(self, row: dict) -> list[tuple[str, str]]:
        """(prompt, completion) for each assistant turn the loss counts: the conversation
        up to it, then the turn as the template writes it."""
        messages = self._messages(row)
        return [
            (self._prompt(row, i), self._completion(row, i))
            for i, m in enumerate(messages)
            if m["role"] == "assistant" and m.get("weight", 1)
        ]

    def _prompt(self, row: dict, turn: int) -> str:
        return self._render(row, self._messages(row)[:turn], add_generation_prompt=True)

    def _completion(self, row: dict, turn: int) -> str:
        messages = self._messages(row)
        full = self._render(row, messages[: turn + 1])
        prompt = self._prompt(row, turn)
        return full[len(prompt) :] if full.startswith(prompt) else messages[turn]["content"]

    def _render(self, row: dict, messages: list[dict], add_generation_prompt=False) -> str:
        turns = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
        text = self._apply(row, turns, add_generation_prompt)
        if any("tool_calls" in m for m in turns):
            # A chat template that ignores tool calls would train an empty turn in silence.
            plain = [{k: v for k, v in m.items() if k != "tool_calls"} for m in turns]
            if self._apply(row, plain, add_generation_prompt) == text:
                raise InvalidArgument(
                    "this base model's chat template does not write an assistant message's "
                    "tool_calls: a row with them cannot be trained on this model",
                    param="template.builtin",
                )
        return text

    def _apply(self, row: dict, turns: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            turns,
            tools=row.get("tools") or None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def _messages(self, row: dict) -> list[dict]:
        return chat_messages(row)
