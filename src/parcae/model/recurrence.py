"""The loop: depth sampling with truncated backprop, and the one function that iterates the core.

Training samples, per unit (the micro-batch, each sequence, or each token), a number of loop
steps `n` run without gradient followed by `k` steps with gradient (truncated backprop through
depth, SPEC §1.5). With `t = max(μ_rec - μ_bwd, 0)` and `s = μ_bwd`:

- `poisson-truncated-full` (presets): N = max(Poisson(t + s), 1), k = min(N, s), n = N - k
- `poisson-full`: n = 0, k = max(Poisson(t + s), 1)
- `poisson`: n = Poisson(t), k = s
- `fixed`: n = t, k = s

An optional curriculum scales t and/or s by `ramp(step / L)` with ramp(x) = x or 1 - sqrt(1 - x).

`iterate` executes only the rows still active at each step: they are gathered, run and
scattered back, so the loop work executed equals the work sampled. Per-token depth has its own
loop, `parcae.model.token_loop.iterate_tokens`, which computes only the active tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

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
    def fixed(cls, batch_size: int, steps: int, device=None) -> "DepthPlan":
        """Exactly `steps` loop steps for every row, all with gradient."""
        zeros = torch.zeros(batch_size, dtype=torch.long, device=device)
        return cls(zeros, zeros + steps, zeros)

    def rows(self, start: int, stop: int) -> "DepthPlan":
        """The plan of rows [start, stop) (a rank's or a micro-batch's share of a global plan)."""
        return DepthPlan(self.no_grad_steps[start:stop], self.grad_steps[start:stop],
                         self.noise_seeds[start:stop])

    @property
    def total_steps(self) -> Tensor:
        return self.no_grad_steps + self.grad_steps


def _curriculum_ramp(config: ParcaeConfig, step: int) -> float:
    if config.curriculum_steps <= 0 or step >= config.curriculum_steps:
        return 1.0
    progress = step / config.curriculum_steps
    return progress if config.curriculum_shape == "linear" else 1 - math.sqrt(1 - progress)


def _poisson(rate: float, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    rates = torch.full(shape, float(rate), dtype=torch.float64)
    return torch.poisson(rates, generator=generator).long()


def sample_depth_plan(config: ParcaeConfig, batch_size: int, seq_len: int,
                      generator: torch.Generator | None = None, step: int = 0) -> DepthPlan:
    """Draw a `DepthPlan` for a (batch_size, seq_len) micro-batch, on the CPU."""
    ramp = _curriculum_ramp(config, step)
    t = max(config.mean_recurrence - config.mean_backprop_depth, 0)
    s = config.mean_backprop_depth
    if config.curriculum_target in ("forward", "both"):
        t = math.ceil(t * ramp)
    if config.curriculum_target in ("backward", "both"):
        s = max(math.ceil(s * ramp), 1)

    shape = {"per-batch": (1,), "per-sequence": (batch_size,),
             "per-token": (batch_size, seq_len)}[config.depth_granularity]
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


@dataclass
class LoopStats:
    """What one forward's loop did.

    state_norm: mean L2 norm of h_T over tokens, and residual: mean over rows of
    ‖h_T - h_{T-1}‖ / ‖h_T‖ (Frobenius over the row): detached 0-d tensors, so reading them
    is the caller's choice of when to synchronise. mean_steps: mean sampled depth.
    executed_steps / sampled_steps: row-steps (token-steps for per-token depth) the core ran
    vs. the sum of sampled depths.
    """

    state_norm: Tensor
    residual: Tensor
    mean_steps: float
    executed_steps: int
    sampled_steps: int


StepFn = Callable[[Tensor, Tensor | None], Tensor]


def _advance(step_fn: StepFn, h: Tensor, steps: Tensor, residual: Tensor) -> tuple[Tensor, int]:
    """Run each row of h for its own number of `steps` (B,).

    step_fn(h_rows, row_index) applies one loop step to the rows selected by `row_index`
    (None = every row). Returns the new state and the executed row-steps. `residual` (B,)
    receives each row's last relative update norm (no gradient).
    """
    batch = h.shape[0]
    executed = 0
    for t in range(int(steps.max()) if steps.numel() else 0):
        rows = (steps > t).nonzero().squeeze(1)
        every_row = rows.numel() == batch
        h_rows = h if every_row else h.index_select(0, rows)
        h_new = step_fn(h_rows, None if every_row else rows)
        with torch.no_grad():
            delta = (h_new - h_rows).float().flatten(1).norm(dim=1)
            norm = h_new.float().flatten(1).norm(dim=1).clamp_min(1e-12)
            residual.index_copy_(0, rows, delta / norm)
        h = h_new if every_row else h.index_copy(0, rows, h_new)
        executed += rows.numel()
    return h, executed


def iterate(step_fn: StepFn, h: Tensor, plan: DepthPlan) -> tuple[Tensor, LoopStats]:
    """Apply the loop to h (B, S, d_r) with per-row depths: `plan.no_grad_steps` steps without
    gradient, then `plan.grad_steps` steps with gradient (truncated backprop through depth)."""
    residual = torch.zeros(h.shape[0], device=h.device)
    executed = 0
    if torch.is_grad_enabled() and bool((plan.no_grad_steps > 0).any()):
        with torch.no_grad():
            h, executed = _advance(step_fn, h, plan.no_grad_steps.to(h.device), residual)
        h = h.detach()
        h, grad_work = _advance(step_fn, h, plan.grad_steps.to(h.device), residual)
    else:
        h, grad_work = _advance(step_fn, h, plan.total_steps.to(h.device), residual)
    total = plan.total_steps
    with torch.no_grad():
        stats = LoopStats(
            state_norm=h.detach().float().norm(dim=-1).mean(),
            residual=residual.mean(),
            mean_steps=float(total.float().mean()),
            executed_steps=executed + grad_work,
            sampled_steps=int(total.sum()),
        )
    return h, stats
