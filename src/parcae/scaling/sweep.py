"""isoFLOP sweeps: for each FLOP budget C and mean recurrence μ_rec, train a model of fixed size on
D = C / F_train(μ_rec) tokens and record its validation loss at depth T = μ_rec.

A sweep file (YAML):

    base: ../parcae-tiny-shakespeare.yaml   # a training config, relative to this file (optional)
    overrides: {seq_len: 128, model_overrides: {d_model: 96}}   # TrainConfig keys, every point
    grid:
      flops_budget: [1e13, 3e13]
      mean_recurrence: [1, 2, 4, 8]
      seed: [0]                        # optional, default [0]
      mean_backprop_depth: [2]         # optional
    out_dir: runs/isoflop-tiny         # like a training out_dir; default: SWEEP.yaml less .yaml

A point is (flops_budget, mean_recurrence, mean_backprop_depth, seed); its run lives in
`out_dir/runs/C=<C>_mu=<μ>_seed=<s>` (with `_k=<k>` before the seed when the grid sets
mean_backprop_depth). Its training config is base + overrides, then: `max_flops=C` and no other
budget (max_steps, max_tokens, tokens_per_param are cleared), `model_overrides.mean_recurrence=μ`,
`model_overrides.mean_backprop_depth=k`, `eval_depths=[μ]`, `seed=s`, `out_dir` its run dir,
no progress bar and no sample. k is the grid's value, else ⌈μ/2⌉ (`default_backprop_depth`,
ARCHITECTURE §6.2); the sampler's mean depth is max(μ, k), so a k above μ would train deeper
than μ (grid combinations with k > μ are left out). The run trains `total_steps` =
C // (F_train · batch_size · seq_len) steps, so D = steps · batch_size · seq_len.

Each finished point appends one row to `out_dir/results.csv` (COLUMNS); only this process writes
it, workers return their rows. Re-running a sweep skips `done` points, resumes a point whose run
dir holds a checkpoint, and retries failed ones; the table is first rewritten with one row per
point (the newest), and at the end rewritten in point order. Points run largest budget first,
then deepest μ first (the costliest first, so that a pool ends evenly).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from parcae.errors import ConfigError
from parcae.model.config import MAX_NUM_STEPS
from parcae.outputs import write_text_atomic
from parcae.train.config import TrainConfig, load_config, merge_overrides, read_yaml

COLUMNS = (
    "flops_budget",
    "mean_recurrence",
    "mean_backprop_depth",
    "seed",
    "params",
    "flops_per_token",
    "tokens",
    "steps",
    "flops",
    "val_loss",
    "val_bpb",
    "wall_seconds",
    "status",
    "error",
    "run_dir",
)
SWEEP_KEYS = ("base", "overrides", "grid", "out_dir")
GRID_KEYS = ("flops_budget", "mean_recurrence", "seed", "mean_backprop_depth")
RESULTS = "results.csv"


# Bounds of a sweep file, checked before anything is planned or written (README, Guarantees)
MAX_GRID_POINTS = 10_000
MAX_SWEEP_FLOPS = 1e24  # a sweep trains every point here; larger budgets are for `plan`
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Point:
    """One training run of the sweep."""

    flops_budget: float
    mean_recurrence: int
    mean_backprop_depth: int
    seed: int

    @property
    def key(self) -> tuple[float, int, int, int]:
        return (self.flops_budget, self.mean_recurrence, self.mean_backprop_depth, self.seed)


@dataclass
class Sweep:
    """A parsed sweep file: the base training config (with the overrides) and the grid."""

    path: Path
    base: TrainConfig
    grid: dict[str, list]
    out_dir: Path

    def points(self) -> list[Point]:
        """Every point of the grid, largest budget first, then deepest μ first."""
        given_k = self.grid.get("mean_backprop_depth")
        check_looped(self.base)
        points = []
        for budget, mu, seed in itertools.product(
            self.grid["flops_budget"], self.grid["mean_recurrence"], self.grid["seed"]
        ):
            for k in given_k or [default_backprop_depth(mu)]:
                if k <= mu:
                    points.append(Point(budget, mu, k, seed))
        return sorted(points, key=lambda p: (-p.flops_budget, -p.mean_recurrence, *p.key[2:]))

    def run_dir(self, point: Point) -> Path:
        k = f"_k={point.mean_backprop_depth}" if "mean_backprop_depth" in self.grid else ""
        name = f"C={point.flops_budget:g}_mu={point.mean_recurrence}{k}_seed={point.seed}"
        return self.out_dir / "runs" / name

    def point_config(self, point: Point, data_dir: Path | None = None) -> TrainConfig:
        """The training config of `point` (see the module docstring), reading its data from
        `data_dir` when given (the directory the sweep prepared)."""
        data = self.base.to_dict()
        if data_dir is not None:
            data["data_dir"] = str(data_dir)
        data.update(
            max_steps=None,
            max_tokens=None,
            tokens_per_param=None,
            max_flops=point.flops_budget,
            model_overrides={
                **self.base.model_overrides,
                "mean_recurrence": point.mean_recurrence,
                "mean_backprop_depth": point.mean_backprop_depth,
            },
            eval_depths=[point.mean_recurrence],
            seed=point.seed,
            out_dir=str(self.run_dir(point)),
            resume=False,
            progress=False,
            sample_tokens=0,
        )
        return TrainConfig.from_dict(data)


def default_backprop_depth(mean_recurrence: int) -> int:
    """μ_bwd = ⌈μ_rec / 2⌉, the isoFLOP protocol's backprop depth (ARCHITECTURE §6.2)."""
    return max(1, math.ceil(mean_recurrence / 2))


def check_looped(config: TrainConfig) -> None:
    """Refuse a base config whose model has no loop to sweep."""
    from parcae.model import preset_config

    if not preset_config(config.model).is_looped:
        raise ConfigError(f"a sweep needs a looped model; {config.model!r} is not one")


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; unknown keys and bad grid values raise ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no sweep file at {path}")
    try:
        data = read_yaml(path.read_bytes()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    for key in data:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"{path}: unknown sweep key {key!r}; valid: {', '.join(SWEEP_KEYS)}")
    base = load_config(path.parent / data["base"]) if data.get("base") else TrainConfig()
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: 'overrides' must be a mapping of training config keys")
    base = TrainConfig.from_dict(merge_overrides(base.to_dict(), overrides))
    grid = _read_grid(path, data.get("grid"))
    out_dir = Path(data["out_dir"]) if data.get("out_dir") else path.with_suffix("")
    sweep = Sweep(path, base, grid, out_dir)
    if not sweep.points():
        raise ConfigError(f"{path}: no grid point has mean_backprop_depth <= mean_recurrence")
    return sweep


def _read_grid(path: Path, grid: Any) -> dict[str, list]:
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: 'grid' must map {', '.join(GRID_KEYS)} to lists")
    for key in grid:
        if key not in GRID_KEYS:
            raise ConfigError(f"{path}: unknown grid key {key!r}; valid: {', '.join(GRID_KEYS)}")
    grid = {"seed": [0], **grid}
    for key in ("flops_budget", "mean_recurrence"):
        if key not in grid:
            raise ConfigError(f"{path}: the grid needs {key!r}")
    result = {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid '{key}' must be a non-empty list, got {values!r}")
        result[key] = [_grid_value(path, key, value) for value in values]
    size = math.prod(len(values) for values in result.values())
    if size > MAX_GRID_POINTS:
        raise ConfigError(
            f"{path}: the grid has {size} points, over the limit of {MAX_GRID_POINTS}"
        )
    return result


def _grid_value(path: Path, key: str, value: Any) -> float | int:
    """A budget as a positive float (YAML reads `1e13` as a string), others as integers."""
    if key == "flops_budget":
        try:
            number = math.nan if isinstance(value, bool) else float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not 0 < number <= MAX_SWEEP_FLOPS:
            raise ConfigError(
                f"{path}: grid flops_budget {value!r} is not a number in (0, {MAX_SWEEP_FLOPS:g}]"
            )
        return number
    smallest, largest = (0, MAX_SEED) if key == "seed" else (1, MAX_NUM_STEPS)
    if not isinstance(value, int) or isinstance(value, bool) or not smallest <= value <= largest:
        raise ConfigError(
            f"{path}: grid {key} {value!r} must be an integer in [{smallest}, {largest}]"
        )
    return value


def plan_point(config: TrainConfig, vocab_size: int) -> dict[str, float | int]:
    """What training `config` will do, without training: params, flops_per_token, steps, tokens
    (steps as `total_steps` computes them from the budget)."""
    from parcae.model import create_model
    from parcae.model.flops import training_flops_per_token
    from parcae.train.model import build_model_config
    from parcae.train.schedule import total_steps

    model_config = build_model_config(config, vocab_size)
    params = create_model(model_config, device="meta").num_params()
    flops_per_token = training_flops_per_token(model_config, config.seq_len)
    steps = total_steps(config, params, flops_per_token)
    return dict(
        params=params,
        flops_per_token=flops_per_token,
        steps=steps,
        tokens=steps * config.batch_size * config.seq_len,
    )


def run_point(point: Point, config: TrainConfig, vocab_size: int) -> dict[str, Any]:
    """Train (or resume) one point and return its results row; an exception becomes a `failed`
    row, a signal that stops training (which checkpoints) raises KeyboardInterrupt. A run dir
    without a checkpoint is cleared first, so a failed start leaves no records."""
    from parcae.train.checkpoint import latest_checkpoint
    from parcae.train.loop import train

    run_dir = Path(config.out_dir)
    row: dict[str, Any] = dict(zip(COLUMNS, [""] * len(COLUMNS)))
    row.update(
        flops_budget=point.flops_budget,
        mean_recurrence=point.mean_recurrence,
        mean_backprop_depth=point.mean_backprop_depth,
        seed=point.seed,
        run_dir=str(run_dir),
    )
    started = time.perf_counter()
    try:
        if latest_checkpoint(run_dir) is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            config = TrainConfig.from_dict({**config.to_dict(), "resume": True})
        result = train(config)
        plan = plan_point(config, vocab_size)
        if result.interrupted_by is not None:  # Ctrl-C: stop the sweep, the point resumes
            raise KeyboardInterrupt(f"{run_dir} stopped by signal {result.interrupted_by}")
        final = next(r for r in result.final_eval if r.depth == point.mean_recurrence)
        row.update(
            params=plan["params"],
            flops_per_token=plan["flops_per_token"],
            tokens=result.tokens,
            steps=result.steps,
            flops=result.tokens * plan["flops_per_token"],
            val_loss=final.loss,
            val_bpb=final.bpb,
            status="done",
        )
    except Exception as error:  # a failed point is recorded; the sweep goes on
        message = " ".join(str(error).split())
        row.update(status="failed", error=f"{type(error).__name__}: {message}")
    row["wall_seconds"] = round(time.perf_counter() - started, 3)
    return row


def row_key(row: dict[str, Any]) -> tuple[float, int, int, int]:
    """A results row's point identity (as `Point.key`)."""
    return (
        float(row["flops_budget"]),
        int(row["mean_recurrence"]),
        int(row["mean_backprop_depth"]),
        int(row["seed"]),
    )


def read_results(path: Path) -> dict[tuple, dict[str, str]]:
    """The rows of a results table by point, the newest row of each point."""
    if not path.is_file():
        return {}
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ConfigError(f"{path}: not a sweep results table (columns {reader.fieldnames})")
        return {row_key(row): row for row in reader}


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the table at `path` with `rows` (written aside, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def append_result(path: Path, row: dict[str, Any]) -> None:
    """Append one row (one write of one line, flushed)."""
    with path.open("a", newline="") as file:
        csv.DictWriter(file, COLUMNS).writerow(row)


@dataclass
class SweepReport:
    rows: list[dict[str, Any]]  # the final table, in point order
    trained: int
    failed: int
    skipped: int
    seconds: float


def format_duration(seconds: float) -> str:
    """`1 h 02 min`, `3 min 05 s` or `42 s`."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def run_sweep(
    sweep: Sweep, workers: int = 1, launcher: str = "local", say: Callable[[str], None] = print
) -> SweepReport:
    """Run every point of `sweep` not yet done, `workers` at a time, and write the table."""
    from parcae.data.tokenizer import Tokenizer
    from parcae.scaling.launchers import LAUNCHERS
    from parcae.train.data import resolve_data_dir

    if launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    started = time.perf_counter()
    table = sweep.out_dir / RESULTS
    previous = read_results(table)
    write_results(table, list(previous.values()))
    points = sweep.points()
    todo = [p for p in points if previous.get(p.key, {}).get("status") != "done"]
    say(
        f"sweep: {len(points)} points, {len(points) - len(todo)} done, {len(todo)} to run "
        f"with {workers} {launcher} worker(s) -> {table}"
    )
    data_dir = resolve_data_dir(sweep.base, prepare=True)  # once, before any worker
    vocab_size = Tokenizer.load(data_dir).vocab_size
    tasks = [(point, sweep.point_config(point, data_dir), vocab_size) for point in todo]
    results = dict(previous)
    failed = 0
    budget_left = sum(point.flops_budget for point in todo)
    budget_done = 0.0
    for count, row in enumerate(LAUNCHERS[launcher](run_point, tasks, workers), 1):
        append_result(table, row)
        results[row_key(row)] = row
        failed += row["status"] != "done"
        outcome = (
            f"{row['tokens']:,} tokens, val loss {row['val_loss']:.4f} (bpb {row['val_bpb']:.4f})"
            if row["status"] == "done"
            else f"FAILED: {row['error']}"
        )
        budget_done += row["flops_budget"]
        eta = (time.perf_counter() - started) * (budget_left - budget_done) / budget_done
        say(
            f"sweep: [{count}/{len(tasks)}] C={row['flops_budget']:g} "
            f"μ={row['mean_recurrence']}: {outcome} in {row['wall_seconds']:.1f} s; "
            f"ETA {format_duration(eta)} (time per FLOP so far)"
        )
    ordered = [results.pop(p.key) for p in points if p.key in results]
    rows = ordered + list(results.values())  # rows of points no longer in the grid stay
    write_results(table, rows)
    seconds = time.perf_counter() - started
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    say(
        f"sweep: {len(tasks) - failed} trained, {failed} failed, {len(points) - len(tasks)} "
        f"skipped in {seconds:.1f} s; peak memory {peak / 1024:.0f} MB (largest process); "
        f"results in {table}"
    )
    return SweepReport(rows, len(tasks) - failed, failed, len(points) - len(tasks), seconds)
