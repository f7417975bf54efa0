"""Loop depths: how many steps each row or token runs in training, with and without gradient.

Training samples, per unit (the micro-batch, each sequence, or each token), a number of loop
steps `n` run without gradient followed by `k` steps with gradient (truncated backprop through
depth, SPEC §1.5). With `t = max(μ_rec - μ_bwd, 0)` and `s = μ_bwd`:

- `poisson-truncated-full` (presets): N = max(Poisson(t + s), 1), k = min(N, s), n = N - k
- `poisson-full`: n = 0, k = max(Poisson(t + s), 1)
- `poisson`: n = Poisson(t), k = s
- `fixed`: n = t, k = s

An optional curriculum scales t and/or s by `ramp(step / L)` with ramp(x) = x or 1 - sqrt(1 - x).

`parcae.model.loop.run_loop` executes a plan, computing only the rows or tokens still active at
each step, so the loop work executed equals the work sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from parcae.model.config import ParcaeConfig


@dataclass
class DepthPlan:
    """Loop depths for one micro-batch.

    no_grad_steps, grad_steps: int64, (B,) per row or (B, S) per token.
    noise_seeds: int64 (B,), seeds of each row's random initial state (unused by `zero` init).
    """

    no_grad_steps: Tensor
    grad_steps: Tensor
    noise_seeds: Tensor

    @classmethod
    def fixed(cls, batch_size: int, steps: int, device=None) -> DepthPlan:
        """Exactly `steps` loop steps for every row, all with gradient."""
        zeros = torch.zeros(batch_size, dtype=torch.long, device=device)
        return cls(zeros, zeros + steps, zeros)

    def rows(self, start: int, stop: int) -> DepthPlan:
        """The plan of rows [start, stop) (a rank's or a micro-batch's share of a global plan)."""
        return DepthPlan(
            self.no_grad_steps[start:stop],
            self.grad_steps[start:stop],
            self.noise_seeds[start:stop],
        )

    @property
    def total_steps(self) -> Tensor:
        return self.no_grad_steps + self.grad_steps

    @property
    def per_token(self) -> bool:
        return self.no_grad_steps.dim() == 2

    def per_token_plan(self, seq_len: int) -> DepthPlan:
        """The same depths as a per-token plan ((B, S) step counts)."""
        if self.per_token:
            return self

        def expand(steps: Tensor) -> Tensor:
            return steps[:, None].expand(-1, seq_len).contiguous()

        return DepthPlan(expand(self.no_grad_steps), expand(self.grad_steps), self.noise_seeds)


def _curriculum_ramp(config: ParcaeConfig, step: int) -> float:
    if config.curriculum_steps <= 0 or step >= config.curriculum_steps:
        return 1.0
    progress = step / config.curriculum_steps
    return progress if config.curriculum_shape == "linear" else 1 - math.sqrt(1 - progress)


def _poisson(rate: float, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    rates = torch.full(shape, float(rate), dtype=torch.float64)
    return torch.poisson(rates, generator=generator).long()


def sample_depth_plan(
    config: ParcaeConfig,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator | None = None,
    step: int = 0,
) -> DepthPlan:
    """Draw a `DepthPlan` for a (batch_size, seq_len) micro-batch, on the CPU."""
    ramp = _curriculum_ramp(config, step)
    t = max(config.mean_recurrence - config.mean_backprop_depth, 0)
    s = config.mean_backprop_depth
    if config.curriculum_target in ("forward", "both"):
        t = math.ceil(t * ramp)
    if config.curriculum_target in ("backward", "both"):
        s = max(math.ceil(s * ramp), 1)

    shape = {"per-batch": (1,), "per-sequence": (batch_size,), "per-token": (batch_size, seq_len)}[
        config.depth_granularity
    ]
    scheme = config.sampling_scheme
    if scheme == "poisson-truncated-full":
        total = _poisson(t + s, shape, generator).clamp(min=1)
        grad = total.clamp(max=s)
        no_grad = total - grad
    elif scheme == "poisson-full":
        no_grad = torch.zeros(shape, dtype=torch.long)
        grad = _poisson(t + s, shape, generator).clamp(min=1)
    elif scheme == "poisson":
        no_grad = _poisson(t, shape, generator)
        grad = torch.full(shape, s, dtype=torch.long)
    else:  # fixed
        no_grad = torch.full(shape, t, dtype=torch.long)
        grad = torch.full(shape, s, dtype=torch.long)
    if config.lockstep_no_grad:
        no_grad = no_grad.flatten()[:1].expand(shape)
    if config.lockstep_grad:
        grad = grad.flatten()[:1].expand(shape)
    if config.depth_granularity == "per-batch":
        no_grad, grad = no_grad.expand(batch_size), grad.expand(batch_size)
    seeds = torch.randint(0, 2**62, (batch_size,), generator=generator)
    return DepthPlan(no_grad.contiguous(), grad.contiguous(), seeds)
