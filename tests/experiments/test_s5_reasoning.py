"""experiments/s5_reasoning.py in its quick mode: every run's record, the summary and the
figure, and a second invocation that skips the finished runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from parcae.data.synth import parse_spec

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "s5_reasoning.py"


def test_quick_mode_writes_records_summary_and_figure_and_resumes(tmp_path):
    results, runs = tmp_path / "results", tmp_path / "runs"
    command = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--seeds",
        "0",
        "--results",
        str(results),
        "--runs",
        str(runs),
    ]
    env = {**os.environ, "PARCAE_CACHE": str(tmp_path / "cache")}
    first = subprocess.run(command, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    names = {"gpt-same-layers-s0", "parcae-mu2-s0", "gpt-flops-mu2-s0"}
    assert {p.stem for p in results.glob("*-s0.json")} == names
    record = json.loads((results / "parcae-mu2-s0.json").read_text())
    difficulties = parse_spec(record["eval_task"]).difficulties
    assert len(difficulties) > 1
    assert set(record["accuracy"]) == {str(d) for d in difficulties}
    assert set(record["accuracy"]["1"]) == {"1", "2", "3", "4"}  # T = 1 .. 2 mu_rec
    gpt = json.loads((results / "gpt-same-layers-s0.json").read_text())
    assert set(gpt["accuracy"]["1"]) == {"fixed"}
    summary = json.loads((results / "_summary.json").read_text())
    assert set(summary) == {"gpt-same-layers", "parcae-mu2", "gpt-flops-mu2"}
    assert (results / "s5.png").stat().st_size > 0
    second = subprocess.run(command, capture_output=True, text=True, env=env)
    assert second.returncode == 0 and second.stdout.count("record exists, skipped") == 3
