"""Train (and evaluate) every run of a study of docs/REPRODUCTION.md, resumably:

    python -m experiments.run [--study S1|S2|S3|S4 ...] [--quick] [--runs DIR] [--results DIR]

from the repository's root. Runs live in `RUNS/<study>/<name>` (models, not committed); each
finished run appends its record to `RESULTS/<study>.jsonl` (`records.run_record` plus the run's
labels, status and wall time), rewritten atomically after every run. Re-running skips runs
whose record is `done` or `diverged`, resumes a run whose directory holds a checkpoint and
retries `failed` ones. S3's evaluations write `RESULTS/S3/<name>.json` (the `parcae eval`
results) and S4 is the isoFLOP sweep, its table in `RESULTS/S4/results.csv`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments import studies
from experiments.records import REFERENCE, read_table, run_record, write_table
from experiments.studies import RunSpec
from parcae.errors import ConfigError, DataError, ParcaeError, TrainingError
from parcae.outputs import write_json_atomic
from parcae.train.config import TrainConfig, merge_overrides

Say = Callable[[str], None]
FINISHED = ("done", "diverged")


@dataclass
class Workspace:
    """Where a reproduction keeps its runs and its results, and what every run overrides (tests
    point `overrides` at a tiny model and corpus)."""

    runs: Path
    results: Path
    quick: bool = False
    overrides: dict[str, Any] | None = None
    say: Say = print

    def table(self, study: str) -> Path:
        return self.results / f"{study}.jsonl"


def run_config(spec: RunSpec, workspace: Workspace) -> TrainConfig:
    """The spec's TrainConfig with the workspace's overrides, in its run directory."""
    data = merge_overrides(spec.config, workspace.overrides)
    data["out_dir"] = str(workspace.runs / spec.study / spec.name)
    return TrainConfig.from_dict(data)


def train_run(spec: RunSpec, workspace: Workspace) -> dict[str, Any]:
    """Train (or resume) one run and return its record: status `done`, `diverged` (a non-finite
    loss stopped it, or it ended above its first loss) or `failed` (any other error)."""
    from parcae.scaling.sweep import plan_point
    from parcae.train.checkpoint import latest_checkpoint
    from parcae.train.loop import train

    config = run_config(spec, workspace)
    run_dir = Path(config.out_dir)
    row: dict[str, Any] = dict(name=spec.name, **spec.labels)
    started = time.perf_counter()
    nonfinite_at = None
    try:
        if latest_checkpoint(run_dir) is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            config = TrainConfig.from_dict({**config.to_dict(), "resume": True})
        try:
            result = train(config)
            if result.interrupted_by is not None:
                raise KeyboardInterrupt(f"{run_dir} stopped by signal {result.interrupted_by}")
        except TrainingError as error:
            if "loss is" not in str(error):
                raise
            nonfinite_at = -1  # the step is filled in from the metrics below
        from parcae.train.data import data_vocab_size

        plan = plan_point(config, data_vocab_size(config, prepare=False))
        record = run_record(run_dir, nonfinite_at)
        if nonfinite_at is not None:
            record["nonfinite_at"] = record["steps_done"] + 1
        row.update(params=plan["params"], flops_per_token=plan["flops_per_token"], **record)
        row["status"] = "diverged" if record["diverged"] else "done"
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        row.update(status="failed", error=f"{type(error).__name__}: {' '.join(str(error).split())}")
    row["wall_seconds"] = round(time.perf_counter() - started, 3)
    return row


def write_reference(spec: RunSpec, workspace: Workspace) -> None:
    """RESULTS/reference.json: the unigram loss of the runs' training split (once)."""

    from parcae.eval.loss import unigram_loss
    from parcae.train.data import resolve_data_dir

    path = workspace.results / REFERENCE
    if path.is_file():
        return
    data_dir = resolve_data_dir(run_config(spec, workspace), prepare=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"unigram_loss": unigram_loss(data_dir)})


def run_specs(study: str, specs: list[RunSpec], workspace: Workspace) -> dict[str, dict]:
    """Train every spec not yet finished, recording each; returns the table by run name."""
    path = workspace.table(study)
    if specs:
        write_reference(specs[0], workspace)
    rows = read_table(path)
    todo = [s for s in specs if rows.get(s.name, {}).get("status") not in FINISHED]
    workspace.say(f"{study}: {len(specs)} runs, {len(specs) - len(todo)} done, {len(todo)} to run")
    for count, spec in enumerate(todo, 1):
        row = train_run(spec, workspace)
        rows[spec.name] = row
        write_table(path, list(rows.values()))
        outcome = row.get("error") or _outcome(row)
        workspace.say(
            f"{study}: [{count}/{len(todo)}] {spec.name}: {row['status']}, {outcome} "
            f"({row['wall_seconds']:.0f} s)"
        )
    return rows


def _outcome(row: dict[str, Any]) -> str:
    if row.get("nonfinite_at"):
        return f"non-finite loss at step {row['nonfinite_at']}"
    val = row.get("val_loss") or {}
    deepest = max(val, key=lambda k: int(k) if k.isdigit() else 0) if val else None
    text = f"train loss {row['final_train_loss']:.3f}, {row['spikes']} spikes"
    if deepest is not None:
        text += f", val loss {val[deepest]:.4f} at T={deepest}"
    return text


def trace_loops(study: str, workspace: Workspace) -> None:
    """Add `loop_trace` (‖h_t‖ for t = 0..2·μ_rec, `diagnostics.loop_trace`) to each finished
    looped run of `study` that has a saved model and no trace yet."""
    from parcae.eval.dynamics import loop_trace

    path = workspace.table(study)
    rows = read_table(path)
    for name, row in rows.items():
        model_dir = workspace.runs / study / name / "model"
        if row.get("mean_recurrence") is None or "loop_trace" in row or not model_dir.is_dir():
            continue
        row["loop_trace"] = loop_trace(model_dir, 2 * row["mean_recurrence"])
        write_table(path, list(rows.values()))


def depth_evals(study: str, workspace: Workspace) -> None:
    """Add `depth_eval` to each finished looped run of `study` that has a saved model and none:
    {"val_loss", "val_bpb"} at T = 1, 2 and μ_rec, in fp32, on the batches of the run's final
    evaluation (which measured T = μ_rec only), so that looping's gain is read within a run.
    `parcae eval` measures them (its results file is RUNS/<study>/<name>/depth-eval.json)."""
    from parcae.eval.run import EvalRequest, run_eval
    from parcae.train.config import load_config

    path = workspace.table(study)
    rows = read_table(path)
    for name, row in rows.items():
        run_dir = workspace.runs / study / name
        mu = row.get("mean_recurrence")
        if mu is None or "depth_eval" in row or not (run_dir / "model").is_dir():
            continue
        config = load_config(run_dir / "config.yaml")
        request = EvalRequest(
            model=str(run_dir / "model"),
            tasks="bpb",
            depths=sorted({1, 2, mu}),
            out=str(run_dir / "depth-eval.json"),
            batch_size=config.eval_batch_size,
            bpb_batches=config.final_eval_batches,
            seq_len=config.seq_len,
            progress=False,
        )
        results = run_eval(request)
        row["depth_eval"] = {"val_loss": results["loss"], "val_bpb": results["bpb"]}
        write_table(path, list(rows.values()))


def best_learning_rates(workspace: Workspace) -> dict[str, float]:
    """Each model's S1 learning rate with the lowest seed-0 validation loss (`Stability.best_lr`,
    among runs that did not diverge); refuses when S1 has no such run for parcae or gpt."""
    from experiments.analysis import stability

    sweep = stability(workspace.results)
    best = {model: sweep.best_lr(model) for model in sweep.models()}
    missing = [m for m in ("parcae", "gpt") if best.get(m) is None]
    if missing:
        raise DataError(
            f"S2 and S3 train at S1's best learning rates, and S1 has none for "
            f"{', '.join(missing)} in {workspace.table('S1')}: run `python -m experiments.run "
            "--study S1` first"
        )
    return best


def run_s3_evals(workspace: Workspace) -> None:
    """`parcae eval` of S2's parcae runs of S3_STEPS (μ_rec = 4) and S3's μ_rec = 8 run: bpb at
    every T = 1..3·μ_rec into RESULTS/S3/<name>.json, and for seed 0 the BIG-bench tasks at
    `studies.task_depths(μ_rec)` into <name>-bigbench.json; a complete file is not redone."""
    steps = 6 if workspace.quick else studies.S3_STEPS
    targets = [
        (study, row)
        for study in ("S2", "S3")
        for row in read_table(workspace.table(study)).values()
        if row["model"] == "parcae" and row["steps"] == steps and row["status"] == "done"
    ]
    for study, row in targets:
        mu, model = row["mean_recurrence"], workspace.runs / study / row["name"] / "model"
        evaluate_into(workspace, model, f"{row['name']}.json", "bpb", range(1, 3 * mu + 1))
        if row["seed"] == 0 and not workspace.quick:
            depths = studies.task_depths(mu)
            evaluate_into(workspace, model, f"{row['name']}-bigbench.json", "bigbench", depths)


def evaluate_into(workspace: Workspace, model: Path, name: str, tasks: str, depths) -> None:
    """Run `parcae eval` into RESULTS/S3/`name` (its wall time added), unless complete."""
    import json

    from parcae.eval.run import EvalRequest, run_eval

    out = workspace.results / "S3" / name
    if out.is_file() and json.loads(out.read_text()).get("complete"):
        return
    started = time.perf_counter()
    request = EvalRequest(
        model=str(model),
        tasks=tasks,
        depths=list(depths),
        out=str(out),
        max_per_task=studies.S3_MAX_PER_TASK,
        bpb_batches=2 if workspace.quick else None,
        progress=False,
    )
    results = run_eval(request)
    results["wall_seconds"] = round(time.perf_counter() - started, 3)
    write_json_atomic(out, results)
    workspace.say(f"S3: {name}: {tasks} at T={list(depths)} in {results['wall_seconds']:.0f} s")


def run_s4(workspace: Workspace) -> None:
    """The isoFLOP sweep (`studies.ISOFLOP_SWEEP`), its table copied to RESULTS/S4. Like the
    other studies it starts from the stored table: points done there are not trained again."""
    from parcae.scaling.sweep import RESULTS, load_sweep, run_sweep

    if not Path(studies.ISOFLOP_SWEEP).is_file():
        raise ConfigError(
            f"S4 runs the sweep {studies.ISOFLOP_SWEEP}, a path in the parcae repository: "
            "run `python -m experiments.run` from the repository's root"
        )
    sweep = load_sweep(studies.ISOFLOP_SWEEP)
    sweep.out_dir = workspace.runs / "S4"
    sweep.base = TrainConfig.from_dict(merge_overrides(sweep.base.to_dict(), workspace.overrides))
    if workspace.quick:
        quick_grid = {"flops_budget": quick_budgets(sweep.base), "mean_recurrence": [1, 2, 4]}
        sweep.grid = {**sweep.grid, **quick_grid, "seed": [0]}
    stored = workspace.results / "S4" / RESULTS
    if stored.is_file() and not (sweep.out_dir / RESULTS).is_file():
        sweep.out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stored, sweep.out_dir / RESULTS)
    report = run_sweep(sweep, say=workspace.say)
    stored.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sweep.out_dir / RESULTS, stored)
    if report.failed:
        workspace.say(f"S4: {report.failed} sweep points failed; see {stored}")


def quick_budgets(config: TrainConfig) -> list[float]:
    """Budgets of about 3, 6 and 12 steps at μ_rec = 1 (a smoke test of the sweep)."""
    from parcae.scaling.sweep import plan_point
    from parcae.train.data import data_vocab_size

    shallow = merge_overrides(config.to_dict(), {"model_overrides": {"mean_recurrence": 1}})
    plan = plan_point(TrainConfig.from_dict(shallow), data_vocab_size(config))
    step = plan["flops_per_token"] * config.batch_size * config.seq_len
    return [3 * step, 6 * step, 12 * step]


def run_study(study: str, workspace: Workspace) -> float:
    """Run one study (S1..S4); returns the seconds it took this time."""
    if study not in studies.STUDIES:
        raise ConfigError(f"unknown study {study!r}; choose one of {', '.join(studies.STUDIES)}")
    started = time.perf_counter()
    if study == "S1":
        run_specs("S1", studies.s1_runs(workspace.quick), workspace)
        trace_loops("S1", workspace)
    elif study == "S2":
        run_specs("S2", studies.s2_runs(best_learning_rates(workspace), workspace.quick), workspace)
        depth_evals("S2", workspace)
    elif study == "S3":
        run_specs("S3", studies.s3_runs(best_learning_rates(workspace), workspace.quick), workspace)
        run_s3_evals(workspace)
    else:
        run_s4(workspace)
    return time.perf_counter() - started


RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring); bad input is one line on stderr, exit 2."""
    import sys

    from parcae.cli import OneLineParser

    parser = OneLineParser(
        prog="python -m experiments.run",
        description="Run S1 (stability), S2 (quality), S3 (test-time law) and S4 (isoFLOP), or "
        "the ones named; S2 and S3 need S1's results. Each run's record goes to "
        "RESULTS/<study>.jsonl as soon as it finishes; finished runs are skipped.",
    )
    parser.add_argument(
        "--study",
        choices=studies.STUDIES,
        action="append",
        help="a study to run (repeatable; default: all four in order)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test of the plumbing: a few steps, fewer runs"
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=None,
        help="where the runs (models, checkpoints) go (default runs/reproduce, with --quick "
        "runs/reproduce-quick)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"the results tables (default {RESULTS}; with --quick RUNS/results, so that a smoke "
        "test never mixes with the stored results)",
    )
    args = parser.parse_args(argv)
    runs = args.runs or Path("runs/reproduce-quick" if args.quick else "runs/reproduce")
    results = args.results or (runs / "results" if args.quick else RESULTS)
    try:
        from parcae.outputs import check_not_file

        runs, results = check_not_file(runs, "--runs"), check_not_file(results, "--results")
        workspace = Workspace(runs, results, quick=args.quick)
        for study in args.study or list(studies.STUDIES):
            seconds = run_study(study, workspace)
            print(f"{study}: finished in {seconds / 60:.1f} min")
    except ParcaeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
