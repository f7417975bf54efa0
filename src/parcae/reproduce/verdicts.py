"""How each claim is judged from the numbers (the rules are printed in the report):

- S1, the loop: reproduced when every Parcae run keeps ρ(Ā) < 1 and some RDM run's ρ(Ā)
  exceeds 1 (its state then grows through depth).
- S1, learning rates: reproduced when Parcae trains (neither stalls nor diverges) at a larger
  learning rate than RDM does; not reproduced when RDM trains at rates as large.
- S2: at each budget the gap Δ = mean(Parcae) − mean(GPT) is compared with its noise
  σ_Δ = sqrt(σ_P² / n_P + σ_G² / n_G): a win when Δ < −2σ_Δ, a loss when Δ > 2σ_Δ, else a tie.
- S3: the law holds when it fits bpb with R² ≥ 0.9 for every model; the gains saturate near
  μ_rec when t95 (95% of the gain reached) lies within [μ_rec / 2, 2 μ_rec].
- S4: the exponent reproduces when the paper's value lies in the 95% bootstrap interval and the
  optimum is interior (μ* > 1 at some budget).
"""

from __future__ import annotations

import math

from parcae.reproduce.analysis import DepthStudy, Isoflop, Quality, QualityCell, Stability

REPRODUCED, PARTLY, NOT = "reproduced", "partly reproduced", "not reproduced"


def loop_verdict(data: Stability) -> str:
    def largest(model: str) -> float | None:
        radii = [p.max_spectral_radius for p in data.of(model) if p.max_spectral_radius]
        return max(radii) if radii else None

    parcae, rdm = largest("parcae"), largest("rdm")
    if parcae is None or parcae >= 1:
        return NOT
    return REPRODUCED if rdm is not None and rdm > 1 else PARTLY


def stability_verdict(data: Stability) -> str:
    parcae, rdm = data.largest_stable_lr("parcae"), data.largest_stable_lr("rdm")
    if parcae is None:
        return NOT
    if rdm is None or parcae > rdm:
        return REPRODUCED
    return NOT


def gap(parcae: QualityCell, gpt: QualityCell, at_t1: bool = False) -> tuple[float, float]:
    """(Δ, σ_Δ): Parcae's mean loss minus GPT's, and the standard error of that difference."""
    p = parcae.loss_t1 if at_t1 else parcae.loss
    g = gpt.loss
    noise = math.sqrt(p.std**2 / max(p.n, 1) + g.std**2 / max(g.n, 1))
    return p.mean - g.mean, noise


def outcome(delta: float, noise: float) -> str:
    if delta < -2 * noise:
        return "Parcae wins"
    if delta > 2 * noise:
        return "GPT wins"
    return "tie (within 2σ)"


def quality_verdict(data: Quality) -> str:
    outcomes = []
    for steps in data.budgets():
        parcae, gpt = data.cell(steps, "parcae"), data.cell(steps, "gpt")
        if parcae and gpt:
            outcomes.append(outcome(*gap(parcae, gpt)))
    if not outcomes:
        return NOT
    if all(o == "Parcae wins" for o in outcomes):
        return REPRODUCED
    if any(o == "Parcae wins" for o in outcomes):
        return PARTLY
    return NOT


def law_verdict(studies: list[DepthStudy]) -> tuple[str, str]:
    """(the law's verdict, the saturation verdict)."""
    laws = [(s, s.bpb_law) for s in studies]
    if not laws or any(law is None for _, law in laws):
        return NOT, NOT
    fits = all(law.r2 >= 0.9 for _, law in laws)
    near = [s.mean_recurrence / 2 <= law.t95 <= 2 * s.mean_recurrence for s, law in laws]
    saturation = REPRODUCED if all(near) else PARTLY if any(near) else NOT
    return (REPRODUCED if fits else NOT), saturation


def isoflop_verdict(data: Isoflop, exponent: str) -> str:
    from parcae.scaling.isoflop import PAPER_ALPHA, PAPER_BETA

    fit = data.fit
    value, ci = (PAPER_ALPHA, fit.alpha_ci) if exponent == "alpha" else (PAPER_BETA, fit.beta_ci)
    interior = any(b.mu_opt > 1.0 + 1e-9 and not b.extrapolated for b in fit.budgets)
    if ci is not None and ci[0] <= value <= ci[1] and interior:
        return REPRODUCED
    return NOT
