"""Choosing each row's next token: repetition penalty, temperature, top-k, top-p, greedy or
seeded sampling. One chooser per request, so rows of a batch keep their own parameters."""

import torch

from .grammar import Constraint
from .params import Parameters


class NextTokenChooser:
    def __init__(self, params: Parameters, seed: int, device, constraint: Constraint | None = None):
        # Scores are float32: a temperature or penalty beyond its range would be 0 or inf
        # there, and 0 / 0 or 0 * inf NaN.
        f32 = torch.finfo(torch.float32)
        self.penalty = params.repetition_penalty
        if self.penalty is not None:
            self.penalty = min(max(self.penalty, f32.tiny), f32.max)
        self.sampling = params.sampling
        self.temperature = min(max(params.temperature or 1.0, f32.tiny), f32.max)
        self.top_k = params.top_k
        self.top_p = params.top_p
        self.typical_p = params.typical_p
        self.top_n = params.top_n_tokens or 0
        self.presence = params.presence_penalty or 0.0
        self.frequency = params.frequency_penalty or 0.0
        self.logit_bias = params.logit_bias
        self.constraint = constraint
        self.generator = None
        # Rows that just take the argmax are chosen for the whole batch at once.
        self.plain_greedy = (
            not self.sampling
            and self.penalty in (None, 1.0)
            and not (self.top_n or self.presence or self.frequency or self.logit_bias)
            and constraint is None
        )
        if self.sampling:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)

    def __call__(
        self, logits: torch.Tensor, prompt: list[int], generated: list[int]
    ) -> tuple[int, float, list]:
        """Pick from one row's logits [vocab] given its prompt's ids and those generated so
        far; returns (id, logprob, top) with top the top_n (id, logprob) pairs,
        best first. The logprobs are of the penalized, biased, temperature-scaled
        distribution, before top-k/p."""
        scores = logits.float()
        if self.constraint is not None:
            scores = self.constraint.mask(scores)
        if self.logit_bias:
            ids = torch.tensor(list(self.logit_bias), device=scores.device)
            bias = torch.tensor(list(self.logit_bias.values()), device=scores.device)
            scores = scores.index_add(0, ids, bias)
        if (self.presence or self.frequency) and generated:
            counts = torch.bincount(
                torch.tensor(generated, device=scores.device), minlength=scores.numel()
            ).float()
            scores = scores - self.frequency * counts - self.presence * (counts > 0).float()
        if self.penalty is not None and self.penalty != 1.0:
            index = torch.tensor(prompt + generated, device=scores.device)
            seen = scores.gather(0, index)
            seen = torch.where(seen > 0, seen / self.penalty, seen * self.penalty)
            # A penalty near 0 overflows a score to +inf: the largest finite one instead.
            scores = scores.scatter(0, index, seen.clamp(max=torch.finfo(seen.dtype).max))
        if self.sampling:
            # Shifted first, so that the best score is 0: a temperature near 0 then sends the
            # others to -inf (greedy, its limit) instead of the best to +inf and the
            # distribution to NaN. The softmax is the same.
            scores = (scores - scores.max()) / self.temperature
        logprobs = torch.log_softmax(scores, dim=-1)
        top = []
        if self.top_n:
            values, ids = torch.topk(logprobs, min(self.top_n, logprobs.numel()))
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        if not self.sampling:
            return self._chosen(int(torch.argmax(scores)), logprobs, top)
        kept = logprobs.clone()
        if self.top_k is not None and self.top_k < kept.numel():
            threshold = torch.topk(kept, self.top_k).values[-1]
            kept[kept < threshold] = -float("inf")
        if self.typical_p is not None and self.typical_p < 1.0:
            # Keep the tokens whose surprise (-log p) is closest to the entropy, until they
            # hold typical_p of the mass; keep at least one.
            probs = kept.exp()
            entropy = -(probs * kept).nansum()
            order = (-kept - entropy).abs().argsort()
            mass_before = probs[order].cumsum(0) - probs[order]
            drop = mass_before >= self.typical_p
            drop[0] = False  # a typical_p that is 0 to float32 keeps the most typical
            kept[order[drop]] = -float("inf")
        if self.top_p is not None and self.top_p < 1.0:
            sorted_lp, order = torch.sort(kept, descending=True)
            cumulative = sorted_lp.exp().cumsum(0)
            # Drop a token once the mass before it already reaches top_p; keep at least one.
            drop = (cumulative - sorted_lp.exp()) >= self.top_p
            drop[0] = False
            kept[order[drop]] = -float("inf")
        probs = torch.softmax(kept, dim=-1)
        return self._chosen(
            int(torch.multinomial(probs, 1, generator=self.generator)), logprobs, top
        )

    def _chosen(self, token: int, logprobs: torch.Tensor, top: list) -> tuple[int, float, list]:
        if self.constraint is not None:
            self.constraint.advance(token)
        return token, float(logprobs[token]), top


def greedy_picks(choosers: list[NextTokenChooser], logits: torch.Tensor) -> dict[int, tuple]:
    """(id, logprob, no top tokens) of every plain-greedy row, computed together: one
    device sync for the batch instead of two per row, which matters on a GPU with many
    rows."""
    rows = [i for i, chooser in enumerate(choosers) if chooser.plain_greedy]
    if not rows:
        return {}
    scores = (logits if len(rows) == len(choosers) else logits[rows]).float()
    best, tokens = scores.max(-1)
    logprobs = best - torch.logsumexp(scores, dim=-1)  # log_softmax at the argmax
    picks = zip(tokens.tolist(), logprobs.tolist(), strict=True)
    return {row: (token, logprob, []) for row, (token, logprob) in zip(rows, picks, strict=True)}
