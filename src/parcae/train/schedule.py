"""Schedules of the learning rate, Muon momentum and weight decay, as pure functions of the step.

Trapezoid (warmup-stable-decay) learning-rate multiplier for step s of S (0-based):

    s < W:              (s + 1) / W
    s < S - D:          1
    otherwise:          f + (1 - f) · (S - s) / D        D = ⌈decay_fraction · S⌉, f final

Muon momentum ramps linearly from `start` to `end` over `warmup` steps; weight decay decays
linearly from its initial value to 0 over the run. S itself comes from the training budget
(`total_steps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from parcae.errors import ConfigError
from parcae.train.config import TrainConfig


def total_steps(config: TrainConfig, params: int, flops_per_token: float) -> int:
    """Steps until the first budget is reached (max_steps, max_tokens, max_flops, tokens/param),
    with `config.batch_size × config.seq_len` tokens per step."""
    tokens_per_step = config.batch_size * config.seq_len
    limits = []
    if config.max_steps is not None:
        limits.append(config.max_steps)
    if config.max_tokens is not None:
        limits.append(config.max_tokens // tokens_per_step)
    if config.max_flops is not None:
        limits.append(int(config.max_flops // (flops_per_token * tokens_per_step)))
    if config.tokens_per_param is not None:
        limits.append(int(config.tokens_per_param * params // tokens_per_step))
    steps = min(limits)
    if steps < 1:
        raise ConfigError(
            f"the training budget allows {steps} steps of {tokens_per_step:,} "
            "tokens; raise it or lower batch_size/seq_len"
        )
    return steps


def lr_multiplier(
    step: int,
    total_steps: int,
    warmup_steps: int,
    decay_fraction: float,
    final_fraction: float = 0.0,
) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = math.ceil(decay_fraction * total_steps)
    decay_start = total_steps - decay_steps
    if decay_steps == 0 or step < decay_start:
        return 1.0
    remaining = max(total_steps - step, 0) / decay_steps
    return final_fraction + (1.0 - final_fraction) * remaining


def muon_momentum(step: int, start: float, end: float, warmup_steps: int) -> float:
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


def weight_decay_multiplier(step: int, total_steps: int) -> float:
    return max(1.0 - step / max(total_steps, 1), 0.0)


@dataclass(frozen=True)
class Schedule:
    """The schedule of a run of `total_steps` steps (its slice of the training config)."""

    total_steps: int
    warmup_steps: int
    decay_fraction: float
    final_lr_fraction: float
    momentum_start: float
    momentum_end: float
    momentum_warmup_steps: int

    @classmethod
    def from_config(cls, config: TrainConfig, total_steps: int) -> Schedule:
        return cls(
            total_steps=total_steps,
            warmup_steps=config.warmup_steps,
            decay_fraction=config.decay_fraction,
            final_lr_fraction=config.final_lr_fraction,
            momentum_start=config.muon_momentum_start,
            momentum_end=config.muon_momentum,
            momentum_warmup_steps=config.muon_momentum_warmup_steps,
        )

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr (`initial_lr` × factor), weight decay and Muon momentum for
        `step`; returns the lr factor."""
        factor = lr_multiplier(
            step, self.total_steps, self.warmup_steps, self.decay_fraction, self.final_lr_fraction
        )
        decay = weight_decay_multiplier(step, self.total_steps)
        momentum = muon_momentum(
            step, self.momentum_start, self.momentum_end, self.momentum_warmup_steps
        )
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
            group["weight_decay"] = group["initial_weight_decay"] * decay
            if group.get("kind") == "muon":
                group["momentum"] = momentum
        return factor
