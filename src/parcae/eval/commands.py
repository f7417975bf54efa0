"""`parcae eval` (tasks at test-time depths) and `parcae fit depth` (the depth law from a saved
results file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from parcae.commands import add_model_argument, subcommand_group
from parcae.errors import ConfigError, DataError
from parcae.outputs import check_not_file, write_json_atomic
from parcae.values import parse_json

# items per task by default: BIG-bench's first task alone has 20,442 items (hours on a CPU);
# 200 spread evenly over each task's file take minutes, `--max-per-task all` runs everything
DEFAULT_MAX_PER_TASK = 200


def register(subparsers) -> None:
    """Add this package's subcommands to the top-level parser."""
    evaluate = subparsers.add_parser(
        "eval",
        help="evaluate a model: bpb, CORE / BIG-bench tasks, at several test-time depths",
        description="Evaluate a model on validation bpb and ICL tasks (DCLM CORE bundle, "
        "BIG-bench) at chosen loop depths; print a table and write a results JSON.",
    )
    add_model_argument(evaluate)
    evaluate.add_argument(
        "--tasks",
        default="bpb,bigbench",
        help="comma-separated: bpb, bigbench, core, core_extended (any task list of the "
        "bundle), task labels, or synthetic reasoning tasks such as synth:phop?hops=1-4 "
        "(accuracy by difficulty; default: bpb,bigbench)",
    )
    evaluate.add_argument(
        "--depths",
        default=None,
        help="test-time loop depths: 1,2,4,8 or 1..32 (default: 1, 2, 4 and μ_rec; "
        "a fixed-depth model runs once)",
    )
    evaluate.add_argument(
        "--bundle", default=None, help="DCLM eval bundle directory (default: $PARCAE_EVAL_BUNDLE)"
    )
    evaluate.add_argument(
        "--max-per-task",
        default=str(DEFAULT_MAX_PER_TASK),
        metavar="N|all",
        help=f"N items per task, spread evenly over its file (per difficulty for synth: tasks; "
        f"default {DEFAULT_MAX_PER_TASK}: minutes on a CPU); all: every item (BIG-bench: hours "
        "on a CPU; synth: tasks then take 256 per difficulty)",
    )
    evaluate.add_argument(
        "--num-fewshot", type=int, default=None, help="override every task's few-shot count"
    )
    evaluate.add_argument(
        "--batch-size", type=int, default=16, help="sequences (or bpb rows) per forward"
    )
    evaluate.add_argument(
        "--data", default=None, help="prepared data directory for bpb (default: the run's data)"
    )
    evaluate.add_argument(
        "--bpb-batches", type=int, default=None, help="validation batches for bpb (default: all)"
    )
    evaluate.add_argument("--seq-len", type=int, default=None, help="bpb sequence length")
    evaluate.add_argument(
        "--out", default=None, help="results JSON (default: eval-<model name>.json)"
    )
    evaluate.add_argument(
        "--fit",
        action="store_true",
        help="fit L(T) = L_inf + Z exp(-z T) to bpb, loss and CORE over the depths; plot to PNG",
    )
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=run_eval_command)

    depth = subcommand_group(subparsers, "fit").add_parser(
        "depth",
        help="the test-time depth law L(T) = L_inf + Z exp(-z T) from a `parcae eval` results JSON",
    )
    depth.add_argument("results", help="results JSON written by `parcae eval`")
    depth.add_argument("--out", default=None, help="directory for the plots and fit.json")
    depth.set_defaults(func=run_fit_depth)


def _per_task(text: str) -> int | None:
    """`--max-per-task`: a positive count, or None for `all`."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"--max-per-task must be a positive integer or all, got {text!r}"
        ) from None


def run_eval_command(args: argparse.Namespace) -> int:
    from parcae.eval.run import EvalRequest, run_eval, write_results
    from parcae.eval.selection import parse_depths

    depths = parse_depths(args.depths) if args.depths is not None else None
    request = EvalRequest(
        model=args.model,
        tasks=args.tasks,
        bundle=args.bundle,
        num_fewshot=args.num_fewshot,
        depths=depths,
        out=args.out,
        max_per_task=_per_task(args.max_per_task),
        batch_size=args.batch_size,
        data=args.data,
        bpb_batches=args.bpb_batches,
        seq_len=args.seq_len,
        device=args.device,
        progress=not args.no_progress,
    )
    results = run_eval(request)
    from parcae.eval.report import format_table

    print(format_table(results))
    out = Path(results["out"])
    if args.fit:
        results["fit"] = _fit_and_report(results, out.parent, out.stem)
        write_results(out, results)
    print(f"results: {out}")
    return 0


def _fit_and_report(results: dict, directory: Path, stem: str) -> dict:
    """Fit and plot each metric's depth law into `directory`, print them; the fits as JSON."""
    from parcae.eval.report import fit_laws, format_laws

    if not results.get("looped"):
        raise DataError(f"{results.get('model')}: a fixed-depth model has no test-time depth law")
    laws, plots = fit_laws(results, directory, stem)
    print(format_laws(laws))
    for plot in plots:
        print(f"plot: {plot}")
    return {metric: law.to_dict() for metric, law in laws.items()}


def run_fit_depth(args: argparse.Namespace) -> int:
    path = Path(args.results)
    if not path.is_file():
        raise DataError(f"{path}: no such results file")
    try:
        results = parse_json(path.read_bytes())
    except ValueError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(results, dict) or "depths" not in results:
        raise DataError(f"{path}: not a `parcae eval` results file")
    out_dir = check_not_file(args.out or path.parent, "--out")
    fits = _fit_and_report(results, out_dir, path.stem)
    target = out_dir / f"{path.stem}-fit.json"
    write_json_atomic(target, fits, indent=2)
    print(f"fit: {target}")
    return 0
