"""`parcae plan`: the compute-optimal loop depth and token budget for a training FLOP budget C.

With a fit (`--fit fit.json` from `parcae fit isoflop`):

    μ_rec = max(1, round(a·C^α)),        D = b·C^β

Without one, the paper's exponents are anchored at the base preset itself: its own
mean_recurrence μ0 is taken as compute-optimal at the Chinchilla-style budget
C0 = D0·F_train(μ0) with D0 = 20·N tokens (N its parameters), so

    μ_rec = max(1, round(μ0·(C/C0)^0.40)),        D = D0·(C/C0)^0.78

The anchor is a heuristic, not a measurement: run a sweep and pass --fit for a real plan.

The backprop depth is ⌈μ_rec/2⌉, as `parcae sweep` trains its points (so a plan trains like
the points its fit came from).
Training runs steps = round(D / (batch_size·seq_len)) steps, i.e. max_tokens = steps·batch·seq.
Because μ* and D* are fitted separately, D·F_train(μ_rec) need not equal C; the plan reports the
ratio. The model (for N and F_train) is the preset with the base config's model_overrides and
its vocab_size (the tokenizer's size when the data is prepared by training).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from parcae.errors import ConfigError
from parcae.model.config import MAX_NUM_STEPS
from parcae.outputs import output_file, write_text_atomic
from parcae.scaling.isoflop import PAPER_ALPHA, PAPER_BETA, IsoflopFit, load_fit
from parcae.scaling.sweep import default_backprop_depth
from parcae.train.config import BUDGET_KEYS, TrainConfig, apply_override, parse_override

ANCHOR_TOKENS_PER_PARAM = 20.0  # D0 = 20·N at the preset's own μ_rec (no fit)


@dataclass(frozen=True)
class Plan:
    """A training plan for `flops` FLOPs and the training config (YAML dict) that runs it."""

    flops: float
    model: str
    mu_exact: float  # a·C^α before rounding
    mean_recurrence: int
    mean_backprop_depth: int
    tokens_exact: float  # b·C^β
    steps: int
    batch_size: int
    seq_len: int
    params: int
    flops_per_token: float  # F_train at the planned μ_rec
    source: str
    budget_range: tuple[float, float] | None  # the fitted budgets (None: paper anchor)
    config: dict[str, Any]

    @property
    def tokens(self) -> int:
        """Tokens actually trained: steps·batch_size·seq_len."""
        return self.steps * self.batch_size * self.seq_len

    @property
    def compute_ratio(self) -> float:
        """D·F_train(μ_rec) / C."""
        return self.tokens * self.flops_per_token / self.flops

    @property
    def extrapolated(self) -> bool:
        lo, hi = self.budget_range or (self.flops, self.flops)
        return not lo <= self.flops <= hi


def _model_cost(config: TrainConfig, overrides: dict[str, Any]) -> tuple[Any, int, float]:
    """(model config, parameters, F_train per token) of the preset with `overrides`."""
    from parcae.model import create_model
    from parcae.model.flops import training_flops_per_token
    from parcae.train.model import build_model_config

    model_config = build_model_config(
        dataclasses.replace(config, model_overrides=overrides), config.vocab_size
    )
    model = create_model(model_config, device="meta")
    return model_config, model.num_params(), training_flops_per_token(model_config, config.seq_len)


def plan_training(
    flops: float,
    fit: IsoflopFit | None = None,
    model: str | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Plan:
    """The plan for `flops` FLOPs from `fit` (or the paper anchor without one); `model`,
    `batch_size`, `seq_len` default to the base config (TrainConfig plus `overrides`)."""
    if not (isinstance(flops, (int, float)) and math.isfinite(flops) and flops > 0):
        raise ConfigError(f"--flops must be a positive number, got {flops!r}")
    data: dict[str, Any] = {}
    for text in overrides:
        apply_override(data, *parse_override(text))
    given = [key for key in BUDGET_KEYS if data.get(key) is not None]
    if given:
        raise ConfigError(f"the plan sets the training budget itself; drop {', '.join(given)}")
    for key, value in (("model", model), ("batch_size", batch_size), ("seq_len", seq_len)):
        if value is not None:
            data[key] = value
    base = TrainConfig.from_dict(data)
    base_model, params, base_flops = _model_cost(base, base.model_overrides)
    if not base_model.is_looped:
        raise ConfigError(f"plan needs a looped (parcae) model, not {base.model!r}")
    mu0 = base_model.mean_recurrence

    if fit is not None:
        mu_exact, tokens_exact = fit.mu_at(flops), fit.tokens_at(flops)
        budget_range = fit.budget_range
        source = f"isoflop fit over budgets [{budget_range[0]:.3g}, {budget_range[1]:.3g}]"
    else:
        tokens0 = ANCHOR_TOKENS_PER_PARAM * params
        flops0 = tokens0 * base_flops
        mu_exact = mu0 * (flops / flops0) ** PAPER_ALPHA
        tokens_exact = tokens0 * (flops / flops0) ** PAPER_BETA
        budget_range = None
        source = (
            f"paper exponents α={PAPER_ALPHA}, β={PAPER_BETA} anchored at {base.model}: "
            f"μ_rec={mu0} optimal at C0={flops0:.3g} with D0=20·N={tokens0:.3g}"
        )
    if not mu_exact <= MAX_NUM_STEPS:  # also NaN
        raise ConfigError(
            f"--flops {flops:.3g} asks for a mean recurrence of {mu_exact:.4g}, beyond the loop "
            f"limit of {MAX_NUM_STEPS} steps; plan a smaller budget"
        )
    mean_recurrence = max(1, round(mu_exact))
    backprop = default_backprop_depth(mean_recurrence)
    model_overrides = {
        **base.model_overrides,
        "mean_recurrence": mean_recurrence,
        "mean_backprop_depth": backprop,
    }
    _, params, flops_per_token = _model_cost(base, model_overrides)
    step_tokens = base.batch_size * base.seq_len
    if tokens_exact < step_tokens / 2:
        raise ConfigError(
            f"--flops {flops:.3g} is too small to plan for: the optimal budget is "
            f"{tokens_exact:.3g} tokens, less than half of one step ({step_tokens} tokens of "
            f"{step_tokens * flops_per_token:.3g} FLOPs)"
        )
    steps = max(1, round(tokens_exact / step_tokens))
    config = {
        **data,
        "model": base.model,
        "model_overrides": model_overrides,
        "max_tokens": steps * base.batch_size * base.seq_len,
        "batch_size": base.batch_size,
        "seq_len": base.seq_len,
    }
    TrainConfig.from_dict(config)
    return Plan(
        flops=float(flops),
        model=base.model,
        mu_exact=mu_exact,
        mean_recurrence=mean_recurrence,
        mean_backprop_depth=backprop,
        tokens_exact=tokens_exact,
        steps=steps,
        batch_size=base.batch_size,
        seq_len=base.seq_len,
        params=params,
        flops_per_token=flops_per_token,
        source=source,
        budget_range=budget_range,
        config=config,
    )


def format_plan(plan: Plan) -> str:
    ratio = plan.compute_ratio
    return "\n".join(
        [
            f"plan for C = {plan.flops:.4g} training FLOPs ({plan.source})",
            f"  model                {plan.model}: {plan.params:,d} parameters",
            f"  mean_recurrence      {plan.mean_recurrence}  (μ* = {plan.mu_exact:.3f})",
            f"  mean_backprop_depth  {plan.mean_backprop_depth}",
            f"  tokens D             {plan.tokens:.4g}  (D* = {plan.tokens_exact:.4g})",
            f"  steps                {plan.steps:,d}  (batch {plan.batch_size} × seq "
            f"{plan.seq_len})",
            f"  FLOPs per token      {plan.flops_per_token:.4g}  (training, at μ_rec)",
            f"  D·F_train(μ_rec)     {plan.tokens * plan.flops_per_token:.4g} = C × {ratio:.3f} "
            f"({100 * (ratio - 1):+.1f}%: μ* and D* come from separate power laws)",
        ]
    )


def write_config(plan: Plan, path: str | Path) -> Path:
    """Write the plan's training config as YAML (for `parcae train PATH`)."""
    path = output_file(path, "--write-config")
    write_text_atomic(path, yaml.safe_dump(plan.config, sort_keys=False))
    return path


def run_plan(args: argparse.Namespace) -> int:
    """`parcae plan --flops C [--fit fit.json] [--model PRESET] [--seq-len S] [--batch-size B]
    [--write-config out.yaml] [key=value ...]`."""
    fit = load_fit(args.fit) if args.fit else None
    if args.write_config:
        output_file(args.write_config, "--write-config")
    plan = plan_training(
        args.flops,
        fit=fit,
        model=args.model,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        overrides=args.overrides,
    )
    if plan.extrapolated:
        lo, hi = plan.budget_range
        print(
            f"parcae: warning: extrapolating: C={plan.flops:.3g} lies outside the fitted "
            f"budgets [{lo:.3g}, {hi:.3g}]",
            file=sys.stderr,
        )
    print(format_plan(plan))
    if args.write_config:
        print(f"config: {write_config(plan, args.write_config)}")
    return 0
