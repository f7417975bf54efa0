"""`parcae fit isoflop` (the compute-optimal μ_rec* and D* laws from a sweep's results.csv) and
`parcae plan` (a training config for a FLOP budget)."""

from __future__ import annotations

import argparse

from parcae.commands import subcommand_group


def register(subparsers) -> None:
    """Add `parcae fit isoflop` and `parcae plan` to the top-level parser."""
    isoflop = subcommand_group(subparsers, "fit").add_parser(
        "isoflop",
        help="compute-optimal μ_rec* = a·C^α and tokens D* = b·C^β from a `parcae sweep` "
        "results.csv",
        description="Fit a parabola of val loss in log μ_rec (and in log D) per FLOP budget, "
        "then power laws of the optima over the budgets with bootstrap 95%% intervals; print a "
        "table, write fit.json and PNG plots.",
    )
    isoflop.add_argument("results", help="results.csv written by `parcae sweep`")
    isoflop.add_argument(
        "--out", default=None, help="directory for fit.json and the plots (default: the csv's)"
    )
    isoflop.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (0: none)"
    )
    isoflop.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    isoflop.set_defaults(func=run_fit_isoflop_command)

    plan = subparsers.add_parser(
        "plan",
        help="compute-optimal mean recurrence and tokens for a training FLOP budget",
        description="Recommend μ_rec and the token budget for C training FLOPs from an isoflop "
        "fit (or, without --fit, the paper's exponents anchored at the preset), report params, "
        "FLOPs per token and D·F_train vs C, and optionally write a `parcae train` config.",
    )
    plan.add_argument("--flops", type=float, required=True, help="training FLOP budget C")
    plan.add_argument("--fit", default=None, help="fit.json written by `parcae fit isoflop`")
    plan.add_argument(
        "--model", default=None, help="base preset (default: the training config's, parcae-tiny)"
    )
    plan.add_argument("--seq-len", type=int, default=None, help="sequence length (default 256)")
    plan.add_argument("--batch-size", type=int, default=None, help="sequences per step (12)")
    plan.add_argument("--write-config", default=None, help="write the training config YAML here")
    plan.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="base training config overrides (e.g. data=... model_overrides.d_model=256)",
    )
    plan.set_defaults(func=run_plan_command)


def run_fit_isoflop_command(args: argparse.Namespace) -> int:
    from parcae.scaling.isoflop import run_fit_isoflop

    return run_fit_isoflop(args)


def run_plan_command(args: argparse.Namespace) -> int:
    from parcae.scaling.plan import run_plan

    return run_plan(args)
