"""Text assembly of a Sequence, fed token by token without a model."""

import pytest

from inference_service.params import Parameters
from inference_service.sampling import NextTokenChooser
from inference_service.sequence import (
    EOS_TOKEN,
    LENGTH,
    STOP_SEQUENCE,
    Sequence,
    StreamChunk,
)
from tests.conftest import make_tokenizer
from tuneyard.errors import Unavailable


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _sequence(tokenizer, **params) -> Sequence:
    params = Parameters(**params)
    return Sequence(
        tokenizer=tokenizer,
        prompt_text="p",
        prompt_ids=[5],
        params=params,
        max_new_tokens=params.max_new_tokens or 1000,
        eos_ids={tokenizer.eos_token_id},
        chooser=NextTokenChooser(params, 0, "cpu"),
        seed=None,
        adapter_key=None,
    )


def feed(tokenizer, text: str, **params) -> tuple[Sequence, list, StreamChunk | None]:
    """The sequence, the tokens it streamed and its last chunk."""
    seq = _sequence(tokenizer, **params)
    for token_id in tokenizer(text, add_special_tokens=False)["input_ids"]:
        if seq.done:
            break
        seq.add(token_id, -1.0)
    chunks = list(seq.stream(timeout=1)) if seq.done else []
    return seq, [t for c in chunks for t in c.tokens], chunks[-1] if chunks else None


def test_multibyte_characters_are_never_split(tokenizer):
    text = "Café 🙂 naïve ✓ done"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # the emoji and accents take several byte tokens
    seq, tokens, last = feed(tokenizer, text + "<|endoftext|>")
    texts = [t.text for t in tokens if not t.special]
    assert "".join(texts) == text == last.generated_text
    assert not any("\ufffd" in t for t in texts)
    assert "" in texts  # some tokens waited for the rest of their character
    assert last.details.finish_reason == EOS_TOKEN
    assert tokens[-1].special and tokens[-1].text == "<|endoftext|>"


def test_stop_sequence_inside_a_token_cuts_after_it(tokenizer):
    seq, tokens, last = feed(tokenizer, "Best regards, The Team. Order today", stop=["ards,"])
    assert last.generated_text == "Best regards,"
    assert last.details.finish_reason == STOP_SEQUENCE
    assert "".join(t.text for t in tokens) == "Best regards,"


def test_a_special_token_stop_sequence_ends_the_turn(tokenizer):
    """A chat template's end-of-turn marker is a special token: skipped in the decoded
    text, so it is matched by id; the text then ends with it, as with any stop sequence."""
    seq, tokens, last = feed(tokenizer, "Sure thing<|im_end|>\nmore", stop=["<|im_end|>"])
    assert last.details.finish_reason == STOP_SEQUENCE
    assert last.generated_text == "Sure thing<|im_end|>"
    assert tokens[-1].special and tokens[-1].text == "<|im_end|>"
    # Without it as a stop sequence the marker is just skipped.
    _, tokens, last = feed(tokenizer, "Sure thing<|im_end|>\nmore<|endoftext|>")
    assert last.generated_text == "Sure thing\nmore"


def test_stop_sequence_across_tokens(tokenizer):
    _, tokens, last = feed(tokenizer, "The quick brown fox jumps", stop=["k bro"])
    assert last.generated_text == "The quick bro"


def test_length_and_full_text(tokenizer):
    _, tokens, last = feed(
        tokenizer, "The quick brown fox jumps", max_new_tokens=2, return_full_text=True
    )
    assert len(tokens) == 2 and last.details.finish_reason == LENGTH
    assert last.generated_text.startswith("p")
    assert last.generated_text == "p" + "".join(t.text for t in tokens)


def test_sentencepiece_style_leading_space_is_kept():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import CORPUS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        CORPUS * 4, trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"])
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    prompt = tokenizer("The quick", add_special_tokens=False)["input_ids"]
    generated = tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"]
    assert generated[: len(prompt)] == prompt
    assert tokenizer.decode(generated[len(prompt) :]) == "brown fox"  # the space is lost
    params = Parameters()
    seq = Sequence(
        tokenizer=tokenizer,
        prompt_text="The quick",
        prompt_ids=prompt,
        params=params,
        max_new_tokens=100,
        eos_ids={0},
        chooser=NextTokenChooser(params, 0, "cpu"),
        seed=None,
        adapter_key=None,
    )
    for token_id in generated[len(prompt) :]:
        seq.add(token_id, -1.0)
    assert seq.text == " brown fox"


def test_a_reader_that_fell_behind_gets_every_waiting_token_in_one_chunk(tokenizer):
    ids = tokenizer(" order today and save", add_special_tokens=False)["input_ids"]
    seq = _sequence(tokenizer, max_new_tokens=len(ids) + 2)
    stream = seq.stream(timeout=1)
    seq.add(ids[0], -1.0)
    first = next(stream)  # a reader that keeps up: one token per chunk
    assert [t.id for t in first.tokens] == ids[:1] and first.details is None
    for token_id in ids[1:]:
        seq.add(token_id, -1.0)
    behind = next(stream)
    assert [t.id for t in behind.tokens] == ids[1:] and behind.details is None
    seq.add(ids[0], -1.0)
    seq.add(ids[0], -1.0)  # the last one: its chunk carries the details, with the one before
    last = next(stream)
    assert [t.id for t in last.tokens] == [ids[0]] * 2
    assert last.details.generated_tokens == len(ids) + 2 == len(seq.tokens)
    assert last.generated_text == seq.text
    assert next(stream, None) is None


def test_tokens_that_came_before_a_failure_are_still_read(tokenizer):
    ids = tokenizer(" order today", add_special_tokens=False)["input_ids"]
    seq = _sequence(tokenizer)
    for token_id in ids:
        seq.add(token_id, -1.0)
    seq.fail(Unavailable("the engine stopped"))
    stream = seq.stream(timeout=1)
    assert [t.id for t in next(stream).tokens] == ids
    with pytest.raises(Unavailable, match="the engine stopped"):
        next(stream)
