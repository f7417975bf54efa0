"""`parcae plan`: μ_rec and tokens from a fit.json (a·C^α, b·C^β), the extrapolation warning, the
paper anchor without a fit, and the written training config (loaded by `load_config`)."""

import argparse
import json
import math

import pytest

from parcae.errors import ConfigError
from parcae.model import create_model, preset_config
from parcae.model.flops import training_flops_per_token
from parcae.scaling.isoflop import Point, fit_isoflop, load_fit
from parcae.scaling.plan import plan_training, run_plan
from parcae.train.config import load_config
from parcae.train.schedule import total_steps

ALPHA, BETA = 0.4, 0.78
MU_PREFACTOR = 3.0 / 1e14**ALPHA  # μ*(1e14) = 3, μ*(1e16) ≈ 18.9
TOKENS_PREFACTOR = 1e8 / 1e14**BETA


@pytest.fixture(scope="module")
def fit():
    """A noise-free fit over budgets 1e14..1e16 (parabolas with vertices at μ* and D*)."""
    points = []
    for c in (1e14, 1e15, 1e16):
        mu_opt, tokens_opt = MU_PREFACTOR * c**ALPHA, TOKENS_PREFACTOR * c**BETA
        for mu in (1, 2, 4, 8, 16, 32):
            loss = 3.0 + 0.1 * math.log(mu / mu_opt) ** 2
            points.append(Point(c, float(mu), tokens_opt * mu_opt / mu, loss))
    return fit_isoflop(points, bootstrap=0)


@pytest.fixture
def fit_json(fit, tmp_path):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(fit.to_dict()))
    return path


def plan_args(**changes):
    args = dict(
        flops=1e15,
        fit=None,
        model=None,
        seq_len=None,
        batch_size=None,
        write_config=None,
        overrides=[],
    )
    args.update(changes)
    return argparse.Namespace(**args)


def test_plan_from_a_fit_follows_the_power_laws(fit):
    flops = 1e15
    plan = plan_training(flops, fit=fit)
    mu = MU_PREFACTOR * flops**ALPHA  # 7.54
    tokens = TOKENS_PREFACTOR * flops**BETA
    assert plan.mu_exact == pytest.approx(mu, rel=1e-6)
    assert plan.mean_recurrence == 8 and plan.mean_backprop_depth == 4  # k = ⌈μ_rec / 2⌉
    assert plan.tokens_exact == pytest.approx(tokens, rel=1e-6)
    assert plan.steps == round(tokens / (12 * 256))
    assert plan.tokens == plan.steps * 12 * 256
    config = preset_config("parcae-tiny", vocab_size=4096, mean_recurrence=8, mean_backprop_depth=4)
    assert plan.flops_per_token == training_flops_per_token(config, 256)
    assert plan.params == create_model(config, device="meta").num_params()
    assert plan.compute_ratio == pytest.approx(plan.tokens * plan.flops_per_token / flops)
    assert not plan.extrapolated
    small = plan_training(1e14, fit=fit, batch_size=4, seq_len=128)
    assert small.mean_recurrence == 3 and small.mean_backprop_depth == 2  # ⌈3 / 2⌉
    assert small.tokens_exact == pytest.approx(1e8, rel=1e-6)
    assert small.steps == round(small.tokens_exact / (4 * 128))  # about 195312


def test_extrapolation_warns_outside_the_fitted_budgets_only(fit_json, capsys):
    assert run_plan(plan_args(flops=3e15, fit=str(fit_json))) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "mean_recurrence      12" in captured.out  # 3·30^0.4 = 11.69
    assert run_plan(plan_args(flops=1e17, fit=str(fit_json))) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "parcae: warning: extrapolating: C=1e+17 lies outside the fitted budgets [1e+14, 1e+16]"
    )
    assert "mean_recurrence      48" in captured.out  # 3·1000^0.4 = 47.5
    run_plan(plan_args(flops=1e13, fit=str(fit_json)))
    assert "extrapolating: C=1e+13" in capsys.readouterr().err


def test_written_config_loads_and_trains_the_planned_steps(fit_json, tmp_path, capsys):
    out = tmp_path / "cfg" / "plan.yaml"
    args = plan_args(
        flops=2e15,
        fit=str(fit_json),
        batch_size=8,
        write_config=str(out),
        overrides=["out_dir=runs/planned", "lr=0.01", "model_overrides.d_model=96"],
    )
    assert run_plan(args) == 0
    assert f"config: {out}" in capsys.readouterr().out
    config = load_config(out)
    mu = round(MU_PREFACTOR * 2e15**ALPHA)
    assert config.model == "parcae-tiny"
    assert config.model_overrides == {
        "d_model": 96,
        "mean_recurrence": mu,
        "mean_backprop_depth": (mu + 1) // 2,
    }
    assert config.batch_size == 8 and config.seq_len == 256
    assert config.out_dir == "runs/planned" and config.lr == 0.01
    assert config.max_steps is None and config.max_flops is None
    plan = plan_training(2e15, fit=load_fit(fit_json), batch_size=8, overrides=args.overrides)
    assert config.max_tokens == plan.tokens
    assert (
        plan.params
        == create_model(
            preset_config("parcae-tiny", vocab_size=4096, **config.model_overrides), device="meta"
        ).num_params()
    )
    assert total_steps(config, plan.params, plan.flops_per_token) == plan.steps


def test_a_budget_below_one_step_is_refused():
    """1e3 FLOPs once planned 0.018 tokens and rounded that up to a whole step, 7e7 times the
    budget."""
    with pytest.raises(ConfigError, match="too small to plan for: the optimal budget is"):
        plan_training(1e3)


def test_paper_anchor_without_a_fit():
    base = preset_config("parcae-tiny", vocab_size=4096)
    params = create_model(base, device="meta").num_params()
    tokens0 = 20 * params
    flops0 = tokens0 * training_flops_per_token(base, 256)
    at_anchor = plan_training(flops0)
    assert at_anchor.mu_exact == pytest.approx(4.0) and at_anchor.mean_recurrence == 4
    assert at_anchor.tokens_exact == pytest.approx(tokens0)
    assert at_anchor.compute_ratio == pytest.approx(1.0, rel=1e-3)
    assert "anchored at parcae-tiny" in at_anchor.source and not at_anchor.extrapolated
    one = plan_training(1e12, overrides=["model_overrides.mean_backprop_depth=3"])
    assert one.mean_recurrence == 1 and one.mean_backprop_depth == 1  # k = ⌈μ_rec / 2⌉
    bigger = plan_training(100 * flops0)
    assert bigger.mu_exact == pytest.approx(4.0 * 100**0.4)  # 25.2
    assert bigger.mean_recurrence == 25 and bigger.mean_backprop_depth == 13
    assert bigger.tokens_exact == pytest.approx(tokens0 * 100**0.78)


def test_plan_refuses_bad_requests(fit):
    with pytest.raises(ConfigError, match="plan needs a looped"):
        plan_training(1e15, fit=fit, model="gpt-tiny")
    with pytest.raises(ConfigError, match="sets the training budget itself; drop max_steps"):
        plan_training(1e15, fit=fit, overrides=["max_steps=10"])
    with pytest.raises(ConfigError, match="--flops must be a positive number"):
        plan_training(-1.0, fit=fit)
    with pytest.raises(ConfigError, match="unknown training config key"):
        plan_training(1e15, fit=fit, overrides=["learning_rate=0.1"])
