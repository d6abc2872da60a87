"""Checks scored on every generated answer: exact match, contains, regular expression,
JSON against a schema, ROUGE-L. A check config is validated when the evaluation is created,
so a bad pattern or schema fails before any generation."""

import json
import re
from dataclasses import dataclass

import jsonschema

from tuneyard.errors import InvalidArgument

TYPES = ("exact_match", "contains", "regex", "json_schema", "rouge_l")


@dataclass(frozen=True)
class Check:
    type: str
    name: str = ""
    value: str = ""
    pattern: str = ""
    fullmatch: bool = False
    schema_json: str = ""

    @property
    def label(self) -> str:
        return self.name or self.type


DEFAULT_CHECKS = (Check("exact_match"), Check("rouge_l"))


class Scorer:
    """A validated check: `score(output, reference)` is 0..1 (1 = pass)."""

    def __init__(self, check: Check, index: int):
        param = f"checks[{index}]"
        self.check = check
        self.name = check.label
        if check.type not in TYPES:
            raise InvalidArgument(
                f"{param}: unknown check type {check.type!r}; use one of {', '.join(TYPES)}",
                param=f"{param}.type",
            )
        self._regex = None
        self._validator = None
        if check.type == "regex":
            if not check.pattern:
                raise InvalidArgument(
                    f"{param}: a regex check needs a pattern", param=f"{param}.pattern"
                )
            try:
                self._regex = re.compile(check.pattern)
            except re.error as err:
                raise InvalidArgument(
                    f"{param}: pattern does not compile: {err}", param=f"{param}.pattern"
                ) from err
        if check.type == "json_schema" and check.schema_json:
            try:
                schema = json.loads(check.schema_json)
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except json.JSONDecodeError as err:
                raise InvalidArgument(
                    f"{param}: schema_json is not valid JSON: {err}", param=f"{param}.schema_json"
                ) from err
            except jsonschema.SchemaError as err:
                raise InvalidArgument(
                    f"{param}: not a valid JSON schema: {err.message}", param=f"{param}.schema_json"
                ) from err
            self._validator = jsonschema.validators.validator_for(schema)(schema)

    def score(self, output: str, reference: str) -> float:
        text = output.strip()
        match self.check.type:
            case "exact_match":
                return float(text == reference.strip())
            case "contains":
                return float((self.check.value or reference.strip()) in output)
            case "regex":
                found = (
                    self._regex.fullmatch(text)
                    if self.check.fullmatch
                    else self._regex.search(text)
                )
                return float(found is not None)
            case "json_schema":
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    return 0.0
                return float(self._validator is None or self._validator.is_valid(value))
            case "rouge_l":
                return rouge_l(text, reference.strip())
        raise AssertionError(self.check.type)


def scorers(checks: list[Check]) -> list[Scorer]:
    """Validate a checks config; names must be unique (they are result columns)."""
    built = [Scorer(c, i) for i, c in enumerate(checks or DEFAULT_CHECKS)]
    names = [s.name for s in built]
    for name in names:
        if names.count(name) > 1:
            raise InvalidArgument(
                f"two checks are named {name!r}; give each a distinct name", param="checks"
            )
    return built


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace tokens: the longest common subsequence against both
    lengths (Lin, 2004, with beta = 1)."""
    a, b = candidate.split(), reference.split()
    if not a or not b:
        return float(a == b)
    lcs = _lcs_length(a, b)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[-1]))
        previous = current
    return previous[-1]
