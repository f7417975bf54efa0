"""IsoFLOP fits: the compute-optimal loop depth μ_rec* and tokens D* against the FLOP budget C.

A sweep (`parcae sweep`) trains points of a grid budget C × mean recurrence μ_rec; at a fixed C a
point trains on D = C / F_train(μ_rec) tokens, so deeper loops see fewer tokens. Per budget the
validation loss is fitted by least squares with a parabola in log μ_rec,

    L(μ) = p·(log μ)² + q·log μ + r,        μ* = exp(−q / (2p))   (p > 0),

and likewise with a parabola in log D giving D*. The optimum is the parabola's minimum over the
swept range: when the parabola is not convex or its vertex lies outside the swept depths (tokens),
the optimum is clamped to the range and the budget is flagged `extrapolated`. Over the budgets,

    μ* = a·C^α,        D* = b·C^β

are fitted by least squares in log space (log μ* = log a + α·log C). The paper reports
α ≈ 0.40 and β ≈ 0.78. 95% confidence intervals of α and β come from a bootstrap: each budget's
points are resampled with replacement, everything is refitted, and the 2.5 / 97.5 percentiles of
the exponents are taken; a resample leaving fewer than 3 distinct depths at a budget is skipped.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parcae.errors import ConfigError, DataError
from parcae.outputs import write_json_atomic
from parcae.values import parse_json

PAPER_ALPHA = 0.40  # μ_rec* ∝ C^0.40
PAPER_BETA = 0.78  # D* ∝ C^0.78
MIN_BUDGETS = 3
MIN_DEPTHS = 3
COLUMNS = ("flops_budget", "mean_recurrence", "seed", "tokens", "val_loss", "status")
NUMERIC_COLUMNS = ("flops_budget", "mean_recurrence", "tokens", "val_loss")


MAX_BOOTSTRAP = 100_000  # resamples of `parcae fit isoflop --bootstrap` (README, Guarantees)


@dataclass(frozen=True)
class Point:
    """One (C, μ_rec) point of a sweep: tokens D and val loss averaged over `seeds` runs."""

    flops_budget: float
    mean_recurrence: float
    tokens: float
    val_loss: float
    seeds: int = 1


@dataclass(frozen=True)
class BudgetOptimum:
    """The parabola fits at one budget C and their (clamped) optima."""

    flops_budget: float
    mu_opt: float
    tokens_opt: float
    loss: float  # the log μ parabola at μ*
    mu_coeffs: tuple[float, float, float]  # L = p·x² + q·x + r, x = log μ
    tokens_coeffs: tuple[float, float, float]  # x = log D
    mu_range: tuple[float, float]
    tokens_range: tuple[float, float]
    depths: int
    extrapolated: bool

    def to_dict(self) -> dict:
        return {
            "flops_budget": self.flops_budget,
            "mu_opt": self.mu_opt,
            "tokens_opt": self.tokens_opt,
            "loss": self.loss,
            "mu_coeffs": list(self.mu_coeffs),
            "tokens_coeffs": list(self.tokens_coeffs),
            "mu_range": list(self.mu_range),
            "tokens_range": list(self.tokens_range),
            "depths": self.depths,
            "extrapolated": self.extrapolated,
        }

    @classmethod
    def from_dict(cls, data: dict) -> BudgetOptimum:
        tuples = ("mu_coeffs", "tokens_coeffs", "mu_range", "tokens_range")
        return cls(**{key: tuple(value) if key in tuples else value for key, value in data.items()})


@dataclass(frozen=True)
class IsoflopFit:
    """Per-budget optima and the power laws μ* = mu_prefactor·C^alpha, D* =
    tokens_prefactor·C^beta, with bootstrap 95% intervals (None when no resample was usable)."""

    budgets: tuple[BudgetOptimum, ...]
    alpha: float
    mu_prefactor: float
    alpha_ci: tuple[float, float] | None
    beta: float
    tokens_prefactor: float
    beta_ci: tuple[float, float] | None
    points: int
    bootstrap: int
    bootstrap_used: int

    @property
    def budget_range(self) -> tuple[float, float]:
        return self.budgets[0].flops_budget, self.budgets[-1].flops_budget

    def mu_at(self, flops: float) -> float:
        return self.mu_prefactor * flops**self.alpha

    def tokens_at(self, flops: float) -> float:
        return self.tokens_prefactor * flops**self.beta

    def to_dict(self) -> dict:
        return {
            "law": "isoflop",
            "mu_rec": {
                "exponent": self.alpha,
                "ci95": list(self.alpha_ci) if self.alpha_ci else None,
                "prefactor": self.mu_prefactor,
                "paper_exponent": PAPER_ALPHA,
            },
            "tokens": {
                "exponent": self.beta,
                "ci95": list(self.beta_ci) if self.beta_ci else None,
                "prefactor": self.tokens_prefactor,
                "paper_exponent": PAPER_BETA,
            },
            "budget_range": list(self.budget_range),
            "budgets": [budget.to_dict() for budget in self.budgets],
            "points": self.points,
            "bootstrap": {"resamples": self.bootstrap, "used": self.bootstrap_used},
        }

    @classmethod
    def from_dict(cls, data: dict) -> IsoflopFit:
        """From `to_dict()` output (a fit.json); DataError when it is not one."""
        try:
            mu, tokens = data["mu_rec"], data["tokens"]
            fit = cls(
                budgets=tuple(BudgetOptimum.from_dict(b) for b in data["budgets"]),
                alpha=float(mu["exponent"]),
                mu_prefactor=float(mu["prefactor"]),
                alpha_ci=tuple(mu["ci95"]) if mu["ci95"] else None,
                beta=float(tokens["exponent"]),
                tokens_prefactor=float(tokens["prefactor"]),
                beta_ci=tuple(tokens["ci95"]) if tokens["ci95"] else None,
                points=int(data["points"]),
                bootstrap=int(data["bootstrap"]["resamples"]),
                bootstrap_used=int(data["bootstrap"]["used"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"not an isoflop fit ({type(error).__name__}: {error})") from None
        return fit.check()

    def check(self) -> IsoflopFit:
        """DataError unless the fit has budgets, finite laws and counts >= 0 (a degenerate
        table gives NaN; a hand-edited fit.json anything)."""
        laws = (self.alpha, self.beta, self.mu_prefactor, self.tokens_prefactor)
        if not all(math.isfinite(value) for value in laws):
            raise DataError("the power laws are not finite (a degenerate fit)")
        if not self.budgets or min(self.points, self.bootstrap, self.bootstrap_used) < 0:
            raise DataError("not an isoflop fit (no budgets, or a negative count)")
        return self


def read_results(path: str | Path) -> list[Point]:
    """The finished (`status == "done"`) points of a sweep's results.csv, seeds of the same
    (C, μ_rec) averaged, sorted by (C, μ_rec). A (C, μ_rec) swept at several backprop depths
    (a `mean_backprop_depth` column) is refused: its rows are not repeats."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such results file")
    try:
        return _read_points(path)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a UTF-8 CSV table ({error})") from None


def _read_points(path: Path) -> list[Point]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        groups: dict[tuple[float, float], list[tuple[float, float]]] = defaultdict(list)
        backprop: dict[tuple[float, float], set[str]] = defaultdict(set)
        for line, row in enumerate(reader, start=2):
            if row["status"].strip() != "done":
                continue
            values = {}
            for column in NUMERIC_COLUMNS:
                text = (row[column] or "").strip()
                try:
                    values[column] = float(text)
                except ValueError:
                    values[column] = math.nan
                if not math.isfinite(values[column]):
                    raise DataError(f"{path}:{line}: {column} is not a finite number ({text!r})")
            for column in ("flops_budget", "mean_recurrence", "tokens"):
                if values[column] <= 0:
                    raise DataError(f"{path}:{line}: {column} must be positive, got {row[column]}")
            key = (values["flops_budget"], values["mean_recurrence"])
            groups[key].append((values["tokens"], values["val_loss"]))
            backprop[key].add((row.get("mean_backprop_depth") or "").strip())
    if not groups:
        raise DataError(f"{path}: no finished points (no row with status done)")
    for (c, mu), depths in backprop.items():
        if len(depths) > 1:
            raise DataError(
                f"{path}: C={c:.3g}, mean_recurrence={mu:g} has several mean_backprop_depth "
                f"values ({', '.join(sorted(depths))}); fit one backprop depth at a time"
            )
    return [
        Point(
            c,
            mu,
            float(np.mean([t for t, _ in runs])),
            float(np.mean([v for _, v in runs])),
            len(runs),
        )
        for (c, mu), runs in sorted(groups.items())
    ]


def _group(points: list[Point]) -> dict[float, list[Point]]:
    groups: dict[float, list[Point]] = defaultdict(list)
    for point in points:
        groups[point.flops_budget].append(point)
    return dict(sorted(groups.items()))


def _check_enough(groups: dict[float, list[Point]]) -> None:
    depth_counts = {c: len({p.mean_recurrence for p in group}) for c, group in groups.items()}
    if len(groups) < MIN_BUDGETS or min(depth_counts.values(), default=0) < MIN_DEPTHS:
        have = ", ".join(f"{c:.3g}: {n} depths" for c, n in depth_counts.items())
        raise DataError(
            f"isoflop fit needs at least {MIN_BUDGETS} budgets with {MIN_DEPTHS} depths each; "
            f"have {len(groups)} budgets ({have})"
        )


def _parabola_min(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, bool]:
    """Least-squares y = p·x² + q·x + r; the x of its minimum over [min x, max x] (the vertex
    −q/(2p) when p > 0 and inside), the coefficients, and whether it was clamped."""
    coeffs = np.polyfit(x, y, 2)
    lo, hi = float(x.min()), float(x.max())
    p, q, _ = coeffs
    if p > 0 and lo <= -q / (2 * p) <= hi:
        return float(-q / (2 * p)), coeffs, False
    ends = np.array([lo, hi])
    return float(ends[np.argmin(np.polyval(coeffs, ends))]), coeffs, True


def _budget_optimum(flops: float, group: list[Point]) -> BudgetOptimum:
    log_mu = np.log([p.mean_recurrence for p in group])
    log_d = np.log([p.tokens for p in group])
    loss = np.array([p.val_loss for p in group])
    x_mu, mu_coeffs, mu_clamped = _parabola_min(log_mu, loss)
    x_d, d_coeffs, d_clamped = _parabola_min(log_d, loss)
    return BudgetOptimum(
        flops_budget=flops,
        mu_opt=math.exp(x_mu),
        tokens_opt=math.exp(x_d),
        loss=float(np.polyval(mu_coeffs, x_mu)),
        mu_coeffs=tuple(float(c) for c in mu_coeffs),
        tokens_coeffs=tuple(float(c) for c in d_coeffs),
        mu_range=(float(np.exp(log_mu.min())), float(np.exp(log_mu.max()))),
        tokens_range=(float(np.exp(log_d.min())), float(np.exp(log_d.max()))),
        depths=len(set(log_mu.tolist())),
        extrapolated=mu_clamped or d_clamped,
    )


def _power_law(flops: np.ndarray, optima: np.ndarray) -> tuple[float, float]:
    """(exponent, prefactor) of optima = prefactor·flops^exponent, least squares in log space."""
    slope, intercept = np.polyfit(np.log(flops), np.log(optima), 1)
    return float(slope), float(math.exp(intercept))


def fit_isoflop(points: list[Point], bootstrap: int = 1000, seed: int = 0) -> IsoflopFit:
    """Per-budget optima, the power laws μ* = a·C^α and D* = b·C^β, and bootstrap 95% CIs of α
    and β over `bootstrap` resamples (seeded by `seed`; 0 resamples: no intervals)."""
    if not isinstance(bootstrap, int) or not 0 <= bootstrap <= MAX_BOOTSTRAP:
        raise ConfigError(f"--bootstrap must be in [0, {MAX_BOOTSTRAP}], got {bootstrap}")
    groups = _group(points)
    _check_enough(groups)
    budgets = tuple(_budget_optimum(c, group) for c, group in groups.items())
    flops = np.array([b.flops_budget for b in budgets])
    alpha, mu_prefactor = _power_law(flops, np.array([b.mu_opt for b in budgets]))
    beta, tokens_prefactor = _power_law(flops, np.array([b.tokens_opt for b in budgets]))

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        resampled = []
        for c, group in groups.items():
            picked = [group[i] for i in rng.integers(0, len(group), len(group))]
            if len({p.mean_recurrence for p in picked}) < MIN_DEPTHS:
                break
            resampled.append(_budget_optimum(c, picked))
        else:
            samples.append(
                (
                    _power_law(flops, np.array([b.mu_opt for b in resampled]))[0],
                    _power_law(flops, np.array([b.tokens_opt for b in resampled]))[0],
                )
            )
    alpha_ci = beta_ci = None
    if samples:
        alphas, betas = np.array(samples).T
        alpha_ci = tuple(float(v) for v in np.percentile(alphas, [2.5, 97.5]))
        beta_ci = tuple(float(v) for v in np.percentile(betas, [2.5, 97.5]))
    return IsoflopFit(
        budgets=budgets,
        alpha=alpha,
        mu_prefactor=mu_prefactor,
        alpha_ci=alpha_ci,
        beta=beta,
        tokens_prefactor=tokens_prefactor,
        beta_ci=beta_ci,
        points=len(points),
        bootstrap=bootstrap,
        bootstrap_used=len(samples),
    )


def _ci_text(ci: tuple[float, float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[no CI]"


def format_fit(fit: IsoflopFit) -> str:
    """A table of the per-budget optima and the two power laws."""
    lines = [f"{'budget C':>10}  {'depths':>6}  {'μ_rec*':>8}  {'D*':>10}  {'loss*':>8}"]
    for b in fit.budgets:
        note = "  extrapolated (optimum at the edge of the sweep)" if b.extrapolated else ""
        lines.append(
            f"{b.flops_budget:>10.3g}  {b.depths:>6d}  {b.mu_opt:>8.3f}  {b.tokens_opt:>10.4g}  "
            f"{b.loss:>8.4f}{note}"
        )
    lines.append(
        f"μ_rec* = {fit.mu_prefactor:.4g}·C^α   α = {fit.alpha:.3f} {_ci_text(fit.alpha_ci)} "
        f"(paper {PAPER_ALPHA:.2f})"
    )
    lines.append(
        f"D*     = {fit.tokens_prefactor:.4g}·C^β   β = {fit.beta:.3f} {_ci_text(fit.beta_ci)} "
        f"(paper {PAPER_BETA:.2f})"
    )
    lines.append(
        f"{fit.points} points, {len(fit.budgets)} budgets; 95% CIs from "
        f"{fit.bootstrap_used}/{fit.bootstrap} bootstrap resamples"
    )
    return "\n".join(lines)


def plot_isoflop(fit: IsoflopFit, points: list[Point], out_dir: str | Path) -> list[Path]:
    """Write isoflop-curves.png (val loss vs μ_rec per budget, fitted parabolas, optima) and
    isoflop-laws.png (μ* and D* vs C, log-log, with the fits and reference slopes 0.40 / 0.78
    through the fitted centre); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = _group(points)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(fit.budgets)))

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for budget, color in zip(fit.budgets, colors):
        group = groups.get(budget.flops_budget, [])
        axis.plot([p.mean_recurrence for p in group], [p.val_loss for p in group], "o", color=color)
        grid = np.linspace(*np.log(budget.mu_range), 200)
        axis.plot(
            np.exp(grid),
            np.polyval(budget.mu_coeffs, grid),
            color=color,
            label=f"C = {budget.flops_budget:.2g}",
        )
        axis.plot(budget.mu_opt, budget.loss, "*", color=color, markersize=14, markeredgecolor="k")
    axis.set_xscale("log")
    axis.set_xlabel("mean recurrence μ_rec")
    axis.set_ylabel("validation loss")
    axis.set_title("isoFLOP curves (★ optimum)")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    curves = out_dir / "isoflop-curves.png"
    figure.savefig(curves, dpi=120)
    plt.close(figure)

    flops = np.array([b.flops_budget for b in fit.budgets])
    grid = np.geomspace(flops.min(), flops.max(), 100)
    centre = math.exp(np.log(flops).mean())
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    laws = (
        (
            "μ_rec*",
            [b.mu_opt for b in fit.budgets],
            fit.mu_at,
            fit.alpha,
            fit.alpha_ci,
            "α",
            PAPER_ALPHA,
        ),
        (
            "D*",
            [b.tokens_opt for b in fit.budgets],
            fit.tokens_at,
            fit.beta,
            fit.beta_ci,
            "β",
            PAPER_BETA,
        ),
    )
    for axis, (name, optima, law, exponent, ci, symbol, paper) in zip(axes, laws):
        axis.plot(flops, optima, "o", label="per-budget optimum")
        axis.plot(grid, law(grid), label=f"fit {symbol} = {exponent:.3f} {_ci_text(ci)}")
        axis.plot(
            grid,
            law(centre) * (grid / centre) ** paper,
            "--",
            color="gray",
            label=f"paper slope {paper:.2f}",
        )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("training FLOPs C")
        axis.set_ylabel(name)
        axis.set_title(f"{name} ∝ C^{symbol}")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    figure.tight_layout()
    laws_path = out_dir / "isoflop-laws.png"
    figure.savefig(laws_path, dpi=120)
    plt.close(figure)
    return [curves, laws_path]


def load_fit(path: str | Path) -> IsoflopFit:
    """An IsoflopFit from a fit.json written by `parcae fit isoflop`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such fit file")
    try:
        data = parse_json(path.read_bytes())
    except ValueError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("law") != "isoflop":
        raise DataError(f"{path}: not a `parcae fit isoflop` fit.json")
    try:
        return IsoflopFit.from_dict(data)
    except DataError as error:
        raise DataError(f"{path}: {error}") from None


def run_fit_isoflop(args: argparse.Namespace) -> int:
    """`parcae fit isoflop results.csv [--out DIR] [--bootstrap N] [--seed S]`."""
    path = Path(args.results)
    points = read_results(path)
    fit = fit_isoflop(points, bootstrap=args.bootstrap, seed=args.seed)
    try:
        fit.check()
    except DataError as error:
        raise DataError(f"{path}: {error}") from None
    print(format_fit(fit))
    out_dir = Path(args.out) if args.out else path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for plot in plot_isoflop(fit, points, out_dir):
        print(f"plot: {plot}")
    target = out_dir / "fit.json"
    write_json_atomic(target, fit.to_dict(), indent=2)
    print(f"fit: {target}")
    return 0
