"""The loop: the one function that iterates the recurrent core, driven by a schedule.

Each step, a schedule names the *active* units and whether gradients flow through them:

- whole rows (`RowSchedule`: per-batch or per-sequence depth). Row b runs n_b steps without
  gradient, then k_b with gradient (truncated backprop through depth). Rows do not attend to each
  other, so their steps need not line up: the no-gradient steps of every row come first.
- single tokens (`TokenSchedule`: per-token depth in training, and the tokens that have not yet
  exited at inference). All tokens start together at step 0 and token i runs while
  t < total_i and it has not exited; a token in step t < n_i takes no gradient. Tokens attend to
  each other, so they move in lockstep, and a token that stopped keeps the keys and values of its
  last step (an attention site holds them, see `parcae.model.cache`).
- every token, every step (`LockstepSchedule`: inference at a fixed depth without early exit,
  prefill and decoding alike): the same Python at every call, so a compiled or exported decode
  step unrolls the loop.

`run_loop` gathers the active part of the state, applies one loop step to it, scatters the
result back and records the loop residual, whose one definition is, per token,

    r_t = ‖h_{t+1} - h_t‖ / ‖h_{t+1}‖           (L2 over the state width)

It is the logged diagnostic (`LoopStats.residual`: mean over tokens of each token's last r) and
the input of the adaptive exit rule at inference (`parcae.infer.engine`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from parcae.model.recurrence import DepthPlan

Readout = Callable[[Tensor], Tensor]  # h (B, S, d_r) -> logits (B, S, V_pad)


@dataclass
class Active:
    """The units one loop step computes (at most one of `rows` / `tokens` is set).

    rows: int64 (R,) whole rows; tokens: (rows, cols), int64 (N,) each; neither: every token.
    The active part of a (B, S, ...) tensor is (R, S, ...), (1, N, ...) or the tensor itself.
    grad: whether gradients may flow in this step; grad_tokens: bool, the active part's leading
    (.., ..) shape, the units that take gradient when only some do (None: all or none, by grad).
    step: the loop step t (0-based) of a token schedule; count: units computed (rows or tokens).
    """

    step: int
    count: int
    rows: Tensor | None = None
    tokens: tuple[Tensor, Tensor] | None = None
    grad: bool = True
    grad_tokens: Tensor | None = None

    def take(self, x: Tensor | None) -> Tensor | None:
        """The active part of x (B, S, ...) (None passes through)."""
        if x is None:
            return None
        if self.rows is not None:
            return x.index_select(0, self.rows)
        if self.tokens is not None:
            return x[self.tokens][None]
        return x

    def take_rope(self, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """cos, sin for the active part: tables (S, hd/2) are shared by every row, tables
        (B, S, hd/2) hold per-row positions."""

        if self.rows is None and self.tokens is None:
            return rope

        def one(table: Tensor) -> Tensor:
            if table.dim() == 2:
                return table if self.tokens is None else table[self.tokens[1]]
            return self.take(table)

        return one(rope[0]), one(rope[1])

    def put(self, x: Tensor, part: Tensor) -> Tensor:
        """x (B, S, ...) with its active part replaced by `part` (out of place)."""
        if self.rows is not None:
            return x.index_copy(0, self.rows, part)
        if self.tokens is not None:
            return x.index_put(self.tokens, part[0])
        return part

    def truncate(self, x: Tensor) -> Tensor:
        """Detach the units of x (active-part leading dims) that take no gradient."""
        if self.grad_tokens is None:
            return x
        keep = self.grad_tokens.view(*self.grad_tokens.shape, *[1] * (x.dim() - 2))
        return torch.where(keep, x, x.detach())


class Schedule(Protocol):
    """Yields the `Active` units of each step; `observe` sees the state after each step."""

    sampled_steps: int

    def __iter__(self) -> Iterator[Active]: ...

    def observe(self, h: Tensor, h_prev: Tensor, readout: Readout | None) -> None: ...

    def steps_taken(self, shape: torch.Size) -> Tensor:
        """int64 (B, S): loop steps each token ran (after the iteration)."""
        ...


class RowSchedule:
    """Per-row depths of `plan` ((B,) step counts): under gradient, every row's no-gradient
    steps first, then its gradient steps; without gradient, all its steps at once."""

    def __init__(self, plan: DepthPlan, device: torch.device) -> None:
        self.no_grad = plan.no_grad_steps.to(device)
        self.grad = plan.grad_steps.to(device)
        self.sampled_steps = int(plan.total_steps.sum())

    def __iter__(self) -> Iterator[Active]:
        if torch.is_grad_enabled() and bool((self.no_grad > 0).any()):
            phases = ((self.no_grad, False), (self.grad, True))
        else:
            phases = ((self.no_grad + self.grad, True),)
        batch = self.grad.shape[0]
        for steps, grad in phases:
            for t in range(int(steps.max()) if steps.numel() else 0):
                rows = (steps > t).nonzero().squeeze(1)
                every = rows.numel() == batch
                yield Active(step=t, count=rows.numel(), rows=None if every else rows, grad=grad)

    def observe(self, h: Tensor, h_prev: Tensor, readout: Readout | None) -> None:
        pass

    def steps_taken(self, shape: torch.Size) -> Tensor:
        return (self.no_grad + self.grad)[:, None].expand(shape)


ExitRule = Callable[[Tensor, Tensor, Readout], Tensor]
"""exit_rule(h, h_prev, readout) -> bool (B, S), the tokens that may stop: h (B, S, d_r) the
state after the step, h_prev the state before each token's latest step (so the loop residual is
`relative_update(h, h_prev)`), readout(h) -> logits."""


class TokenSchedule:
    """Per-token depths `total` (B, S), the first `no_grad` (B, S) of them without gradient,
    fewer where `exit_rule` stops a token after a step (it is asked after every step)."""

    def __init__(
        self, total: Tensor, no_grad: Tensor | None = None, exit_rule: ExitRule | None = None
    ) -> None:
        self.total, self.no_grad, self.exit_rule = total, no_grad, exit_rule
        self.sampled_steps = int(total.sum())
        self.max_steps = int(total.max()) if total.numel() else 0
        # every token runs every step: no masks to compute (inference without early exit)
        self.lockstep = exit_rule is None and self.sampled_steps == self.max_steps * total.numel()
        self.stop_step = torch.full_like(total, self.max_steps)  # step count where one stopped
        self.running: Tensor | None = None
        self.step = 0

    @classmethod
    def fixed(
        cls, shape: torch.Size, steps: int, device: torch.device, exit_rule: ExitRule | None
    ) -> TokenSchedule | LockstepSchedule:
        """`steps` for every token (inference), fewer where `exit_rule` stops one; without an
        exit rule, the `LockstepSchedule`."""
        if exit_rule is None:
            return LockstepSchedule(shape, steps, device)
        return cls(torch.full(shape, steps, device=device), exit_rule=exit_rule)

    def __iter__(self) -> Iterator[Active]:
        tracking = torch.is_grad_enabled()
        for t in range(self.max_steps):
            self.step = t
            tokens = None
            if not self.lockstep:
                self.running = (self.total > t) & (self.stop_step > t)
                if not bool(self.running.all()):
                    tokens = self.running.nonzero(as_tuple=True)
                    if tokens[0].numel() == 0:
                        return
            grad_tokens = None
            if tracking and self.no_grad is not None:
                in_grad = self.no_grad <= t
                grad_tokens = in_grad[tokens][None] if tokens else in_grad
                if bool(grad_tokens.all()):
                    grad_tokens = None
            count = self.total.numel() if tokens is None else tokens[0].numel()
            yield Active(step=t, count=count, tokens=tokens, grad=True, grad_tokens=grad_tokens)

    def observe(self, h: Tensor, h_prev: Tensor, readout: Readout | None) -> None:
        if self.exit_rule is not None:
            stops = self.running & self.exit_rule(h, h_prev, readout)
            self.stop_step = torch.where(stops, self.step + 1, self.stop_step)

    def steps_taken(self, shape: torch.Size) -> Tensor:
        return self.total if self.lockstep else torch.minimum(self.total, self.stop_step)


class LockstepSchedule:
    """Every token of `shape` runs all `steps` steps, together (inference at a fixed depth
    without early exit): nothing is masked or gathered and nothing is read back from the
    device, so a compiled or traced forward unrolls the loop into one fixed-shape graph."""

    def __init__(self, shape: torch.Size, steps: int, device: torch.device) -> None:
        self.shape, self.steps, self.device = tuple(shape), steps, device
        self.count = self.shape[0] * self.shape[1]
        self.sampled_steps = steps * self.count

    def __iter__(self) -> Iterator[Active]:
        for t in range(self.steps):
            yield Active(step=t, count=self.count)

    def observe(self, h: Tensor, h_prev: Tensor, readout: Readout | None) -> None:
        pass

    def steps_taken(self, shape: torch.Size) -> Tensor:
        return torch.full(shape, self.steps, device=self.device)


@dataclass
class LoopStats:
    """What one forward's loop did.

    steps: int64 (B, S), loop steps each token ran; executed_steps / sampled_steps: units
    (row-steps for a row schedule, token-steps for a token schedule) the core ran vs. the sum of
    the schedule's depths. final_state, previous_state: (B, S, d_r) detached, h_T and the state
    before each token's last step, from which `state_norm` and `residual` are computed when read
    (detached 0-d tensors, so reading them is the caller's choice of when to synchronise).
    """

    steps: Tensor
    executed_steps: int
    sampled_steps: int
    final_state: Tensor
    previous_state: Tensor

    @property
    def state_norm(self) -> Tensor:
        """Mean L2 norm of h_T over tokens."""
        return self.final_state.float().norm(dim=-1).mean()

    @property
    def residual(self) -> Tensor:
        """Mean over tokens of each token's last loop residual r (module docstring)."""
        return relative_update(self.final_state, self.previous_state).mean()

    @property
    def mean_steps(self) -> float:
        """Mean loop steps per token."""
        return float(self.steps.float().mean())


def relative_update(new: Tensor, old: Tensor) -> Tensor:
    """r = ‖new - old‖ / ‖new‖ per token, float32 (..., S) from states (..., S, d)."""
    delta = (new - old).float().norm(dim=-1)
    return delta / new.float().norm(dim=-1).clamp_min(1e-12)


LoopProbe = Callable[[int, Tensor, Tensor, Readout], None]
"""probe(t, h, h_prev, readout), called after loop step t (1-based) with the state h (B, S, d_r)
after it, the state before it, and readout(h) -> logits: what a depth sweep reads (the logits at
every depth up to T from one forward at depth T)."""

StepFn = Callable[[Tensor, Active], Tensor]
"""step(h_active, active) -> the next state of the active units (same shape)."""


def run_loop(
    step: StepFn,
    h: Tensor,
    schedule: Schedule,
    readout: Readout | None = None,
    probe: LoopProbe | None = None,
) -> tuple[Tensor, LoopStats]:
    """Apply the loop to h (B, S, d_r) as `schedule` directs; returns h_T and `LoopStats`.

    `readout` (h -> logits) is handed to the schedule's exit rule (the KL criterion uses it) and
    to `probe`, which sees the state after every step."""
    tracking = torch.is_grad_enabled()
    h_prev = h  # the state before each unit's latest step
    executed = 0
    for active in schedule:
        with torch.set_grad_enabled(tracking and active.grad):
            h_old = active.take(h)
            h_new = active.truncate(step(h_old, active))
        h_prev = active.put(h_prev.detach(), h_old.detach())
        h = active.put(h, h_new)
        executed += active.count
        schedule.observe(h, h_prev, readout)
        if probe is not None:
            probe(active.step + 1, h, h_prev, readout)
    stats = LoopStats(
        steps=schedule.steps_taken(h.shape[:2]),
        executed_steps=executed,
        sampled_steps=schedule.sampled_steps,
        final_state=h.detach(),
        previous_state=h_prev,
    )
    return h, stats
