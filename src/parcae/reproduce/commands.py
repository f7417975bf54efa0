"""`parcae reproduce run [--study S] [--quick]` (train and evaluate the studies, resumably) and
`parcae reproduce report` (docs/REPRODUCTION.md and its figures from the stored results)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

RESULTS = "docs/results/reproduction"
FIGURES = "docs/figures"
DOCUMENT = "docs/REPRODUCTION.md"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce the paper's claims at small scale (run the studies, write the report)",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser(
        "run",
        help="train and evaluate the studies' runs (resumable: finished runs are skipped)",
        description="Run S1 (stability), S2 (quality), S3 (test-time law) and S4 (isoFLOP), or "
        "the one named; S2 and S3 need S1's results. Each run's record goes to "
        "RESULTS/<study>.jsonl as soon as it finishes.",
    )
    run.add_argument(
        "--study",
        choices=("S1", "S2", "S3", "S4"),
        action="append",
        help="a study to run (repeatable; default: all four in order)",
    )
    run.add_argument(
        "--quick", action="store_true", help="a smoke test of the plumbing: a few steps, fewer runs"
    )
    run.add_argument(
        "--runs",
        default=None,
        help="where the runs (models, checkpoints) go (default runs/reproduce, with --quick "
        "runs/reproduce-quick)",
    )
    run.add_argument(
        "--results",
        default=None,
        help=f"the results tables (default {RESULTS}; with --quick RUNS/results, so that a "
        "smoke test never mixes with the stored results)",
    )
    run.set_defaults(func=run_command)
    report = actions.add_parser(
        "report",
        help="write docs/REPRODUCTION.md and its figures from the stored results",
    )
    report.add_argument("--results", default=RESULTS, help=f"(default {RESULTS})")
    report.add_argument("--figures", default=FIGURES, help=f"PNG directory (default {FIGURES})")
    report.add_argument("--out", default=DOCUMENT, help=f"the document (default {DOCUMENT})")
    report.set_defaults(func=report_command)


def run_command(args: argparse.Namespace) -> int:
    from parcae.outputs import check_not_file
    from parcae.reproduce.run import Workspace, run_study

    runs = check_not_file(
        args.runs or ("runs/reproduce-quick" if args.quick else "runs/reproduce"), "--runs"
    )
    results = check_not_file(
        args.results or (runs / "results" if args.quick else RESULTS), "--results"
    )
    workspace = Workspace(runs, results, quick=args.quick)
    for study in args.study or ["S1", "S2", "S3", "S4"]:
        seconds = run_study(study, workspace)
        print(f"{study}: finished in {seconds / 60:.1f} min")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from parcae.errors import DataError
    from parcae.outputs import check_not_file, output_file
    from parcae.reproduce.document import Report
    from parcae.reproduce.prose import prose

    results = Path(args.results)
    if not any(results.glob("*.jsonl")) and not (results / "S4").is_dir():
        raise DataError(
            f"no results in {results}: run `parcae reproduce run` first (or pass --results)"
        )
    check_not_file(args.figures, "--figures")
    output_file(args.out, "--out")
    started = time.perf_counter()
    report = Report(Path(args.results), Path(args.figures), Path(args.out))
    for figure in report.draw():
        print(f"figure: {figure}")
    path = report.write(prose(report))
    print(f"report: {path} ({time.perf_counter() - started:.1f} s)")
    return 0
