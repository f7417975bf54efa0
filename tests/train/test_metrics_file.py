"""metrics.jsonl after a crash mid-write: a torn last line is dropped with a warning (resume and
`parcae plot` go on); a corrupt line elsewhere is refused in one line."""

from __future__ import annotations

import json

import pytest

from parcae.cli import main
from parcae.errors import DataError
from parcae.train.loop import train
from parcae.train.metrics import METRICS_FILE, read_metrics, truncate_metrics
from tests.train.conftest import tiny_config


def _write(run_dir, lines: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / METRICS_FILE).write_text("".join(line + "\n" for line in lines))


RECORDS = [json.dumps({"kind": "train", "step": s, "loss": 5.0 - s}) for s in (1, 2, 3)]


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, capsys):
    _write(tmp_path, RECORDS + ['{"kind": "train", "st'])
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert "dropped a torn last line" in capsys.readouterr().err
    truncate_metrics(tmp_path, last_step=2)
    assert (tmp_path / METRICS_FILE).read_text().splitlines() == RECORDS[:2]


def test_a_corrupt_line_before_the_last_is_refused_naming_it(tmp_path):
    _write(tmp_path, RECORDS[:1] + ["not json"] + RECORDS[1:])
    with pytest.raises(DataError, match=rf"{METRICS_FILE}:2: not a JSON record"):
        read_metrics(tmp_path)


def test_resume_and_plot_go_on_after_a_torn_last_line(data_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(data_dir, out, max_steps=4))
    with (out / METRICS_FILE).open("a") as file:
        file.write('{"kind": "train", "step": 5, "lo')
    train(tiny_config(data_dir, out, max_steps=6, resume=True))
    steps = [r["step"] for r in read_metrics(out) if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert main(["plot", str(out), "--out", str(tmp_path / "plots")]) == 0
