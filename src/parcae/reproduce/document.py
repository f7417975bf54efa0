"""docs/REPRODUCTION.md, written from the stored results: the summary table, one section per
study (protocol, figures, numbers) and the discussion. Every number comes from `analysis`;
every verdict from `verdicts`, whose rules the report states."""

from __future__ import annotations

import math
import os
from pathlib import Path

from parcae.reproduce import analysis, figures, verdicts
from parcae.reproduce.analysis import DepthStudy, Isoflop, Quality, Stability

PAPER = {
    "S1a": "ρ(Ā) < 1 by construction keeps the loop stable; prior recipes' ρ(Ā) can exceed 1",
    "S1b": "Parcae trains at learning rates where prior looped recipes (additive or "
    "concatenation injection) diverge",
    "S2": "at equal parameters and data Parcae beats the Transformer (770M Parcae ≈ 1.3B "
    "Transformer)",
    "S3": "L(T) = L_inf + Z·exp(−z·T) fits test-time depth; gains saturate near μ_rec",
    "S4a": "optimal μ_rec ∝ C^0.40",
    "S4b": "optimal tokens ∝ C^0.78",
}


def _lr(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def _lrs(values: list[float]) -> str:
    return ", ".join(f"{x:g}" for x in values) or "none"


def _num(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _norm(value: float | None) -> str:
    """A state norm: one decimal, or 3 significant digits in e-notation from 10^5 on."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.2e}" if value >= 1e5 else f"{value:.1f}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """Loads every study's results and writes the figures and the document."""

    def __init__(self, results: Path, figure_dir: Path, document: Path) -> None:
        self.results, self.figure_dir, self.document = results, figure_dir, document
        self.s1: Stability = analysis.stability(results)
        self.unigram = analysis.reference_unigram_loss(results)
        self.s2: Quality = analysis.quality(results)
        self.s3: list[DepthStudy] = analysis.depth_studies(results)
        self.s4: Isoflop | None = analysis.isoflop(results)
        self.walls = analysis.wall_seconds(results)
        self.figures: dict[str, list[Path]] = {}

    def _link(self, path: Path) -> str:
        relative = os.path.relpath(path, self.document.parent)
        return f"![{path.stem}]({Path(relative).as_posix()})"

    def draw(self) -> list[Path]:
        directory = self.figure_dir
        if self.s1.points:
            self.figures["S1"] = [
                figures.s1_learning_rates(self.s1, self.unigram, directory / "S1-lr.png"),
                figures.s1_curves(self.s1, directory / "S1-loss-curves.png"),
                figures.s1_dynamics(self.s1, directory / "S1-loop-dynamics.png"),
                figures.s1_through_depth(self.s1, directory / "S1-through-depth.png"),
            ]
        if self.s2.cells:
            self.figures["S2"] = [figures.s2_quality(self.s2, directory / "S2-quality.png")]
        if self.s3:
            self.figures["S3"] = [figures.s3_depth(self.s3, directory / "S3-depth-law.png")]
        if self.s4 is not None:
            self.figures["S4"] = figures.s4_isoflop(self.s4, directory)
        return [path for paths in self.figures.values() for path in paths]

    def figure_links(self, study: str) -> str:
        return "\n\n".join(self._link(p) for p in self.figures.get(study, []))

    # ---------------------------------------------------------------------------- summary

    def summary_rows(self) -> list[list[str]]:
        rows = []
        if self.s1.points:
            stable = ", ".join(f"{m} {_lr(self.s1.largest_stable_lr(m))}" for m in self.s1.models())
            radii = ", ".join(
                f"{m} {_num(max((p.max_spectral_radius or 0) for p in self.s1.of(m)), 2)}"
                for m in self.s1.models()
                if m != "gpt"
            )
            rows.append(
                [
                    "S1 the loop",
                    PAPER["S1a"],
                    f"largest ρ(Ā) over the sweep: {radii}",
                    verdicts.loop_verdict(self.s1),
                ]
            )
            rows.append(
                [
                    "S1 learning rates",
                    PAPER["S1b"],
                    f"largest AdamW lr that trains: {stable}",
                    verdicts.stability_verdict(self.s1),
                ]
            )
        if self.s2.cells:
            gaps = []
            for steps in self.s2.budgets():
                parcae, gpt = self.s2.cell(steps, "parcae"), self.s2.cell(steps, "gpt")
                if parcae and gpt:
                    delta, noise = verdicts.gap(parcae, gpt)
                    gaps.append(f"{parcae.tokens / 1e6:.2f}M tokens: Δ {delta:+.3f} ± {noise:.3f}")
            rows.append(
                [
                    "S2 quality",
                    PAPER["S2"],
                    "val loss Parcae − GPT: " + "; ".join(gaps),
                    verdicts.quality_verdict(self.s2),
                ]
            )
        if self.s3:
            law, saturation = verdicts.law_verdict(self.s3)
            fits = "; ".join(
                f"μ_rec={s.mean_recurrence}: R² {s.bpb_law.r2:.3f}, t95 {s.bpb_law.t95:.1f}"
                for s in self.s3
                if s.bpb_law is not None
            )
            rows.append(
                ["S3 test-time law", PAPER["S3"], fits, f"law {law}; saturation {saturation}"]
            )
        if self.s4 is not None:
            fit = self.s4.fit
            rows.append(
                [
                    "S4 isoFLOP μ*",
                    PAPER["S4a"],
                    f"α = {fit.alpha:.2f} {_ci(fit.alpha_ci)}",
                    verdicts.isoflop_verdict(self.s4, "alpha"),
                ]
            )
            rows.append(
                [
                    "S4 isoFLOP D*",
                    PAPER["S4b"],
                    f"β = {fit.beta:.2f} {_ci(fit.beta_ci)}",
                    verdicts.isoflop_verdict(self.s4, "beta"),
                ]
            )
        return rows

    # ----------------------------------------------------------------------------- S1

    def s1_rows(self) -> list[list[str]]:
        rows = []
        for model in self.s1.models():
            for p in self.s1.of(model):
                status = p.status
                if p.nonfinite_at is not None:
                    status += f" (non-finite at step {p.nonfinite_at})"
                rows.append(
                    [
                        model,
                        f"{p.lr:g}",
                        str(p.seed),
                        _num(p.initial_loss, 3),
                        _num(p.final_train_loss, 3),
                        _num(p.val_loss),
                        str(p.spikes),
                        _num(p.max_spectral_radius, 3),
                        _norm(p.max_state_norm),
                        _norm(p.final_state_norm),
                        _num(p.growth, 2),
                        status,
                    ]
                )
        return rows

    def s1_section(self) -> str:
        header = [
            "model",
            "lr",
            "seed",
            "first loss",
            "final train loss",
            "val loss",
            "spikes",
            "max ρ(Ā)",
            "max ‖h‖",
            "final ‖h‖",
            "‖h_2μ‖/‖h_2μ−1‖",
            "status",
        ]
        lines = [_table(header, self.s1_rows()), ""]
        for model in self.s1.models():
            seeded = [
                f"{lr:g}: {self.s1.val_loss(model, lr).text()}"
                for lr in self.s1.lrs(model)
                if self.s1.val_loss(model, lr).n > 1
            ]
            lines.append(
                f"- **{model}**: best lr {_lr(self.s1.best_lr(model))}, largest lr that trains "
                f"{_lr(self.s1.largest_stable_lr(model))}; stalled at "
                f"{_lrs(self.s1.lrs_with(model, 'stalled'))}; diverged at "
                f"{_lrs(self.s1.lrs_with(model, 'diverged'))}"
                + (f"; val loss over seeds at lr {'; '.join(seeded)}." if seeded else ".")
            )
        return "\n".join(lines)

    # ----------------------------------------------------------------------------- S2

    def s2_section(self) -> str:
        header = ["steps", "tokens", "model", "lr", "params", "train FLOPs", "val loss", "bpb"]
        header += ["val loss at T=1", "bpb at T=1", "T=1 − T=μ_rec"]
        rows = []
        for c in self.s2.cells:
            rows.append(
                [
                    str(c.steps),
                    f"{c.tokens / 1e6:.2f}M",
                    c.model,
                    f"{c.lr:g}",
                    f"{c.params / 1e6:.2f}M",
                    f"{c.flops:.2e}",
                    c.loss.text(),
                    c.bpb.text(),
                    c.loss_t1.text() if c.loss_t1 else "–",
                    c.bpb_t1.text() if c.bpb_t1 else "–",
                    c.gain.text() if c.gain else "–",
                ]
            )
        lines = [
            _table(header, rows),
            "",
            "At equal tokens (Δ = Parcae − GPT, ± its standard error):",
            "",
        ]
        for steps in self.s2.budgets():
            parcae, gpt = self.s2.cell(steps, "parcae"), self.s2.cell(steps, "gpt")
            if not (parcae and gpt):
                continue
            delta, noise = verdicts.gap(parcae, gpt)
            looped, _ = verdicts.gap(parcae, gpt, at_t1=True)
            lines.append(
                f"- {parcae.tokens / 1e6:.2f}M tokens: Δ loss {delta:+.4f} ± {noise:.4f} "
                f"({verdicts.outcome(delta, noise)}); Parcae at T=1 against GPT {looped:+.4f}; "
                f"looping gains {parcae.gain.text()} nats (loss at T=1 minus at T=μ_rec, per "
                "seed)."
            )
        lines += [
            "",
            "At equal training FLOPs (GPT interpolated in log FLOPs between its budgets):",
            "",
        ]
        for c in [c for c in self.s2.cells if c.model == "parcae"]:
            gpt_loss = self.s2.gpt_loss_at_flops(c.flops)
            if gpt_loss is None:
                lines.append(f"- Parcae at {c.flops:.2e} FLOPs: outside GPT's measured FLOP range.")
            else:
                lines.append(
                    f"- Parcae at {c.flops:.2e} FLOPs: {c.loss.mean:.4f}; GPT at the same FLOPs: "
                    f"{gpt_loss:.4f} (Δ {c.loss.mean - gpt_loss:+.4f})."
                )
        return "\n".join(lines)

    # ----------------------------------------------------------------------------- S3

    def s3_section(self) -> str:
        header = ["model", "μ_rec", "L_inf", "Z", "z", "R²", "t95", "bpb at T=1", "at T=μ_rec"]
        header += ["at T=3μ_rec", "CORE at T=1", "CORE at T=μ_rec"]
        rows = []
        for s in self.s3:
            law = s.bpb_law
            mu, last = s.mean_recurrence, max(s.bpb)
            rows.append(
                [
                    s.name,
                    str(mu),
                    _num(law and law.l_inf),
                    _num(law and law.amplitude),
                    _num(law and law.rate, 3)
                    + (" (at its bound)" if law and law.saturated else ""),
                    _num(law and law.r2, 3),
                    _num(law and law.t95, 1),
                    _num(s.bpb.get(1)),
                    _num(s.bpb.get(mu)),
                    _num(s.bpb.get(last)),
                    _num(s.core.get(1), 3),
                    _num(s.core.get(mu), 3),
                ]
            )
        lines = [_table(header, rows), ""]
        tasks = sorted({t for s in self.s3 for t in s.tasks})
        if tasks:
            lines += ["BIG-bench centered accuracy (0 = chance) at T = 1 / μ_rec / 3μ_rec:", ""]
            task_rows = []
            for s in [s for s in self.s3 if s.tasks]:
                mu, last = s.mean_recurrence, max(s.tasks[tasks[0]])
                task_rows.append(
                    [s.name]
                    + [
                        " / ".join(_num(s.tasks.get(t, {}).get(d), 3) for d in (1, mu, last))
                        for t in tasks
                    ]
                )
            lines.append(_table(["model", *tasks], task_rows))
        return "\n".join(lines)

    # ----------------------------------------------------------------------------- S4

    def s4_section(self) -> str:
        data = self.s4
        fit = data.fit
        header = ["budget C", "μ_rec", "tokens", "val loss", "bpb"]
        rows = [
            [
                f"{float(r['flops_budget']):.2g}",
                r["mean_recurrence"],
                f"{int(r['tokens']) / 1e6:.2f}M",
                f"{float(r['val_loss']):.4f}",
                f"{float(r['val_bpb']):.4f}",
            ]
            for r in sorted(
                data.rows, key=lambda r: (float(r["flops_budget"]), int(r["mean_recurrence"]))
            )
        ]
        lines = [_table(header, rows), ""]
        for budget in fit.budgets:
            looped_best = data.best_by_budget()[budget.flops_budget]
            at_one = data.loss(budget.flops_budget, 1)
            best_mu = int(looped_best["mean_recurrence"])
            lines.append(
                f"- C = {budget.flops_budget:.2g}: parabola optimum μ* = {budget.mu_opt:.2f}"
                f"{' (at the edge of the sweep)' if budget.extrapolated else ''}, D* = "
                f"{budget.tokens_opt / 1e6:.2f}M; best measured μ_rec = {best_mu} "
                f"(val loss {float(looped_best['val_loss']):.4f}"
                + (
                    f", against {at_one:.4f} at μ_rec = 1)"
                    if at_one is not None and best_mu != 1
                    else ")"
                )
            )
        lines += [
            "",
            f"Fitted: μ* ∝ C^{fit.alpha:.3f} {_ci(fit.alpha_ci)} (paper 0.40), "
            f"D* ∝ C^{fit.beta:.3f} {_ci(fit.beta_ci)} (paper 0.78); "
            f"{fit.bootstrap_used}/{fit.bootstrap} bootstrap resamples.",
        ]
        return "\n".join(lines)

    # ----------------------------------------------------------------------------- all

    def walltime_rows(self) -> list[list[str]]:
        return [[study, _minutes(seconds)] for study, seconds in self.walls.items() if seconds]

    def write(self, prose: dict[str, str]) -> Path:
        """Fill the document's sections; `prose` maps section keys to hand-written text."""
        parts = [
            prose["intro"],
            "",
            "## Summary",
            "",
            _table(["claim", "paper", "ours", "verdict"], self.summary_rows()),
            "",
            verdicts.__doc__.strip().replace("How each claim", "Verdicts: how each claim", 1),
            "",
            "Compute (sum of the runs' wall times on 2 CPU cores):",
            "",
            _table(["study", "wall time"], self.walltime_rows()),
            "",
            prose["compute"],
        ]
        sections = (
            ("S1", "## S1: stability across learning rates", self.s1.points, self.s1_section),
            ("S2", "## S2: quality at equal parameters and tokens", self.s2.cells, self.s2_section),
            ("S3", "## S3: the test-time depth law", self.s3, self.s3_section),
            ("S4", "## S4: isoFLOP scaling of looping", self.s4, self.s4_section),
        )
        for key, title, present, body in sections:
            parts += ["", title, "", prose[key], ""]
            parts.append(body() if present else "_No results stored for this study._")
            if present:
                parts += ["", self.figure_links(key)]
        parts += ["", "## Discussion", "", prose["discussion"], ""]
        self.document.parent.mkdir(parents=True, exist_ok=True)
        self.document.write_text("\n".join(parts))
        return self.document


def _ci(ci: tuple[float, float] | None) -> str:
    return "(no CI)" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"
