"""Constrained decoding: TGI's `grammar` and OpenAI's `response_format`. A request gives a
JSON schema or a regular expression; at each step every token that cannot continue a match
is masked out, so the answer matches by construction (then only end-of-sequence is left).
The matching is llguidance's, the library vLLM and SGLang use for the same job."""

import json
from functools import cached_property

import llguidance
import llguidance.hf
import torch

from tuneyard.errors import InvalidArgument

KINDS = ("json", "regex")


class Constraint:
    """One request's grammar state: masks scores, then follows the chosen token."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self.matcher = matcher

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """A copy of a row's scores [vocab] with the tokens the grammar forbids at -inf."""
        allowed = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8)
        keep = torch.zeros(scores.numel(), dtype=torch.bool)
        keep[: allowed.numel()] = allowed[: scores.numel()] > 0
        return scores.masked_fill(~keep.to(scores.device), -float("inf"))

    def advance(self, token_id: int) -> None:
        self.matcher.consume_token(token_id)


class Grammars:
    """Compiles request grammars against the served tokenizer."""

    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size

    @cached_property
    def _ll_tokenizer(self) -> llguidance.LLTokenizer:
        # About half a second for a 50k vocabulary: made on the first constrained request.
        return llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size)

    def constraint(self, kind: str, value: str) -> Constraint:
        """A fresh matcher for one request; a grammar that does not compile is
        INVALID_ARGUMENT with the compiler's reason."""
        if kind == "json":
            try:
                schema = json.loads(value)
            except json.JSONDecodeError as err:
                raise InvalidArgument(
                    f"grammar: the JSON schema is not valid JSON: {err}", param="grammar"
                ) from err
            if isinstance(schema, dict):
                # Fixed separators: with free whitespace a weak model can pad forever.
                schema = {"x-guidance": {"whitespace_flexible": False}, **schema}
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
        elif kind == "regex":
            grammar = llguidance.LLMatcher.grammar_from_regex(value)
        else:
            raise InvalidArgument(
                f"grammar type {kind!r} is not one of {', '.join(KINDS)}", param="grammar"
            )
        problem = llguidance.LLMatcher.validate_grammar(grammar)
        if problem:
            raise InvalidArgument(f"grammar: {problem.strip()}", param="grammar")
        matcher = llguidance.LLMatcher(self._ll_tokenizer, grammar)
        if matcher.is_error():
            raise InvalidArgument(f"grammar: {matcher.get_error()}", param="grammar")
        return Constraint(matcher)
