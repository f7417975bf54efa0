"""`parcae train` and `parcae plot`."""

from __future__ import annotations

import argparse

from parcae.errors import ConfigError


def _train(args: argparse.Namespace) -> int:
    from parcae.train.config import load_config
    from parcae.train.loop import train
    from parcae.train.metrics import format_eval

    path, overrides = None, list(args.items)
    if overrides and "=" not in overrides[0]:
        path = overrides.pop(0)
    stray = [item for item in overrides if "=" not in item]
    if stray:
        raise ConfigError(f"expected key=value overrides after the config file, got {stray[0]!r}")
    result = train(load_config(path, overrides))
    if result.interrupted_by is not None:
        return 128 + int(result.interrupted_by)
    if not result.is_main:  # under torchrun, rank 0 reports
        return 0
    if result.final_eval:
        print(
            f"final validation after {result.steps} steps ({result.tokens:,} tokens"
            f"{f', {result.skipped_steps} skipped' if result.skipped_steps else ''}):"
        )
        for line in format_eval(result.final_eval).split("  "):
            print(f"  {line}")
        print(f"model saved to {result.out_dir / 'model'}")
    if result.sample is not None:
        print(f"sample: {result.sample!r}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from parcae.train.plot import plot_runs

    for path in plot_runs(args.runs, args.out):
        print(path)
    return 0


def _upgrade_checkpoints(args: argparse.Namespace) -> int:
    from parcae.errors import CheckpointError
    from parcae.train.checkpoint import list_checkpoints, upgrade_checkpoints

    if not list_checkpoints(args.run):
        raise CheckpointError(f"{args.run}: no checkpoints (expected {args.run}/checkpoints/)")
    upgraded = upgrade_checkpoints(args.run)
    if not upgraded:
        print(f"{args.run}: every checkpoint has its hash; nothing to upgrade")
    else:
        print(f"upgraded {len(upgraded)} checkpoints: {', '.join(p.name for p in upgraded)}")
    return 0


def register(subparsers) -> None:
    """Add this package's subcommands to the top-level parser."""
    train = subparsers.add_parser(
        "train",
        help="train a model (default: parcae-tiny on Shakespeare, under 10 minutes on 2 CPU cores)",
        description="Train from an optional YAML config plus key=value overrides (dotted keys "
        "set nested fields, e.g. model_overrides.d_model=128). Without arguments: "
        "parcae-tiny on the built-in Shakespeare corpus. Distributed: "
        "torchrun --nproc_per_node=N -m parcae train ... (DDP; parallel=fsdp "
        "shards the model with FSDP2)",
    )
    train.add_argument("items", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
    train.set_defaults(func=_train)

    upgrade = subparsers.add_parser(
        "upgrade-checkpoints",
        help="trust a run's checkpoints that have no hash (older parcae, or a save cut short)",
        description="For checkpoints you wrote yourself: read each checkpoint of RUN_DIR that "
        "has no .sha256 (fully unpickled: never run this on files from elsewhere), convert the "
        "state of parcae before 2026-11-30 and write it back with its hash, so that "
        "resume=true accepts it.",
    )
    upgrade.add_argument("run", metavar="RUN_DIR", help="the run's out_dir")
    upgrade.set_defaults(func=_upgrade_checkpoints)

    plot = subparsers.add_parser("plot", help="plot training runs (PNG files)")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories to overlay")
    plot.add_argument(
        "--out", default=None, help="directory for the PNGs (default: the first run's plots/)"
    )
    plot.set_defaults(func=_plot)
