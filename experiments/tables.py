"""The tables of docs/REPRODUCTION.md (S1..S4), as Markdown, from `analysis`'s numbers.

Tables hold numbers only; what they mean is the document's hand-written text. "±" is the sample
standard deviation over seeds in a loss column and the standard error where a column says so
(a gap between two means: σ_Δ = sqrt(σ_a² / n_a + σ_b² / n_b)).
"""

from __future__ import annotations

import math

from experiments.analysis import DepthStudy, Isoflop, Quality, QualityCell, Stability, Stat

PAPER = {
    "S1 the loop": "ρ(Ā) < 1 by construction; prior recipes' ρ(Ā) can exceed 1",
    "S1 learning rates": "Parcae trains at learning rates where prior looped recipes diverge",
    "S2 quality": "at equal parameters and data Parcae beats the Transformer",
    "S3 test-time law": "L(T) = L_inf + Z·exp(−z·T); gains saturate near μ_rec",
    "S4 isoFLOP μ*": "optimal μ_rec ∝ C^0.40",
    "S4 isoFLOP D*": "optimal tokens ∝ C^0.78",
}


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def num(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def norm(value: float | None) -> str:
    """A state norm: one decimal, or 3 significant digits in e-notation from 10^5 on."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.2e}" if value >= 1e5 else f"{value:.1f}"


def lr_text(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def lrs_text(values: list[float]) -> str:
    return ", ".join(f"{x:g}" for x in values) or "none"


def ci_text(ci: tuple[float, float] | None) -> str:
    return "–" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def standard_error(stat: Stat) -> float:
    return stat.std / math.sqrt(stat.n) if stat.n > 1 else math.nan


def gap(a: Stat, b: Stat) -> tuple[float, float]:
    """mean(a) − mean(b) and its standard error sqrt(σ_a²/n_a + σ_b²/n_b)."""
    return a.mean - b.mean, math.sqrt(a.std**2 / a.n + b.std**2 / b.n)


# ------------------------------------------------------------------------------------------ all


def compute(walls: dict[str, float]) -> str:
    rows = [[study, f"{seconds / 60:.1f} min"] for study, seconds in walls.items() if seconds]
    return table(["study", "wall time (sum of its runs)"], rows)


def summary(s1: Stability, s2: Quality, s3: list[DepthStudy], s4: Isoflop | None) -> str:
    """One row per claim: the paper's and the number we measured for it."""
    ours: dict[str, str] = {}
    if s1.points:
        looped = [m for m in s1.models() if m != "gpt"]
        ours["S1 the loop"] = "largest ρ(Ā) over the sweep: " + ", ".join(
            f"{m} {num(max((p.max_spectral_radius or 0) for p in s1.of(m)), 2)}" for m in looped
        )
        ours["S1 learning rates"] = "largest AdamW lr at and below which every run trains: " + (
            ", ".join(f"{m} {lr_text(s1.largest_stable_lr(m))}" for m in s1.models())
        )
    if s2.cells:
        gaps = []
        for steps in s2.budgets():
            parcae, gpt = s2.cell(steps, "parcae"), s2.cell(steps, "gpt")
            if parcae and gpt:
                delta, error = gap(parcae.loss, gpt.loss)
                gaps.append(f"{parcae.tokens / 1e6:.2f}M tokens {delta:+.3f} ± {error:.3f}")
        ours["S2 quality"] = "val loss Parcae − GPT (± s.e.): " + "; ".join(gaps)
    if s3:
        ours["S3 test-time law"] = "; ".join(
            f"μ_rec={s.mean_recurrence}: R² {s.bpb_law.r2:.3f}, t95 {s.bpb_law.t95:.1f}"
            for s in s3
            if s.bpb_law is not None
        )
    if s4 is not None:
        fit = s4.fit
        ours["S4 isoFLOP μ*"] = f"α = {fit.alpha:.2f} {ci_text(fit.alpha_ci)}"
        ours["S4 isoFLOP D*"] = f"β = {fit.beta:.2f} {ci_text(fit.beta_ci)}"
    rows = [[claim, PAPER[claim], text] for claim, text in ours.items()]
    return table(["claim", "paper", "measured here"], rows)


# ------------------------------------------------------------------------------------------- S1


def s1_runs(s1: Stability) -> str:
    header = ["model", "lr", "seed", "first loss", "final train loss", "val loss", "spikes"]
    header += ["max ρ(Ā)", "max ‖h‖", "final ‖h‖", "‖h_2μ‖/‖h_2μ−1‖", "status"]
    rows = []
    for model in s1.models():
        for p in s1.of(model):
            status = p.status
            if p.nonfinite_at is not None:
                status += f" (non-finite at step {p.nonfinite_at})"
            rows.append(
                [model, f"{p.lr:g}", str(p.seed), num(p.initial_loss, 3)]
                + [num(p.final_train_loss, 3), num(p.val_loss), str(p.spikes)]
                + [num(p.max_spectral_radius, 3), norm(p.max_state_norm)]
                + [norm(p.final_state_norm), num(p.growth, 2), status]
            )
    return table(header, rows)


def s1_models(s1: Stability) -> str:
    header = ["model", "best lr (seed 0)", "largest lr that trains", "stalled at", "diverged at"]
    header.append("val loss over seeds (mean ± std, n)")
    rows = []
    for model in s1.models():
        seeded = [
            f"lr {lr:g}: {s1.val_loss(model, lr).text()} (n={s1.val_loss(model, lr).n})"
            for lr in s1.lrs(model)
            if s1.val_loss(model, lr).n > 1
        ]
        rows.append(
            [model, lr_text(s1.best_lr(model)), lr_text(s1.largest_stable_lr(model))]
            + [lrs_text(s1.lrs_with(model, "stalled")), lrs_text(s1.lrs_with(model, "diverged"))]
            + ["; ".join(seeded) or "–"]
        )
    return table(header, rows)


# ------------------------------------------------------------------------------------------- S2


def s2_cells(s2: Quality) -> str:
    header = ["steps", "tokens", "model", "lr", "params", "train FLOPs", "seeds"]
    header += ["val loss", "bpb", "val loss at T=1", "bpb at T=1"]
    rows = []
    for c in s2.cells:
        rows.append(
            [str(c.steps), f"{c.tokens / 1e6:.2f}M", c.model, f"{c.lr:g}"]
            + [f"{c.params / 1e6:.2f}M", f"{c.flops:.2e}", str(c.loss.n)]
            + [c.loss.text(), c.bpb.text()]
            + [c.loss_t1.text() if c.loss_t1 else "–", c.bpb_t1.text() if c.bpb_t1 else "–"]
        )
    return table(header, rows)


def _gain(cell: QualityCell) -> str:
    if not cell.gain or not cell.gain.n:
        return "–"
    return f"{cell.gain.mean:+.4f} ± {standard_error(cell.gain):.4f}"


def s2_gaps(s2: Quality) -> str:
    """Per budget: the Parcae − GPT gaps at equal tokens, looping's own gain, and the gap at
    equal FLOPs (GPT interpolated in log FLOPs; – outside GPT's range)."""
    header = ["steps", "tokens", "Parcae − GPT (± s.e.)", "Parcae at T=1 − GPT"]
    header += ["T=1 − T=μ_rec in Parcae (± s.e.)", "Parcae FLOPs", "GPT at those FLOPs"]
    header.append("Parcae − GPT at equal FLOPs")
    rows = []
    for steps in s2.budgets():
        parcae, gpt = s2.cell(steps, "parcae"), s2.cell(steps, "gpt")
        if not (parcae and gpt):
            continue
        delta, error = gap(parcae.loss, gpt.loss)
        at_t1 = parcae.loss_t1.mean - gpt.loss.mean if parcae.loss_t1 else math.nan
        gpt_at_flops = s2.gpt_loss_at_flops(parcae.flops)
        equal_flops = parcae.loss.mean - gpt_at_flops if gpt_at_flops is not None else None
        rows.append(
            [str(steps), f"{parcae.tokens / 1e6:.2f}M", f"{delta:+.4f} ± {error:.4f}"]
            + [f"{at_t1:+.4f}", _gain(parcae), f"{parcae.flops:.2e}", num(gpt_at_flops)]
            + ["–" if equal_flops is None else f"{equal_flops:+.4f}"]
        )
    return table(header, rows)


# ------------------------------------------------------------------------------------------- S3


def s3_laws(s3: list[DepthStudy]) -> str:
    header = ["model", "μ_rec", "L_inf", "Z", "z", "R²", "t95", "bpb at T=1", "at T=2"]
    header += ["at T=μ_rec", "at T=3μ_rec", "CORE at T=1", "CORE at T=μ_rec"]
    rows = []
    for s in s3:
        law, mu = s.bpb_law, s.mean_recurrence
        rate = num(law and law.rate, 3) + (" (at its bound)" if law and law.saturated else "")
        rows.append(
            [s.name, str(mu), num(law and law.l_inf), num(law and law.amplitude), rate]
            + [num(law and law.r2, 3), num(law and law.t95, 1)]
            + [num(s.bpb.get(t)) for t in (1, 2, mu, max(s.bpb))]
            + [num(s.core.get(1), 3), num(s.core.get(mu), 3)]
        )
    return table(header, rows)


def s3_tasks(s3: list[DepthStudy]) -> str:
    """BIG-bench centered accuracy at T = 1 / μ_rec / the deepest scored depth."""
    tasks = sorted({t for s in s3 for t in s.tasks})
    rows = []
    for s in [s for s in s3 if s.tasks]:
        mu, last = s.mean_recurrence, max(s.tasks[tasks[0]])
        cells = [
            " / ".join(num(s.tasks.get(t, {}).get(d), 3) for d in (1, mu, last)) for t in tasks
        ]
        rows.append([s.name, *cells])
    return table(["model (T = 1 / μ_rec / 3μ_rec)", *tasks], rows) if tasks else ""


# ------------------------------------------------------------------------------------------- S4


def s4_points(s4: Isoflop) -> str:
    def key(row: dict[str, str]) -> tuple[float, int]:
        return float(row["flops_budget"]), int(row["mean_recurrence"])

    rows = [
        [f"{float(r['flops_budget']):.2g}", r["mean_recurrence"], f"{int(r['tokens']) / 1e6:.2f}M"]
        + [f"{float(r['val_loss']):.4f}", f"{float(r['val_bpb']):.4f}"]
        for r in sorted(s4.rows, key=key)
    ]
    return table(["budget C", "μ_rec", "tokens", "val loss", "bpb"], rows)


def _excess(s4: Isoflop, budget: float, mu: int) -> str:
    loss, shallow = s4.loss(budget, mu), s4.loss(budget, 1)
    return "–" if loss is None or shallow is None else f"{loss - shallow:+.3f}"


def s4_fit(s4: Isoflop) -> str:
    """Per budget the parabola optima and the measured best; then the exponents."""
    fit = s4.fit
    header = ["budget C", "parabola μ*", "at the sweep's edge", "D*", "best measured μ_rec"]
    header += ["its val loss", "val loss at μ_rec = 2 / 4 / 8 minus at μ_rec = 1"]
    rows = []
    for budget in fit.budgets:
        best = s4.best_by_budget()[budget.flops_budget]
        rows.append(
            [f"{budget.flops_budget:.2g}", f"{budget.mu_opt:.2f}"]
            + ["yes" if budget.extrapolated else "no", f"{budget.tokens_opt / 1e6:.2f}M"]
            + [best["mean_recurrence"], f"{float(best['val_loss']):.4f}"]
            + [" / ".join(_excess(s4, budget.flops_budget, mu) for mu in (2, 4, 8))]
        )
    used = f"{fit.bootstrap_used}/{fit.bootstrap}"
    exponents = [
        ["α (μ* ∝ C^α)", f"{fit.alpha:.3f}", ci_text(fit.alpha_ci), used, "0.40"],
        ["β (D* ∝ C^β)", f"{fit.beta:.3f}", ci_text(fit.beta_ci), used, "0.78"],
    ]
    header_exp = ["exponent", "fitted", "95% bootstrap interval", "resamples that fit", "paper"]
    return table(header, rows) + "\n\n" + table(header_exp, exponents)
