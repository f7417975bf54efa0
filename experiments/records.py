"""A training run's record for the reproduction tables: its labels, what it did and measured,
read back from its run directory (`metrics.jsonl`).

Definitions (docs/REPRODUCTION.md, S1):
- a loss spike is a step whose training loss exceeds the lowest loss of the SPIKE_WINDOW steps
  before it by more than SPIKE_RATIO (10%), warmup included (that is where they happen);
- a run diverged when its loss became non-finite (training stops) or when its final training
  loss (the mean of the last FINAL_WINDOW steps) is above its first step's loss;
- a run stalled when it did not diverge but its final training loss stays within STALL_MARGIN
  of the unigram entropy of the training split: it learned token frequencies and nothing else.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from parcae.outputs import json_safe, write_text_atomic
from parcae.train.metrics import read_metrics

SPIKE_WINDOW = 20
SPIKE_RATIO = 1.10
FINAL_WINDOW = 10
STALL_MARGIN = 0.1  # nats
REFERENCE = "reference.json"  # {"unigram_loss": nats}, beside the results tables


def count_spikes(losses: list[float]) -> int:
    """Steps whose loss exceeds min(the previous SPIKE_WINDOW losses) · SPIKE_RATIO."""
    spikes = 0
    for t in range(1, len(losses)):
        floor = min(losses[max(0, t - SPIKE_WINDOW) : t])
        spikes += losses[t] > SPIKE_RATIO * floor
    return spikes


def final_train_loss(losses: list[float]) -> float:
    """The mean training loss of the last FINAL_WINDOW steps (nan with none)."""
    tail = losses[-FINAL_WINDOW:]
    return sum(tail) / len(tail) if tail else math.nan


def status(record: dict[str, Any], unigram: float | None) -> str:
    """done, stalled or diverged (see the module docstring)."""
    if record["diverged"]:
        return "diverged"
    if unigram is not None and record["final_train_loss"] > unigram - STALL_MARGIN:
        return "stalled"
    return "done"


def run_record(run_dir: Path, nonfinite_at: int | None) -> dict[str, Any]:
    """What `run_dir`'s metrics say: the training loss curve, the eval curves (val loss, ρ(Ā),
    state norm at the deepest eval depth) and the final evaluation; `nonfinite_at` is the step
    whose loss was not finite (training stopped there), None when training finished."""
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    losses = [float(r["loss"]) for r in train]
    final = final_train_loss(losses)
    diverged = nonfinite_at is not None or (bool(losses) and final > losses[0])
    record: dict[str, Any] = dict(
        steps_done=train[-1]["step"] if train else 0,
        tokens=train[-1]["tokens"] if train else 0,
        initial_loss=losses[0] if losses else math.nan,
        final_train_loss=final,
        spikes=count_spikes(losses),
        diverged=diverged,
        nonfinite_at=nonfinite_at,
        train_loss=[round(x, 5) for x in losses],
        eval_step=[r["step"] for r in evals],
        eval_loss=[_deepest(r.get("val_loss")) for r in evals],
        spectral_radius=[r.get("spectral_radius") for r in evals],
        state_norm=[r.get("state_norm_final") for r in evals],
    )
    if nonfinite_at is None and evals:
        record.update(val_loss=evals[-1]["val_loss"], val_bpb=evals[-1]["val_bpb"])
    return record


def _deepest(values: dict[str, float] | None) -> float | None:
    """The value at the deepest eval depth ("model" for a fixed-depth model)."""
    if not values:
        return None
    return values[max(values, key=lambda k: int(k) if k.isdigit() else 0)]


def read_table(path: Path) -> dict[str, dict[str, Any]]:
    """A study's results (JSONL, one run per line) by run name."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["name"]: row for row in rows}


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the table at `path` with `rows` (written aside, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(json_safe(row)) + "\n" for row in rows))
