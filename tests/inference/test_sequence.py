"""Text assembly of a Sequence, fed token by token without a model."""

import pytest

from inference_service.params import Parameters
from inference_service.sampling import NextTokenChooser
from inference_service.sequence import EOS_TOKEN, LENGTH, STOP_SEQUENCE, Sequence
from tests.conftest import make_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def feed(tokenizer, text: str, **params) -> tuple[Sequence, list]:
    params = Parameters(**params)
    seq = Sequence(
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
    for token_id in tokenizer(text, add_special_tokens=False)["input_ids"]:
        if seq.done:
            break
        seq.add(token_id, -1.0)
    return seq, list(seq.stream(timeout=1)) if seq.done else []


def test_multibyte_characters_are_never_split(tokenizer):
    text = "Café 🙂 naïve ✓ done"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # the emoji and accents take several byte tokens
    seq, chunks = feed(tokenizer, text + "<|endoftext|>")
    texts = [c.token.text for c in chunks if not c.token.special]
    assert "".join(texts) == text == chunks[-1].generated_text
    assert not any("\ufffd" in t for t in texts)
    assert "" in texts  # some tokens waited for the rest of their character
    assert chunks[-1].details.finish_reason == EOS_TOKEN
    assert chunks[-1].token.special and chunks[-1].token.text == "<|endoftext|>"


def test_stop_sequence_inside_a_token_cuts_after_it(tokenizer):
    seq, chunks = feed(tokenizer, "Best regards, The Team. Order today", stop=["ards,"])
    assert chunks[-1].generated_text == "Best regards,"
    assert chunks[-1].details.finish_reason == STOP_SEQUENCE
    assert "".join(c.token.text for c in chunks) == "Best regards,"


def test_a_special_token_stop_sequence_ends_the_turn(tokenizer):
    """A chat template's end-of-turn marker is a special token: skipped in the decoded
    text, so it is matched by id; the text then ends with it, as with any stop sequence."""
    seq, chunks = feed(tokenizer, "Sure thing<|im_end|>\nmore", stop=["<|im_end|>"])
    assert chunks[-1].details.finish_reason == STOP_SEQUENCE
    assert chunks[-1].generated_text == "Sure thing<|im_end|>"
    assert chunks[-1].token.special and chunks[-1].token.text == "<|im_end|>"
    # Without it as a stop sequence the marker is just skipped.
    _, chunks = feed(tokenizer, "Sure thing<|im_end|>\nmore<|endoftext|>")
    assert chunks[-1].generated_text == "Sure thing\nmore"


def test_stop_sequence_across_tokens(tokenizer):
    _, chunks = feed(tokenizer, "The quick brown fox jumps", stop=["k bro"])
    assert chunks[-1].generated_text == "The quick bro"


def test_length_and_full_text(tokenizer):
    _, chunks = feed(
        tokenizer, "The quick brown fox jumps", max_new_tokens=2, return_full_text=True
    )
    assert len(chunks) == 2 and chunks[-1].details.finish_reason == LENGTH
    assert chunks[-1].generated_text.startswith("p")
    assert chunks[-1].generated_text == "p" + "".join(c.token.text for c in chunks)


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
