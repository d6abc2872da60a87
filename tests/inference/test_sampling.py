"""The chooser's OpenAI-style adjustments on crafted logits: what they change and when."""

import math

import pytest
import torch

from inference_service.params import Parameters
from inference_service.sampling import NextTokenChooser
from tuneyard.errors import InvalidArgument

LOGITS = torch.tensor([0.0, 1.0, 3.0, 2.5, 0.5])  # greedy: token 2, then 3


def choose(generated=(), **params) -> int:
    chooser = NextTokenChooser(Parameters(**params), 0, "cpu")
    return chooser(LOGITS, [9], list(generated))[0]


def test_frequency_penalty_grows_with_each_occurrence():
    assert choose([2], frequency_penalty=0.4) == 2  # 3.0 - 0.4 > 2.5
    assert choose([2, 2], frequency_penalty=0.4) == 3  # 3.0 - 0.8 < 2.5
    assert choose([2, 2], frequency_penalty=-1.0) == 2  # negative: encourages repeats


def test_presence_penalty_counts_once():
    assert choose([2], presence_penalty=0.6) == 3
    assert choose([2, 2, 2], presence_penalty=0.4) == 2  # 3.0 - 0.4 > 2.5, however many
    assert choose([], presence_penalty=2.0) == 2  # only generated tokens are penalized


def test_logit_bias_and_its_logprob():
    assert choose(logit_bias={4: 100.0}) == 4
    assert choose(logit_bias={2: -100.0}) == 3
    chooser = NextTokenChooser(Parameters(logit_bias={4: 2.6}), 0, "cpu")
    token, logprob, _ = chooser(LOGITS, [9], [])
    assert token == 4  # 0.5 + 2.6 > 3.0
    assert logprob == pytest.approx(torch.log_softmax(LOGITS + torch.eye(5)[4] * 2.6, 0)[4])
    # These rows cannot take the batched argmax.
    assert not chooser.plain_greedy and NextTokenChooser(Parameters(), 0, "cpu").plain_greedy


@pytest.mark.parametrize(
    "params",
    [
        {"do_sample": True, "temperature": 5e-324},  # the smallest float above 0
        {"do_sample": True, "temperature": 1e-40},
        {"do_sample": True, "temperature": 1e308},
        {"repetition_penalty": 5e-324},
        {"do_sample": True, "repetition_penalty": 1e-45, "temperature": 1e-30},
        {"repetition_penalty": 1e308, "top_n_tokens": 2},
        {"do_sample": True, "repetition_penalty": 1e300, "temperature": 1e-300},
        {"temperature": 5e-324, "top_p": 5e-324, "typical_p": 5e-324},
        {"typical_p": 1e-50, "top_k": 1},
    ],
)
def test_extreme_temperatures_and_penalties_still_choose(params):
    """Found by fuzzing the gateway: a temperature or penalty near 0 overflowed the scores
    and the softmax gave NaN, failing the whole engine step."""
    chooser = NextTokenChooser(Parameters(**params), 0, "cpu")
    token, logprob, top = chooser(LOGITS, [0, 2, 3], [])  # token 0's logit is 0
    assert 0 <= token < 5 and not math.isnan(logprob)
    assert all(not math.isnan(lp) for _, lp in top)
    if params.get("temperature", 1) < 1e-20 and "repetition_penalty" not in params:
        assert token == 2  # the limit of a temperature going to 0: greedy


def test_typical_p_keeps_the_tokens_closest_to_the_entropy():
    # p = .5, .3, .15, .05: entropy 1.14 nats; surprises .69, 1.20, 1.90, 3.00. Token 1 is
    # the most typical, then 0: typical_p 0.2 keeps token 1 alone, 0.5 keeps 1 and 0.
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()

    def samples(typical_p: float) -> set[int]:
        params = Parameters(do_sample=True, typical_p=typical_p)
        return {NextTokenChooser(params, seed, "cpu")(logits, [9], [])[0] for seed in range(40)}

    assert samples(0.2) == {1}
    assert samples(0.5) == {0, 1}
    assert samples(1.0) == {0, 1, 2, 3}
    assert Parameters(typical_p=0.9).sampling


@pytest.mark.parametrize(
    "params, message",
    [
        ({"presence_penalty": 2.5}, "presence_penalty must be between -2 and 2"),
        ({"frequency_penalty": -3.0}, "frequency_penalty must be between -2 and 2"),
        ({"logit_bias": {1: 101.0}}, "logit_bias values must be between -100 and 100"),
        ({"typical_p": 0.0}, "typical_p must be in"),
    ],
)
def test_out_of_range_values_are_refused(params, message):
    with pytest.raises(InvalidArgument, match=message):
        Parameters(**params).validate(max_input_tokens=10)
