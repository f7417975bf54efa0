"""The decisions of inference: which token comes next (sampling) and when a token's loop stops
(adaptive test-time depth).

Sampling: `sample_next` draws from softmax(logits / temperature), restricted to the top_k tokens,
the top_p nucleus and the tokens of probability >= min_p times the largest (temperature 0 is
greedy). The options are a `parcae.infer.sampling.SamplingParams`, checked there.

Exit rules: the model's forward runs the loop (`parcae.model.loop.run_loop`); at inference it
is given an exit rule, asked after every loop step. A token whose score falls below `eps` stops:
its state is frozen and later tokens attend to the keys and values of its last step. T stays the
maximum; eps = 0 never exits and equals the fixed-depth forward. Criteria (`EXIT_CRITERIA`):

- `residual`: the loop residual r = ‖h_{t+1} - h_t‖ / ‖h_{t+1}‖ (free: no extra compute);
- `kl`: KL(p_t || p_{t+1}) between the next-token distributions of successive steps, each from
  a coda + head pass over C h_t (costs a coda and head per step; with a cache, intermediate coda
  passes attend to the cached final coda keys of earlier tokens, so a prefill in one pass and
  token by token differ slightly: tokens of one pass see each other's intermediate coda keys).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from parcae.model.loop import ExitRule, Readout, relative_update

EXIT_CRITERIA = ("residual", "kl")


class ResidualExit:
    """Exit once the loop residual r < eps (a float, or a tensor (B, 1): one per row)."""

    def __init__(self, eps: float | Tensor) -> None:
        self.eps = eps

    def __call__(self, h: Tensor, h_prev: Tensor, readout: Readout) -> Tensor:
        return relative_update(h, h_prev) < self.eps


class KLExit:
    """Exit once KL(p_t || p_{t+1}) < eps between successive steps' next-token distributions
    (over the first `vocab_size` logits; never after the first step, which has no
    predecessor). eps: a float, or a tensor (B, 1), one per row."""

    def __init__(self, eps: float | Tensor, vocab_size: int) -> None:
        self.eps, self.vocab_size = eps, vocab_size
        self.previous: Tensor | None = None

    def __call__(self, h: Tensor, h_prev: Tensor, readout: Readout) -> Tensor:
        log_p = torch.log_softmax(readout(h)[..., : self.vocab_size].float(), dim=-1)
        before, self.previous = self.previous, log_p
        if before is None:
            return torch.zeros(log_p.shape[:-1], dtype=torch.bool, device=log_p.device)
        # KL >= 0; rounding can make a converged token's KL a hair negative (and eps = 0
        # must never exit)
        kl = (before.exp() * (before - log_p)).sum(dim=-1).clamp_min(0)
        return kl < self.eps


def exit_rule(
    eps: float | None, criterion: str = "residual", vocab_size: int | None = None
) -> ExitRule | None:
    """The rule for threshold `eps` on `criterion` (None: no early exit); both as checked by
    `SamplingParams`. A `KLExit` keeps the previous step's distribution: make one per forward."""
    if eps is None:
        return None
    return ResidualExit(eps) if criterion == "residual" else KLExit(eps, vocab_size)


def sample_next(logits: Tensor, params, generator: torch.Generator | None) -> Tensor:
    """Next token per row from logits (B, V) under `params` (a `SamplingParams`): argmax at
    temperature 0, else a draw from softmax(logits / temperature) restricted to the top_k
    tokens, the top_p nucleus and the tokens with p >= min_p * max p."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / params.temperature  # max 0
    top_k, top_p, min_p = params.top_k, params.top_p, params.min_p
    if top_k is not None and top_k < logits.shape[-1]:
        threshold = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
        drop = before >= top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    if min_p:  # p / p_max = exp(logit - max logit), and the max logit is 0 here
        logits = logits.masked_fill(logits < math.log(min_p), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
