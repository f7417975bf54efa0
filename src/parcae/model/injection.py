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

from parcae.model.init import init_matrix_

# Init [compat]: Δ = ln √5 = ½ ln 5 and A = -1, so Ā = exp(-Δ) = √(1/5) ≈ 0.4472.
INITIAL_DELTA = 0.5 * math.log(5.0)
# Floating point would round Ā = exp(-Δ·exp(A_log)) to exactly 1 once Δ·exp(A_log) < 6e-8;
# bounding the decay rate keeps Ā <= exp(-1e-6) < 1 for every finite parameter value.
MIN_DECAY_RATE = 1e-6
MAX_LOG_A = 80.0  # exp(80) is finite in float32, so the rate is never inf * 0 = nan


def softplus_inverse(y: float) -> float:
    """x such that softplus(x) = log(1 + exp(x)) = y."""
    return y + math.log(-math.expm1(-y))


class Injection(nn.Module):
    """What the model asks of an injection: `prepare(e)` once, `step(h, prepared)` per loop
    step, its init, its transition Ā (when it has a linear part) and its matmul cost."""

    @staticmethod
    def matmul_weights(state_dim: int, input_dim: int) -> tuple[int, int]:
        """Weights multiplied per token: (in `prepare`, once per forward; in each `step`)."""
        raise NotImplementedError

    def reset_parameters(self, std: float, orthogonal: bool) -> None:
        raise NotImplementedError

    def transition(self) -> Tensor | None:
        """Ā of the linear part `h -> Ā h`: (d_r,) when diagonal, (d_r, d_r) when full; None
        when there is none to learn (the additive injection, Ā = I)."""
        return None

    def prepare(self, e: Tensor) -> Tensor:
        raise NotImplementedError

    def step(self, h: Tensor, prepared: Tensor) -> Tensor:
        raise NotImplementedError


class DiagonalInjection(Injection):
    """Stable-by-construction linear dynamics `Ā h + B̄ e` with a diagonal, ZOH-discretised Ā."""

    def __init__(self, state_dim: int, input_dim: int, discretization: str = "euler") -> None:
        super().__init__()
        self.discretization = discretization
        self.A_log = nn.Parameter(torch.zeros(state_dim))
        self.dt_bias = nn.Parameter(torch.zeros(state_dim))
        self.B = nn.Parameter(torch.zeros(state_dim, input_dim))

    @staticmethod
    def matmul_weights(state_dim: int, input_dim: int) -> tuple[int, int]:
        return state_dim * input_dim, 0  # B e once; Ā h is elementwise

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.0, orthogonal: bool = False) -> None:
        """Init [compat]: A_log = 0, Δ = ½ ln 5, B = I (orthogonal if not square); `std` and
        `orthogonal` (the init of the other injections) do not apply."""
        nn.init.zeros_(self.A_log)
        nn.init.constant_(self.dt_bias, softplus_inverse(INITIAL_DELTA))
        if self.B.shape[0] == self.B.shape[1]:
            self.B.copy_(torch.eye(self.B.shape[0], device=self.B.device))
        else:
            nn.init.orthogonal_(self.B)

    def decay_rate(self) -> Tensor:
        """-ΔA = softplus(dt_bias) * exp(A_log), (d_r,), bounded below by MIN_DECAY_RATE."""
        rate = F.softplus(self.dt_bias.float()) * self._a()
        return rate.clamp_min(MIN_DECAY_RATE)

    def _a(self) -> Tensor:
        """-A = exp(A_log), (d_r,)."""
        return torch.exp(self.A_log.float().clamp(max=MAX_LOG_A))

    def transition(self) -> Tensor:
        """Ā = exp(ΔA) = exp(-softplus(dt_bias) * exp(A_log)), (d_r,), every entry in [0, 1)."""
        return torch.exp(-self.decay_rate())

    def prepare(self, e: Tensor) -> Tensor:
        """B̄ e: (B, S, d) -> (B, S, d_r)."""
        if self.discretization == "zoh":
            scale = -torch.expm1(-self.decay_rate()) / self._a()  # (1 - Ā) / exp(A_log)
        else:
            scale = F.softplus(self.dt_bias.float())
        return scale.type_as(e) * F.linear(e, self.B)

    def step(self, h: Tensor, prepared: Tensor) -> Tensor:
        return torch.addcmul(prepared, self.transition().type_as(h), h)  # B̄e + Ā ⊙ h


class LinearInjection(Injection):
    """`W [h; e]` (Huginn-style concatenation adapter), computed as `W_h h + W_e e`."""

    def __init__(self, state_dim: int, input_dim: int, discretization: str = "euler") -> None:
        super().__init__()
        self.state_dim = state_dim
        self.adapter = nn.Linear(state_dim + input_dim, state_dim, bias=False)

    @staticmethod
    def matmul_weights(state_dim: int, input_dim: int) -> tuple[int, int]:
        return state_dim * input_dim, state_dim * state_dim  # W_e e once, W_h h every step

    def reset_parameters(self, std: float, orthogonal: bool) -> None:
        init_matrix_(self.adapter.weight, std, orthogonal)

    def transition(self) -> Tensor:
        """Ā = W_h (d_r, d_r), unconstrained: nothing keeps ρ(Ā) below 1."""
        return self.adapter.weight[:, : self.state_dim]

    def prepare(self, e: Tensor) -> Tensor:
        return F.linear(e, self.adapter.weight[:, self.state_dim :])

    def step(self, h: Tensor, prepared: Tensor) -> Tensor:
        return F.linear(h, self.adapter.weight[:, : self.state_dim]) + prepared


class AdditiveInjection(Injection):
    """`h + e` (no parameters)."""

    def __init__(self, state_dim: int, input_dim: int, discretization: str = "euler") -> None:
        super().__init__()

    @staticmethod
    def matmul_weights(state_dim: int, input_dim: int) -> tuple[int, int]:
        return 0, 0

    def reset_parameters(self, std: float, orthogonal: bool) -> None:
        pass

    def prepare(self, e: Tensor) -> Tensor:
        return e

    def step(self, h: Tensor, prepared: Tensor) -> Tensor:
        return h + prepared


def spectral_radius(transition: Tensor) -> float:
    """ρ(Ā) = max |λ(Ā)|: max(Ā) for a diagonal (d_r,) Ā with entries in [0, 1), the largest
    eigenvalue modulus for a full (d_r, d_r) one."""
    if transition.ndim == 1:
        return float(transition.abs().max())
    return float(torch.linalg.eigvals(transition.detach().float()).abs().max())


INJECTIONS: dict[str, type[Injection]] = {
    "diagonal": DiagonalInjection,
    "linear": LinearInjection,
    "add": AdditiveInjection,
}


def build_injection(kind: str, state_dim: int, input_dim: int, discretization: str) -> Injection:
    """The injection module named by `ParcaeConfig.injection`."""
    return INJECTIONS[kind](state_dim, input_dim, discretization)
