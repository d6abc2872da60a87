"""An adapter's own tokenizer (published with it): the base's, or the base's plus the
tokens its job added; any other difference is refused at load, since the base model would
read its ids as other tokens."""

from pathlib import Path

from tuneyard.errors import FailedPrecondition

# Text that exercises normalization, pre-tokenization and the special tokens added.
PROBE = "Hello, World!  12 3.5\n\t<b>naïve</b> café 日本 ##"
_SPECIALS = ("bos_token", "eos_token", "unk_token", "pad_token")


def adapter_tokenizer(folder: Path, base_tokenizer, added: list[str]):
    """The tokenizer the adapter's rows use: None (the base's) unless it adds tokens.
    Raises FailedPrecondition with each difference from the base's."""
    if not (folder / "tokenizer_config.json").is_file():
        if added:
            raise FailedPrecondition(f"the adapter adds tokens {added} but holds no tokenizer")
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:  # as tuneyard.modeling.load_tokenizer
        tokenizer.pad_token = tokenizer.eos_token
    problems = differences(tokenizer, base_tokenizer, added)
    if problems:
        raise FailedPrecondition(
            "the adapter's tokenizer differs from the base's other than by its added tokens: "
            + "; ".join(problems)
        )
    return tokenizer if added else None


def differences(tokenizer, base, added: list[str]) -> list[str]:
    base_vocab, vocab = base.get_vocab(), tokenizer.get_vocab()
    problems = []
    moved = [t for t, i in base_vocab.items() if vocab.get(t) != i]
    if moved:
        problems.append(f"{len(moved)} of the base's tokens have other ids or none ({moved[:3]})")
    new = sorted((i, t) for t, i in vocab.items() if t not in base_vocab)
    expected = [(len(base) + k, t) for k, t in enumerate(added)]
    if new != expected:
        problems.append(f"it adds {new[:8]} (id, token), its manifest {expected}")
    for name in _SPECIALS:
        if getattr(tokenizer, name) != getattr(base, name):
            problems.append(
                f"{name} {getattr(tokenizer, name)!r}, the base's {getattr(base, name)!r}"
            )
    if tokenizer.chat_template != base.chat_template:
        problems.append("another chat template")
    if tokenizer(PROBE)["input_ids"] != base(PROBE)["input_ids"]:
        problems.append(
            "it encodes text otherwise (normalization, pre-tokenization or the "
            "special tokens it adds)"
        )
    return problems
