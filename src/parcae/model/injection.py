"""Input injections: how the loop mixes its state `h` with the prelude output `e` (SPEC §1.1).

Every injection is split in two so that the part that depends only on `e` is computed once per
forward, not once per loop step:

    prepared = injection.prepare(e)          # (B, S, d_r), once
    h_in     = injection.step(h, prepared)   # (B, S, d_r), every loop step

- `diagonal` (Parcae): `Ā ⊙ h + B̄ e` with `Δ = softplus(dt_bias)`, `A = -exp(A_log)`,
  `Ā = exp(Δ·A)` (zero-order hold, entries in (0, 1)) and `B̄ = Δ·B` (Euler) or, with
  `discretization="zoh"`, the exact `B̄ = (ΔA)⁻¹(exp(ΔA) - I)ΔB = (1 - Ā)/exp(A_log) · B`.
- `linear` (RDM / Huginn): `W [h; e]` with `W: Linear(d_r + d -> d_r)`; unconstrained.
- `add`: `h + e` (spectral radius exactly 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Init [compat]: Δ = ln √5 = ½ ln 5 and A = -1, so Ā = exp(-Δ) = √(1/5) ≈ 0.4472.
INITIAL_DELTA = 0.5 * math.log(5.0)


def softplus_inverse(y: float) -> float:
    """x such that softplus(x) = log(1 + exp(x)) = y."""
    return y + math.log(-math.expm1(-y))


class DiagonalInjection(nn.Module):
    """Stable-by-construction linear dynamics `Ā h + B̄ e` with a diagonal, ZOH-discretised Ā."""

    def __init__(self, state_dim: int, input_dim: int, discretization: str = "euler") -> None:
        super().__init__()
        self.discretization = discretization
        self.A_log = nn.Parameter(torch.zeros(state_dim))
        self.dt_bias = nn.Parameter(torch.zeros(state_dim))
        self.B = nn.Parameter(torch.zeros(state_dim, input_dim))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.A_log)
        nn.init.constant_(self.dt_bias, softplus_inverse(INITIAL_DELTA))
        if self.B.shape[0] == self.B.shape[1]:
            with torch.no_grad():
                self.B.copy_(torch.eye(self.B.shape[0]))
        else:
            nn.init.orthogonal_(self.B)

    def transition(self) -> Tensor:
        """Ā = exp(-softplus(dt_bias) * exp(A_log)), shape (d_r,), every entry in (0, 1)."""
        return torch.exp(-F.softplus(self.dt_bias.float()) * torch.exp(self.A_log.float()))

    def prepare(self, e: Tensor) -> Tensor:
        """B̄ e: (B, S, d) -> (B, S, d_r)."""
        delta = F.softplus(self.dt_bias.float())
        if self.discretization == "zoh":
            scale = (1 - self.transition()) / torch.exp(self.A_log.float())
        else:
            scale = delta
        return scale.type_as(e) * F.linear(e, self.B)

    def step(self, h: Tensor, prepared: Tensor) -> Tensor:
        return self.transition().type_as(h) * h + prepared


class LinearInjection(nn.Module):
    """`W [h; e]` (Huginn-style concatenation adapter), computed as `W_h h + W_e e`."""

    def __init__(self, state_dim: int, input_dim: int) -> None:
        super().__init__()
        self.state_dim = state_dim
        self.adapter = nn.Linear(state_dim + input_dim, state_dim, bias=False)

    def prepare(self, e: Tensor) -> Tensor:
        return F.linear(e, self.adapter.weight[:, self.state_dim:])

    def step(self, h: Tensor, prepared: Tensor) -> Tensor:
        return F.linear(h, self.adapter.weight[:, : self.state_dim]) + prepared


class AdditiveInjection(nn.Module):
    """`h + e` (no parameters)."""

    def prepare(self, e: Tensor) -> Tensor:
        return e

    def step(self, h: Tensor, prepared: Tensor) -> Tensor:
        return h + prepared


def build_injection(kind: str, state_dim: int, input_dim: int, discretization: str) -> nn.Module:
    """The injection module named by `ParcaeConfig.injection`."""
    if kind == "diagonal":
        return DiagonalInjection(state_dim, input_dim, discretization)
    if kind == "linear":
        return LinearInjection(state_dim, input_dim)
    return AdditiveInjection()
