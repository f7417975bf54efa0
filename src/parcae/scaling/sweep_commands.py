"""`parcae sweep SWEEP.yaml`: run an isoFLOP sweep (parcae.scaling.sweep) into results.csv."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="train and evaluate every point of an isoFLOP sweep (budget x μ_rec) into a table",
        description="Train a model for each FLOP budget and mean recurrence of SWEEP.yaml and "
        "append its validation loss at depth μ_rec to OUT_DIR/results.csv. Re-running skips "
        "finished points, resumes interrupted ones and retries failed ones.",
    )
    parser.add_argument("sweep", help="the sweep file (see configs/sweeps/isoflop-tiny.yaml)")
    parser.add_argument(
        "--workers", type=int, default=1, help="points run at once (default 1: in this process)"
    )
    parser.add_argument(
        "--launcher",
        choices=("local", "ray"),
        default="local",
        help="local processes, or Ray tasks (RAY_ADDRESS or a local Ray; needs parcae[ray])",
    )
    parser.set_defaults(func=run_sweep_command)


def run_sweep_command(args) -> int:
    """Exit status 1 when a point failed (its error is in the table), else 0."""
    from parcae.scaling.sweep import load_sweep, run_sweep

    report = run_sweep(load_sweep(args.sweep), workers=args.workers, launcher=args.launcher)
    return 1 if report.failed else 0
