"""A run's record read back from its metrics: spikes, divergence, stalling."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.records import count_spikes, run_record, status


def test_spikes_count_rises_above_the_recent_minimum():
    losses = [8.0, 7.0, 6.0, 5.0, 5.6, 5.0, 4.9, 6.0, 4.8]
    # step 4: 5.6 > 1.1 * 5.0 (a spike); step 7: 6.0 > 1.1 * 4.9 (a spike); 5.0 after 5.6 is not
    assert count_spikes(losses) == 2
    assert count_spikes([5.0, 4.0, 3.0, 2.0]) == 0
    assert count_spikes([5.0] * 25 + [5.4] + [9.0]) == 1  # only the last exceeds 5.5


def _metrics(run_dir: Path, losses: list[float]) -> None:
    run_dir.mkdir(parents=True)
    lines = [
        {"kind": "train", "step": i + 1, "loss": x, "tokens": 10 * (i + 1)}
        for i, x in enumerate(losses)
    ]
    lines.append(
        {
            "kind": "eval",
            "step": len(losses),
            "val_loss": {"1": 5.0, "4": 4.5},
            "val_bpb": {"1": 2.2, "4": 2.0},
            "spectral_radius": 0.5,
            "state_norm_final": 12.0,
        }
    )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_a_run_that_ends_above_its_first_loss_diverged(tmp_path):
    _metrics(tmp_path / "up", [6.0] + [7.0] * 12)
    record = run_record(tmp_path / "up", nonfinite_at=None)
    assert record["diverged"] and status(record, unigram=None) == "diverged"
    _metrics(tmp_path / "down", [8.0] + [4.0] * 12)
    record = run_record(tmp_path / "down", nonfinite_at=None)
    assert not record["diverged"] and record["final_train_loss"] == 4.0
    assert record["val_loss"] == {"1": 5.0, "4": 4.5} and record["eval_loss"] == [4.5]
    assert status(record, unigram=6.0) == "done"
    assert status(record, unigram=4.05) == "stalled"  # within 0.1 nats of the unigram loss


def test_a_non_finite_loss_is_a_divergence_without_a_final_evaluation(tmp_path):
    _metrics(tmp_path / "nan", [8.0, 7.0])
    record = run_record(tmp_path / "nan", nonfinite_at=3)
    assert record["diverged"] and "val_loss" not in record
