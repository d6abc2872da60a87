"""OpenAI's preference format (fine-tuning `method: dpo`), read and checked in one place so
the upload check, validation and the dpo recipe agree on what a row means. A row is

    {"input": {"messages": [...], "tools": [...]},   # tools optional
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

Errors name the row's line and, as `param`, the field at fault (`preferred_output`...)."""

import json
from dataclasses import dataclass

from tuneyard.errors import InvalidArgument

INPUT, PREFERRED, NON_PREFERRED = "input", "preferred_output", "non_preferred_output"
FIELDS = (INPUT, PREFERRED, NON_PREFERRED)


@dataclass(frozen=True)
class Preference:
    messages: list[dict]  # the conversation so far: the prompt
    chosen: list[dict]  # the assistant turn(s) preferred
    rejected: list[dict]  # the assistant turn(s) not preferred
    tools: list | None = None

    def conversations(self) -> tuple[list[dict], list[dict]]:
        """prompt + chosen and prompt + rejected: the two sequences DPO compares."""
        return self.messages + self.chosen, self.messages + self.rejected

    def example(self) -> dict:
        """The row as TRL's conversational preference example (tools as JSON text, so rows
        with and without tools fit one Arrow column)."""
        return {
            "prompt": self.messages,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "tools": json.dumps(self.tools) if self.tools else None,
        }


def is_preference(fields: dict) -> bool:
    """A row written in this format (so to be checked as one): it has an output pair, or an
    `input` object (an alpaca row's `input` is text)."""
    return PREFERRED in fields or NON_PREFERRED in fields or isinstance(fields.get(INPUT), dict)


def parse(fields: dict, line: int) -> Preference:
    """The row as a Preference; InvalidArgument naming the line and the field otherwise."""

    def fail(param: str, problem: str):
        raise InvalidArgument(f"line {line}: {problem}", param=param, line=line)

    source = fields.get(INPUT)
    if source is None:
        fail(INPUT, f"no {INPUT!r} (an object with the prompt's 'messages')")
    if not isinstance(source, dict):
        fail(INPUT, f"{INPUT!r} must be an object with 'messages'")
    messages = _turns(source.get("messages"), f"{INPUT}.messages", fail)
    if messages[-1]["role"] == "assistant":
        fail(
            f"{INPUT}.messages",
            "input.messages ends with an assistant turn; the answers belong in preferred_output "
            "and non_preferred_output",
        )
    tools = source.get("tools")
    if tools is not None and not isinstance(tools, list):
        fail(f"{INPUT}.tools", "input.tools must be a list")
    chosen = _turns(fields.get(PREFERRED), PREFERRED, fail, assistant=True)
    rejected = _turns(fields.get(NON_PREFERRED), NON_PREFERRED, fail, assistant=True)
    if chosen == rejected:
        fail(NON_PREFERRED, "preferred_output and non_preferred_output are the same")
    return Preference(messages, chosen, rejected, tools or None)


def _turns(value, name: str, fail, assistant: bool = False) -> list[dict]:
    """A non-empty list of {role, content} text turns, only the assistant's if asked."""
    if value is None:
        fail(name, f"no {name!r}")
    if not isinstance(value, list):
        fail(name, f"{name} must be a list of messages")
    if not value:
        fail(name, f"{name} is empty" + ("; it needs the assistant's message" if assistant else ""))
    turns = []
    for i, turn in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str):
            fail(name, f"{where} must be a message with a string 'role'")
        if not isinstance(turn.get("content"), str):
            fail(name, f"{where} needs string 'content' (only text is supported)")
        if assistant and turn["role"] != "assistant":
            fail(name, f"{where} is a {turn['role']!r} message; it must be the assistant's")
        if assistant and not turn["content"].strip():
            fail(name, f"{where} has empty content")
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def token_lengths(preference: Preference, tokenizer) -> tuple[int, int]:
    """Tokens of prompt + chosen and prompt + rejected, as the chat template renders them
    (how TRL's DPOTrainer tokenizes a conversational row)."""
    return tuple(
        len(
            tokenizer.apply_chat_template(
                conversation, tools=preference.tools, tokenize=True, return_dict=True
            )["input_ids"]
        )
        for conversation in preference.conversations()
    )
