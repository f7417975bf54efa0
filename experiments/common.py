"""What the study scripts share: resumable per-run records, one training run, seeds' statistics.

A study is a list of runs; each run's record is a JSON file `<results>/<run name>.json`, written
atomically as soon as the run finishes, and a run whose record exists is skipped, so a study
that stops is resumed by running it again. Runs train into `runs/<study>/<run name>` (not kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from parcae.train.config import TrainConfig
from parcae.train.loop import train
from parcae.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

# the official optimizer recipe: Muon 8e-3 + AdamW 8e-3, cautious weight decay 0.2, no warmup
OFFICIAL_OPTIMIZER: dict[str, Any] = dict(
    optimizer="muon", lr=0.008, adam_lr=0.008, weight_decay=0.2, warmup_steps=0
)


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically (a staging file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(staging, path)


def read_records(directory: Path) -> list[dict]:
    """Every run record in `directory` (summary files, named `_*.json`, left out)."""
    return [
        json.loads(path.read_text())
        for path in sorted(directory.glob("*.json"))
        if not path.name.startswith("_")
    ]


def run_all(
    runs: Iterable[tuple[str, Callable[[], dict]]], directory: Path, log: Callable = print
) -> None:
    """Run each (name, run) whose record `directory/<name>.json` is missing, writing its
    record when it finishes."""
    runs = list(runs)
    for index, (name, run) in enumerate(runs, start=1):
        path = directory / f"{name}.json"
        if path.is_file():
            log(f"[{index}/{len(runs)}] {name}: record exists, skipped")
            continue
        log(f"[{index}/{len(runs)}] {name}: running")
        start = time.perf_counter()
        record = run()
        record.update(name=name, seconds=time.perf_counter() - start)
        write_json(path, record)
        log(f"[{index}/{len(runs)}] {name}: done in {record['seconds']:.0f} s -> {path}")


def train_run(fields: dict[str, Any]) -> tuple[Path, list[dict]]:
    """Train the run described by TrainConfig `fields` (an unfinished earlier attempt is
    resumed, a finished one reused); its out_dir and its eval records."""
    out_dir = Path(fields["out_dir"])
    if not (out_dir / "model" / "tokenizer.json").is_file():  # exported last: finished
        train(TrainConfig(**{**fields, "resume": out_dir.exists()}))
    evals = [r for r in read_metrics(Path(fields["out_dir"])) if r["kind"] == "eval"]
    return Path(fields["out_dir"]), evals


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) of the seeds' values (error 0 for one value)."""
    if len(values) < 2:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def study_arguments(description: str) -> argparse.ArgumentParser:
    """The options every study takes: --quick, --seeds, --results, --runs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long smoke test of the plumbing"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--results", type=Path, default=None, help="records directory")
    parser.add_argument("--runs", type=Path, default=None, help="training directories")
    return parser


def seeds_of(text: str) -> list[int]:
    return [int(seed) for seed in text.split(",") if seed.strip()]
