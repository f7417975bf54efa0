"""Command-line options shared by the benchmarks that train (quality.py, train_speed.py)."""

from __future__ import annotations

import argparse

import torch


def add_training_options(parser: argparse.ArgumentParser, overrides_help: str) -> None:
    """`--threads N` and trailing `key=value` training-config overrides."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice, one per core); 1 "
        "avoids OpenMP spin-waiting on a machine shared with other jobs",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
