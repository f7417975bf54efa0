"""Schedules of the learning rate, Muon momentum and weight decay, as pure functions of the step.

Trapezoid (warmup-stable-decay) learning-rate multiplier for step s of S (0-based):

    s < W:              (s + 1) / W
    s < S - D:          1
    otherwise:          f + (1 - f) · (S - s) / D        D = ⌈decay_fraction · S⌉, f final

Muon momentum ramps linearly from `start` to `end` over `warmup` steps; weight decay decays
linearly from its initial value to 0 over the run.
"""

from __future__ import annotations

import math

import torch


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, decay_fraction: float,
                  final_fraction: float = 0.0) -> float:
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


def apply_schedule(optimizer: torch.optim.Optimizer, step: int, total_steps: int,
                   warmup_steps: int, decay_fraction: float, final_fraction: float,
                   momentum_start: float, momentum_end: float, momentum_warmup: int) -> float:
    """Set every group's lr, weight decay (and Muon momentum) for `step`; returns the lr factor."""
    factor = lr_multiplier(step, total_steps, warmup_steps, decay_fraction, final_fraction)
    decay = weight_decay_multiplier(step, total_steps)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
        group["weight_decay"] = group["initial_weight_decay"] * decay
        if group.get("kind") == "muon":
            group["momentum"] = muon_momentum(step, momentum_start, momentum_end, momentum_warmup)
    return factor
