"""`parcae fit isoflop`: synthetic sweeps with known exponents (recovered exactly without noise,
inside the bootstrap CI with noise), reading results.csv, too few points, plots and fit.json."""

import argparse
import csv
import json
import math

import numpy as np
import pytest

from parcae.errors import DataError
from parcae.scaling.isoflop import (
    IsoflopFit,
    Point,
    fit_isoflop,
    format_fit,
    load_fit,
    plot_isoflop,
    read_results,
    run_fit_isoflop,
)

ALPHA, BETA = 0.4, 0.78
BUDGETS = [1e14 * f for f in (1, 3, 10, 30, 100)]
DEPTHS = [1, 2, 4, 8, 16, 32]
MU_PREFACTOR = 2.5 / 1e14**ALPHA  # μ*(1e14) = 2.5, μ*(1e16) ≈ 15.8: inside the swept depths
TOKENS_PREFACTOR = 2e8 / 1e14**BETA
COLUMNS = (
    "flops_budget,mean_recurrence,seed,params,tokens,steps,flops,val_loss,val_bpb,status,error,"
    "run_dir"
).split(",")


def synthetic_points(sigma: float = 0.0, seed: int = 0, budgets=BUDGETS, depths=DEPTHS):
    """L(C, μ) = 3 + 0.1·(log μ − log μ*(C))² + noise with μ*(C) = a·C^0.4; the tokens are
    D = D*(C)·μ*(C)/μ with D*(C) = b·C^0.78, so the parabola in log D has its vertex at D*."""
    rng = np.random.default_rng(seed)
    points = []
    for c in budgets:
        mu_opt, tokens_opt = MU_PREFACTOR * c**ALPHA, TOKENS_PREFACTOR * c**BETA
        for mu in depths:
            x = math.log(mu / mu_opt)
            loss = 3.0 + 0.1 * x**2 + sigma * rng.normal()
            points.append(Point(c, float(mu), tokens_opt * mu_opt / mu, float(loss)))
    return points


def write_csv(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in COLUMNS})
    return path


def point_row(point: Point, seed=0, status="done", **changes):
    row = dict(
        flops_budget=point.flops_budget,
        mean_recurrence=int(point.mean_recurrence),
        seed=seed,
        params=1000,
        tokens=point.tokens,
        steps=10,
        flops=point.flops_budget,
        val_loss=point.val_loss,
        val_bpb=point.val_loss / math.log(2),
        status=status,
    )
    row.update(changes)
    return row


def test_noise_free_sweep_recovers_the_exponents_within_one_percent():
    fit = fit_isoflop(synthetic_points(), bootstrap=0)
    assert fit.alpha == pytest.approx(ALPHA, rel=0.01)
    assert fit.beta == pytest.approx(BETA, rel=0.01)
    assert fit.mu_prefactor == pytest.approx(MU_PREFACTOR, rel=0.01)
    assert fit.tokens_prefactor == pytest.approx(TOKENS_PREFACTOR, rel=0.01)
    for budget in fit.budgets:
        assert budget.mu_opt == pytest.approx(MU_PREFACTOR * budget.flops_budget**ALPHA, rel=1e-6)
        assert budget.tokens_opt == pytest.approx(
            TOKENS_PREFACTOR * budget.flops_budget**BETA, rel=1e-6
        )
        assert budget.loss == pytest.approx(3.0, abs=1e-9)
        assert budget.mu_coeffs[0] == pytest.approx(0.1)
        assert not budget.extrapolated
    assert fit.alpha_ci is None and fit.bootstrap_used == 0
    assert fit.budget_range == (1e14, 1e16)
    assert fit.points == 30


def test_noisy_sweep_true_exponents_lie_inside_the_bootstrap_ci():
    fit = fit_isoflop(synthetic_points(sigma=0.01, seed=0), bootstrap=1000, seed=0)
    lo, hi = fit.alpha_ci
    assert lo < ALPHA < hi and lo < fit.alpha < hi
    lo, hi = fit.beta_ci
    assert lo < BETA < hi and lo < fit.beta < hi
    # a resample leaving < 3 distinct depths at one of 5 budgets is skipped: ~10% of them
    assert 800 < fit.bootstrap_used < 1000
    again = fit_isoflop(synthetic_points(sigma=0.01, seed=0), bootstrap=1000, seed=0)
    assert again.alpha_ci == fit.alpha_ci and again.beta_ci == fit.beta_ci
    other = fit_isoflop(synthetic_points(sigma=0.01, seed=0), bootstrap=1000, seed=1)
    assert other.alpha_ci != fit.alpha_ci
    text = format_fit(fit)
    assert f"α = {fit.alpha:.3f} [{fit.alpha_ci[0]:.3f}, {fit.alpha_ci[1]:.3f}]" in text
    assert "(paper 0.78)" in text


def test_optimum_beyond_the_swept_depths_is_clamped_and_flagged():
    points = synthetic_points(depths=[1, 2, 4, 8, 16, 32])
    shallow = [p for p in points if p.mean_recurrence <= 4]  # μ*(1e16) ≈ 15.8 lies beyond 4
    fit = fit_isoflop(shallow, bootstrap=0)
    by_budget = {b.flops_budget: b for b in fit.budgets}
    assert not by_budget[1e14].extrapolated
    assert by_budget[1e14].mu_opt == pytest.approx(2.5)
    assert by_budget[1e16].extrapolated
    assert by_budget[1e16].mu_opt == pytest.approx(4.0)
    assert by_budget[1e16].mu_range == (1.0, 4.0)
    assert "extrapolated" in format_fit(fit)


def test_too_few_budgets_or_depths_is_one_line():
    points = synthetic_points(budgets=[1e13, 3e13])
    points = [p for p in points if p.flops_budget == 1e13 or p.mean_recurrence in (1, 2)]
    with pytest.raises(DataError) as error:
        fit_isoflop(points)
    assert str(error.value) == (
        "isoflop fit needs at least 3 budgets with 3 depths each; "
        "have 2 budgets (1e+13: 6 depths, 3e+13: 2 depths)"
    )
    points = [p for p in synthetic_points() if p.flops_budget != 1e16 or p.mean_recurrence < 4]
    with pytest.raises(DataError, match=r"have 5 budgets \(.*1e\+16: 2 depths\)$"):
        fit_isoflop(points)


def test_read_results_keeps_done_rows_and_averages_seeds(tmp_path):
    points = synthetic_points(budgets=BUDGETS[:3], depths=[1, 2, 4])
    rows = [point_row(p) for p in points]
    first = points[0]
    rows.append(point_row(first, seed=1, val_loss=first.val_loss + 0.2))
    rows.append(point_row(first, seed=2, status="failed", val_loss="", error="OOM"))
    rows.append(point_row(points[1], seed=3, status="running", val_loss=""))
    rows.append(point_row(Point(1e14, 64.0, 1.0, 9.9), status="failed"))
    read = read_results(write_csv(tmp_path / "results.csv", rows))
    assert len(read) == 9
    assert read[0].flops_budget == 1e14 and read[0].mean_recurrence == 1.0
    assert read[0].seeds == 2
    assert read[0].val_loss == pytest.approx(first.val_loss + 0.1)
    assert read[1].seeds == 1 and read[1].val_loss == pytest.approx(points[1].val_loss)
    assert all(p.mean_recurrence != 64.0 for p in read)


def test_read_results_bad_input_is_one_line(tmp_path):
    with pytest.raises(DataError, match="no such results file"):
        read_results(tmp_path / "missing.csv")
    (tmp_path / "cols.csv").write_text("flops_budget,mean_recurrence,status\n1e13,2,done\n")
    with pytest.raises(DataError, match=r"missing column\(s\) seed, tokens, val_loss$"):
        read_results(tmp_path / "cols.csv")
    point = synthetic_points()[0]
    rows = [point_row(point), point_row(point, seed=1, val_loss="nan?")]
    with pytest.raises(DataError, match=r"bad.csv:3: val_loss is not a finite number \('nan\?'\)"):
        read_results(write_csv(tmp_path / "bad.csv", rows))
    rows = [point_row(point, status="failed")]
    with pytest.raises(DataError, match="no finished points"):
        read_results(write_csv(tmp_path / "none.csv", rows))
    columns = [*COLUMNS, "mean_backprop_depth"]
    with (tmp_path / "k.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerow(point_row(point, mean_backprop_depth=1))
        writer.writerow(point_row(point, seed=1, mean_backprop_depth=2))
    with pytest.raises(DataError, match=r"mean_recurrence=1 has several mean_backprop_depth.*1, 2"):
        read_results(tmp_path / "k.csv")
    rows = [point_row(point, mean_recurrence=0)]
    with pytest.raises(DataError, match="mean_recurrence must be positive"):
        read_results(write_csv(tmp_path / "zero.csv", rows))


def test_fit_command_writes_table_plots_and_a_round_tripping_fit_json(tmp_path, capsys):
    rows = [point_row(p) for p in synthetic_points(sigma=0.005, seed=3)]
    results = write_csv(tmp_path / "results.csv", rows)
    args = argparse.Namespace(results=str(results), out=None, bootstrap=50, seed=0)
    assert run_fit_isoflop(args) == 0
    printed = capsys.readouterr().out
    assert "μ_rec* =" in printed and f"fit: {tmp_path / 'fit.json'}" in printed
    for name in ("isoflop-curves.png", "isoflop-laws.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "fit.json").read_text())
    assert data["mu_rec"]["paper_exponent"] == 0.40 and data["tokens"]["paper_exponent"] == 0.78
    assert data["points"] == 30 and len(data["budgets"]) == 5
    assert data["mu_rec"]["exponent"] == pytest.approx(ALPHA, abs=0.02)
    expected = fit_isoflop(read_results(results), bootstrap=50, seed=0)
    assert load_fit(tmp_path / "fit.json") == expected
    assert IsoflopFit.from_dict(expected.to_dict()) == expected


def test_plot_isoflop_returns_pngs(tmp_path):
    points = synthetic_points()
    paths = plot_isoflop(fit_isoflop(points, bootstrap=0), points, tmp_path / "plots")
    assert [p.name for p in paths] == ["isoflop-curves.png", "isoflop-laws.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 10_000 for p in paths)


def test_load_fit_refuses_other_files(tmp_path):
    (tmp_path / "depth.json").write_text('{"bpb": {}}')
    with pytest.raises(DataError, match="not a `parcae fit isoflop` fit.json"):
        load_fit(tmp_path / "depth.json")
    (tmp_path / "cut.json").write_text('{"law": "isoflop", "mu_rec": {}}')
    with pytest.raises(DataError, match="cut.json: not an isoflop fit"):
        load_fit(tmp_path / "cut.json")


def test_reads_the_table_parcae_sweep_writes(tmp_path):
    from parcae.scaling.sweep import COLUMNS as SWEEP_COLUMNS

    points = synthetic_points()
    with (tmp_path / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SWEEP_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for point in points:
            k = min(2, int(point.mean_recurrence))
            writer.writerow(point_row(point, mean_backprop_depth=k, wall_seconds=1.5))
    fit = fit_isoflop(read_results(tmp_path / "results.csv"), bootstrap=0)
    assert fit.alpha == pytest.approx(ALPHA, rel=1e-6) and fit.points == len(points)
