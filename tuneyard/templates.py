"""Prompt templates. A template is two Jinja snippets: the prompt (filled at serving
time from the request's fields) and the response (the part trained on). The exact text of
both travels in the adapter manifest, so serving always uses what training used."""

import hashlib
from dataclasses import dataclass

import jinja2
import jinja2.meta

from tuneyard.errors import InvalidArgument


class _OptionalUndefined(jinja2.StrictUndefined):
    """A missing field may be tested (`{% if context %}`) but not printed."""

    def __bool__(self):
        return False


_ENV = jinja2.Environment(undefined=_OptionalUndefined, keep_trailing_newline=True)

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

    @classmethod
    def builtin(cls, name: str) -> "PromptTemplate":
        if name not in BUILTIN:
            raise InvalidArgument(
                f"unknown template {name!r}; built-in: {', '.join(sorted(BUILTIN))}",
                param="template",
            )
        return cls(*BUILTIN[name])

    def __post_init__(self):
        for part in ("prompt", "response"):
            try:
                _ENV.parse(getattr(self, part))
            except jinja2.TemplateSyntaxError as err:
                raise InvalidArgument(
                    f"template.{part} is not valid Jinja: {err.message} (line {err.lineno})",
                    param=f"template.{part}",
                ) from err

    @property
    def prompt_fields(self) -> set[str]:
        return jinja2.meta.find_undeclared_variables(_ENV.parse(self.prompt))

    @property
    def response_fields(self) -> set[str]:
        return jinja2.meta.find_undeclared_variables(_ENV.parse(self.response))

    @property
    def fields(self) -> set[str]:
        return self.prompt_fields | self.response_fields

    @property
    def sha256(self) -> str:
        return hashlib.sha256(f"{self.prompt}\0{self.response}".encode()).hexdigest()

    def render_prompt(self, row: dict) -> str:
        return self._render(self.prompt, row)

    def render_response(self, row: dict) -> str:
        return self._render(self.response, row)

    def _render(self, text: str, row: dict) -> str:
        try:
            return _ENV.from_string(text).render(row)
        except jinja2.UndefinedError as err:
            raise InvalidArgument(f"missing field: {err.message}", param="fields") from err
        except jinja2.TemplateError as err:
            raise InvalidArgument(f"template does not render: {err}", param="template") from err


class ChatTemplate:
    """The `chat` built-in: the tokenizer's own chat template over a row's `messages`
    (a list of {role, content} ending with the assistant's turn, which is trained on).
    The manifest keeps the chat template's source as the prompt text."""

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
        return self.tokenizer.apply_chat_template(
            self._messages(row)[:-1], tokenize=False, add_generation_prompt=True
        )

    def render_response(self, row: dict) -> str:
        """The assistant's last turn as the template writes it (end-of-turn marker too)."""
        messages = self._messages(row)
        full = self.tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = self.render_prompt(row)
        return full[len(prompt) :] if full.startswith(prompt) else messages[-1]["content"]

    def _messages(self, row: dict) -> list[dict]:
        messages = row.get(self.MESSAGES)
        if not isinstance(messages, list) or not messages:
            raise InvalidArgument("'messages' must be a non-empty list", param="fields")
        for turn in messages:
            if not (
                isinstance(turn, dict)
                and isinstance(turn.get("role"), str)
                and isinstance(turn.get("content"), str)
            ):
                raise InvalidArgument(
                    "each message needs a string 'role' and 'content'", param="fields"
                )
        if messages[-1]["role"] != "assistant":
            raise InvalidArgument(
                f"the last message must be the assistant's (got {messages[-1]['role']!r})",
                param="fields",
            )
        return messages
