import json
import subprocess
import sys

import pytest

from parcae.errors import DataError
from parcae.train.plot import plot_runs, run_labels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, depths: list[str], spectral_radius: bool) -> None:
    run_dir.mkdir(parents=True)
    records = [
        {"kind": "train", "step": s, "tokens": 100 * s, "loss": 5.0 - 0.1 * s} for s in range(1, 5)
    ]
    for step in (2, 4):
        record = {
            "kind": "eval",
            "step": step,
            "tokens": 100 * step,
            "val_loss": {d: 4.0 - 0.1 * i for i, d in enumerate(depths)},
            "val_bpb": {d: 2.0 - 0.05 * i for i, d in enumerate(depths)},
        }
        if spectral_radius:
            record["spectral_radius"] = 0.9 + 0.01 * step
        records.append(record)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_labels_are_the_shortest_paths_that_tell_runs_apart(tmp_path):
    assert run_labels([tmp_path / "runs/gpt", tmp_path / "runs/parcae"]) == ["gpt", "parcae"]
    assert run_labels([tmp_path / "a/seed0", tmp_path / "b/seed0"]) == ["a/seed0", "b/seed0"]
    assert run_labels([tmp_path / "x/a/run", tmp_path / "y/a/run"]) == ["x/a/run", "y/a/run"]


def test_plots_overlay_runs_of_both_kinds(tmp_path):
    _write_run(tmp_path / "a" / "run", ["1", "2", "4"], spectral_radius=True)
    _write_run(tmp_path / "b" / "run", ["model"], spectral_radius=False)
    written = plot_runs([tmp_path / "a" / "run", tmp_path / "b" / "run"], tmp_path / "plots")
    assert sorted(p.name for p in written) == ["depth.png", "loss.png", "spectral_radius.png"]
    for path in written:
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 5000


def test_a_directory_without_metrics_is_refused_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no metrics.jsonl"):
        plot_runs([tmp_path / "empty"])
    result = subprocess.run(
        [sys.executable, "-m", "parcae", "plot", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "no metrics.jsonl" in result.stderr and "Traceback" not in result.stderr
