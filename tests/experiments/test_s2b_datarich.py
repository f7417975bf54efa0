"""experiments/s2b_datarich.py in its quick mode on the Shakespeare fixture: the three runs'
records, the gap summary and the figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import SHAKESPEARE_DIR

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "s2b_datarich.py"


def test_quick_mode_writes_records_gaps_and_figure(tmp_path):
    results = tmp_path / "results"
    command = [
        sys.executable, str(SCRIPT), "--quick", "--seeds", "0", "--data", str(SHAKESPEARE_DIR),
        "--results", str(results), "--runs", str(tmp_path / "runs"),
    ]  # fmt: skip
    env = {**os.environ, "PARCAE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    records = {p.stem: json.loads(p.read_text()) for p in results.glob("*-s0.json")}
    assert set(records) == {"parcae-s0", "gpt-tokens-s0", "gpt-flops-s0"}
    parcae, flops = records["parcae-s0"], records["gpt-flops-s0"]
    assert parcae["curve"][-1]["tokens"] == parcae["budget"]["tokens"]
    # the FLOP-matched GPT spends the Parcae's FLOPs (to one step) on more tokens
    assert flops["curve"][-1]["tokens"] > parcae["curve"][-1]["tokens"]
    assert flops["curve"][-1]["flops"] <= parcae["budget"]["flops"]
    summary = json.loads((results / "_summary.json").read_text())
    assert summary["seeds"] == [0] and summary["points"]
    assert all("equal_tokens" in point for point in summary["points"])
    assert (results / "s2b.png").stat().st_size > 0
