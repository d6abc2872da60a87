"""One request in flight: its tokens, its text as it grows, when it stops, what it returns.

The engine thread feeds a Sequence one token at a time and posts each to the sequence's
own queue; the waiting gRPC thread takes whatever has come since it last looked, so a
reader that falls behind catches up in one message instead of one per token.
"""

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tuneyard.errors import TuneyardError, Unavailable

from .params import Parameters
from .sampling import NextTokenChooser

LENGTH, EOS_TOKEN, STOP_SEQUENCE = "length", "eos_token", "stop_sequence"


@dataclass
class TokenInfo:
    id: int
    text: str
    logprob: float
    special: bool = False
    top: list["TokenInfo"] = field(default_factory=list)  # top_n_tokens alternatives


@dataclass
class Details:
    finish_reason: str
    generated_tokens: int
    prompt_tokens: int
    seed: int | None
    adapter: str
    prefill: list[TokenInfo] = field(default_factory=list)
    tokens: list[TokenInfo] = field(default_factory=list)


@dataclass
class Generation:
    generated_text: str
    details: Details


@dataclass
class StreamChunk:
    """The tokens generated since the reader last looked (at least one, in order); the
    last chunk also carries the text and the details."""

    tokens: list[TokenInfo]
    generated_text: str | None = None
    details: Details | None = None


class RequestCancelled(Exception):
    """The client went away; nobody waits for the answer."""


class Sequence:
    def __init__(
        self,
        *,
        tokenizer,
        prompt_text: str,
        prompt_ids: list[int],
        params: Parameters,
        max_new_tokens: int,
        eos_ids: set[int],
        chooser: NextTokenChooser | None,  # None where the engine chooses (vLLM)
        seed: int | None,
        adapter_key: str | None,
        answered_by: str = "",
        on_close: Callable[["Sequence", str], None] = lambda seq, status: None,
    ):
        self.tokenizer = tokenizer
        self.prompt_text = prompt_text
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_new_tokens = max_new_tokens
        self.eos_ids = eos_ids
        self.chooser = chooser
        self.seed = seed
        self.adapter_key = adapter_key  # the rows' LoRA routing; None for base or merged
        self.answered_by = answered_by  # "name@version" reported in the details
        self.on_close = on_close
        self.ids: list[int] = []
        self.tokens: list[TokenInfo] = []
        self.prefill: list[TokenInfo] = []
        self.text = ""  # generated text emitted so far
        self.finish_reason: str | None = None
        self.created_at = time.monotonic()
        self.first_token_at: float | None = None
        self.cancelled = threading.Event()
        self._out: queue.Queue = queue.Queue()
        self._closed = False
        # Named special tokens and added ones flagged special (chat markers): the decoded
        # text skips both.
        added = getattr(tokenizer, "added_tokens_decoder", {})
        self._special_ids = frozenset(tokenizer.all_special_ids) | {
            i for i, token in added.items() if token.special
        }
        # A stop sequence that is one special token (a chat template's "<|im_end|>") never
        # shows in the text, which skips special tokens: it is matched by id instead.
        self._stop_ids = {}
        for stop in params.stop:
            ids = tokenizer(stop, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] in self._special_ids:
                self._stop_ids[ids[0]] = stop
        # The Rust tokenizer itself, when there is one: transformers' decode wrapper costs
        # more than the decoding, per token and row.
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        # Incremental decoding, as TGI: the text of a token is what decoding
        # window[prefix:] adds to window[prefix:read]. The window starts with a few prompt
        # tokens: SentencePiece tokenizers drop the leading space of a decode's first token.
        self._window = prompt_ids[-4:]
        self._prefix, self._read = 0, len(self._window)
        self._longest_stop = max((len(s) for s in params.stop), default=0)

    @property
    def stop_token_ids(self) -> set[int]:
        """Stop sequences that are one special token, matched by id."""
        return set(self._stop_ids)

    # Engine thread side.

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self._closed

    def set_prefill(self, logprobs: list[float], tops: list[list[tuple[int, float]]] = ()) -> None:
        """Prompt-token logprobs and, with top_n_tokens, each position's likeliest (id,
        logprob) pairs, best first; the first token has neither (NaN, none)."""
        tops = [[], *tops] if tops else [[] for _ in self.prompt_ids]
        self.prefill = [
            TokenInfo(
                i,
                self.tokenizer.decode([i]),
                lp,
                i in self._special_ids,
                [TokenInfo(t, self._token_text(t), v, t in self._special_ids) for t, v in top],
            )
            for i, lp, top in zip(self.prompt_ids, [math.nan, *logprobs], tops, strict=True)
        ]

    def add(self, token_id: int, logprob: float, top: list[tuple[int, float]] = ()) -> None:
        """Append a generated token (with its top alternatives as (id, logprob)), work out
        the new text and whether to stop, post it."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.ids.append(token_id)
        if token_id in self.eos_ids:
            self.finish_reason = EOS_TOKEN
            token = TokenInfo(token_id, self.tokenizer.decode([token_id]), logprob, True)
        elif token_id in self._stop_ids:
            # As for any stop sequence, the text ends with it.
            self.finish_reason = STOP_SEQUENCE
            self.text += self._stop_ids[token_id]
            token = TokenInfo(token_id, self._stop_ids[token_id], logprob, True)
        else:
            self._window.append(token_id)
            token = TokenInfo(token_id, self._next_text(), logprob, token_id in self._special_ids)
            if self.finish_reason is None and len(self.ids) >= self.max_new_tokens:
                self.finish_reason = LENGTH
        token.top = [TokenInfo(i, self._token_text(i), lp, i in self._special_ids) for i, lp in top]
        self.tokens.append(token)
        if self.finish_reason is None:
            self._out.put(token)
            return
        self._out.put(StreamChunk([token], self._full_text(), self.details()))
        self._close("ok")

    def fail(self, error: Exception) -> None:
        self._out.put(error)
        self._close("cancelled" if isinstance(error, RequestCancelled) else "error")

    def _next_text(self) -> str:
        """The text the newest token adds; a token that ends inside a multi-byte character
        adds nothing until the rest of it comes. Cut at a stop sequence."""
        before = self._decode(self._window[self._prefix : self._read])
        after = self._decode(self._window[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._window)
        full = self.text + after[len(before) :]
        start = max(0, len(self.text) - self._longest_stop + 1)
        for stop in self.params.stop:
            at = full.find(stop, start)
            if at >= 0:
                full = full[: at + len(stop)]  # as TGI: the text ends with the stop sequence
                self.finish_reason = STOP_SEQUENCE
                break
        added, self.text = full[len(self.text) :], full
        return added

    def _token_text(self, token_id: int) -> str:
        """One token alone, special ones included (an alternative's text)."""
        if self._backend is not None:
            return self._backend.decode([token_id], skip_special_tokens=False)
        return self.tokenizer.decode([token_id])

    def _decode(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _full_text(self) -> str:
        return self.prompt_text + self.text if self.params.return_full_text else self.text

    def details(self) -> Details:
        return Details(
            finish_reason=self.finish_reason or LENGTH,
            generated_tokens=len(self.ids),
            prompt_tokens=len(self.prompt_ids),
            seed=self.seed,
            adapter=self.answered_by,
            prefill=self.prefill if self.params.decoder_input_details else [],
            tokens=self.tokens if self.params.details else [],
        )

    def _close(self, status: str) -> None:
        if not self._closed:
            self._closed = True
            self.on_close(self, status)

    # Waiting side (a gRPC thread).

    def cancel(self) -> None:
        self.cancelled.set()

    def stream(self, timeout: float | None = None) -> Iterator[StreamChunk]:
        """Waits (up to `timeout` s) for the next token, then takes every token that has
        come meanwhile into the same chunk."""
        while True:
            try:
                item = self._out.get(timeout=timeout)
            except queue.Empty:
                self.cancel()
                raise Unavailable(f"no token within {timeout} s") from None
            chunk, error = self._gather(item)
            if chunk is not None:
                yield chunk
                if chunk.details is not None:
                    return
            if error is not None:
                raise _reader_error(error)

    def _gather(self, item) -> tuple[StreamChunk | None, Exception | None]:
        """`item` and every token already waiting behind it, as one chunk; and the error
        that ended them, if one did."""
        tokens = []
        while isinstance(item, TokenInfo):
            tokens.append(item)
            try:
                item = self._out.get_nowait()
            except queue.Empty:
                item = None
        if isinstance(item, StreamChunk):
            return StreamChunk(tokens + item.tokens, item.generated_text, item.details), None
        return (StreamChunk(tokens) if tokens else None), item

    def result(self, timeout: float | None = None) -> Generation:
        for chunk in self.stream(timeout):
            if chunk.details is not None:
                return Generation(chunk.generated_text or "", chunk.details)
        raise Unavailable("generation ended without a result")


def _reader_error(error: Exception) -> Exception:
    """What the reader raises for an error the engine posted."""
    if isinstance(error, TuneyardError | RequestCancelled):
        return error
    unavailable = Unavailable(f"generation failed: {error}")
    unavailable.__cause__ = error
    return unavailable
