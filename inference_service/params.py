"""Generation requests and their parameters, as the engine takes them, and their checks."""

from dataclasses import dataclass, field

from tuneyard.errors import InvalidArgument
from tuneyard.sampling import is_sampling

MAX_STOP_SEQUENCES = 8
MAX_TOP_N_TOKENS = 20  # OpenAI's top_logprobs limit


@dataclass
class Parameters:
    """TGI's generation parameters; None means the default."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    do_sample: bool = False
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    return_full_text: bool = False
    truncate: int | None = None
    details: bool = False
    decoder_input_details: bool = False
    top_n_tokens: int | None = None
    typical_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: tuple[str, str] | None = None  # (type, value): see grammar.py

    @property
    def sampling(self) -> bool:
        return is_sampling(self.do_sample, self.temperature, self.top_k, self.top_p, self.typical_p)

    def validate(self, *, max_input_tokens: int) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InvalidArgument(
                f"max_new_tokens must be at least 1, got {self.max_new_tokens}",
                param="max_new_tokens",
            )
        if self.temperature is not None and self.temperature <= 0:
            raise InvalidArgument(
                f"temperature must be strictly positive, got {self.temperature}",
                param="temperature",
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p}", param="top_p")
        if self.typical_p is not None and not 0 < self.typical_p <= 1:
            raise InvalidArgument(
                f"typical_p must be in (0, 1], got {self.typical_p}", param="typical_p"
            )
        if self.top_k is not None and self.top_k < 1:
            raise InvalidArgument(f"top_k must be at least 1, got {self.top_k}", param="top_k")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise InvalidArgument(
                f"repetition_penalty must be strictly positive, got {self.repetition_penalty}",
                param="repetition_penalty",
            )
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise InvalidArgument(
                f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(self.stop)}",
                param="stop",
            )
        if any(not s for s in self.stop):
            raise InvalidArgument("stop sequences must not be empty", param="stop")
        if self.top_n_tokens is not None and not 0 <= self.top_n_tokens <= MAX_TOP_N_TOKENS:
            raise InvalidArgument(
                f"top_n_tokens must be between 0 and {MAX_TOP_N_TOKENS}, got {self.top_n_tokens}",
                param="top_n_tokens",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None and not -2 <= value <= 2:
                raise InvalidArgument(f"{name} must be between -2 and 2, got {value}", param=name)
        bad_bias = {t: b for t, b in self.logit_bias.items() if not -100 <= b <= 100}
        if bad_bias:
            raise InvalidArgument(
                f"logit_bias values must be between -100 and 100, got {bad_bias}",
                param="logit_bias",
            )
        if self.truncate is not None and not 1 <= self.truncate <= max_input_tokens:
            raise InvalidArgument(
                f"truncate must be between 1 and max_input_tokens={max_input_tokens}, "
                f"got {self.truncate}",
                param="truncate",
            )


@dataclass
class GenerateInput:
    """One request: exactly one of `inputs`, `fields` or `messages`."""

    inputs: str = ""
    adapter_id: str = ""
    parameters: Parameters = field(default_factory=Parameters)
    fields: dict[str, str] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    tools: list[dict] = field(default_factory=list)  # for the chat template, with messages
    # Appended to the tokenized prompt: a continuation to score (see the proto).
    continuation_ids: list[int] = field(default_factory=list)

    def check_one_input(self) -> None:
        given = [n for n in ("inputs", "fields", "messages") if getattr(self, n)]
        if not given:
            raise InvalidArgument("empty input: give inputs, fields or messages", param="inputs")
        if len(given) > 1:
            raise InvalidArgument(
                f"give only one of inputs, fields or messages (got {' and '.join(given)})",
                param="inputs",
            )
        if self.tools and not self.messages:
            raise InvalidArgument(
                "tools go with messages (the chat template renders them)", param="tools"
            )
