"""The decisions of inference: which token comes next (sampling) and when a token's loop stops
(adaptive test-time depth).

Sampling: `sample_next` draws from softmax(logits / temperature), restricted to the top_k tokens
and the top_p nucleus (temperature 0 is greedy). A temperature is 0 or at least
`MIN_TEMPERATURE` (`check_temperature`): below it float32 logits / temperature overflow to inf
(1 / 1e-39 is inf in float32) and the softmax gives NaN.

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

from parcae.errors import PromptError
from parcae.model.loop import ExitRule, Readout, relative_update
from parcae.values import is_finite_number

EXIT_CRITERIA = ("residual", "kl")


class ResidualExit:
    """Exit once the loop residual r < eps."""

    def __init__(self, eps: float) -> None:
        self.eps = eps

    def __call__(self, h: Tensor, h_prev: Tensor, readout: Readout) -> Tensor:
        return relative_update(h, h_prev) < self.eps


class KLExit:
    """Exit once KL(p_t || p_{t+1}) < eps between successive steps' next-token distributions
    (over the first `vocab_size` logits; never after the first step, which has no
    predecessor)."""

    def __init__(self, eps: float, vocab_size: int) -> None:
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
    """The rule for threshold `eps` on `criterion` (None: no early exit). A `KLExit` keeps the
    previous step's distribution: make one per forward."""
    if criterion not in EXIT_CRITERIA:
        raise PromptError(
            f"unknown adaptive-depth criterion {criterion!r}; use {' or '.join(EXIT_CRITERIA)}"
        )
    if eps is None:
        return None
    if not 0 <= eps < math.inf:
        raise PromptError(f"the adaptive-depth threshold must be a finite number >= 0, got {eps}")
    return ResidualExit(eps) if criterion == "residual" else KLExit(eps, vocab_size)


def sample_next(
    logits: Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Next token per row from logits (B, V): argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the top_k tokens and the top_p nucleus."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature  # max 0: no inf
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
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def check_sampling(
    temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int
) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise PromptError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    check_temperature(temperature)
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise PromptError(f"top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise PromptError(f"top_p must be in (0, 1], got {top_p}")


MIN_TEMPERATURE = 1e-6


def check_temperature(temperature: float, name: str = "temperature") -> None:
    """A temperature is 0 (greedy) or a finite number >= MIN_TEMPERATURE (module docstring);
    PromptError naming `name` otherwise."""
    if not is_finite_number(temperature) or not (
        temperature == 0 or temperature >= MIN_TEMPERATURE
    ):
        raise PromptError(
            f"{name} must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, "
            f"got {temperature!r}"
        )


MAX_SEED = 2**64 - 1


def check_seed(seed: int | None) -> None:
    """A sampling seed is None or an integer in [0, 2**64) (what a torch.Generator holds; a
    negative seed would silently alias a large one)."""
    if seed is None:
        return
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise PromptError(f"seed must be an integer in [0, 2**64 - 1], got {seed!r}")
