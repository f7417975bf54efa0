"""The studies' runner (experiments/run.py) in quick mode on a tiny model: every run recorded,
a rerun trains nothing, S2 refuses to start before S1, and bad input is one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments import run
from experiments.analysis import Quality, QualityCell, Stat
from experiments.records import read_table
from experiments.run import Workspace, best_learning_rates, run_study
from experiments.tables import gap
from parcae.errors import DataError
from tests.bad_input import refuse


def test_quick_studies_record_every_run(quick):
    s1 = read_table(quick.table("S1"))
    assert len(s1) == 9 and {r["model"] for r in s1.values()} == {"parcae", "rdm", "gpt"}
    for row in s1.values():
        assert row["status"] in ("done", "diverged") and row["steps_done"] == 6
        assert len(row["train_loss"]) == 6 and row["params"] > 0
    rdm = next(r for r in s1.values() if r["model"] == "rdm")
    assert all(x is not None and x > 0 for x in rdm["spectral_radius"])  # ρ(W_h) is tracked
    trace = next(r for r in s1.values() if r["model"] == "parcae")["loop_trace"]
    assert trace["depth"] == 8 and len(trace["state_norm"]) == 9 and trace["spectral_radius"] < 1
    assert "loop_trace" not in next(r for r in s1.values() if r["model"] == "gpt")
    unigram = json.loads((quick.results / "reference.json").read_text())["unigram_loss"]
    assert 0 < unigram < math.log(400)  # below the entropy of uniform tokens (400 of them)
    best = best_learning_rates(quick)
    s2 = read_table(quick.table("S2"))
    assert {(r["model"], r["lr"]) for r in s2.values()} == {
        ("parcae", best["parcae"]),
        ("gpt", best["gpt"]),
    }
    parcae = next(r for r in s2.values() if r["model"] == "parcae")
    assert set(parcae["depth_eval"]["val_loss"]) == {"1", "2", "4"}
    # the final evaluation (bf16 autocast where the CPU has it) and the fp32 one at T = μ_rec
    assert parcae["depth_eval"]["val_loss"]["4"] == pytest.approx(parcae["val_loss"]["4"], abs=0.02)
    evaluated = json.loads(next((quick.results / "S3").glob("*mu=8*.json")).read_text())
    assert evaluated["complete"] and sorted(map(int, evaluated["bpb"])) == list(range(1, 25))


def test_a_second_run_skips_finished_runs(quick):
    before = quick.table("S1").read_text()
    said = []
    run_study("S1", Workspace(quick.runs, quick.results, True, quick.overrides, said.append))
    assert quick.table("S1").read_text() == before
    assert said == ["S1: 9 runs, 9 done, 0 to run"]


def test_quick_isoflop_sweep_is_stored_and_a_rerun_trains_nothing(quick):
    table = quick.results / "S4" / "results.csv"
    rows = table.read_text().splitlines()
    assert len(rows) == 1 + 9 and all(",done," in row for row in rows[1:])  # 3 budgets x 3 μ
    said = []
    run_study("S4", Workspace(quick.runs, quick.results, True, quick.overrides, said.append))
    assert any("9 done, 0 to run" in line for line in said)


def test_s2_refuses_to_start_before_s1(tmp_path):
    with pytest.raises(DataError, match="run `python -m experiments.run --study S1` first"):
        best_learning_rates(Workspace(tmp_path / "runs", tmp_path / "results"))


def _cell(model: str, mean: float, std: float, flops: float = 1.0, steps: int = 10) -> QualityCell:
    loss = Stat(mean, std, 3)
    return QualityCell(steps, model, 0.01, 100, flops, 10, loss, loss, loss, loss, loss)


def test_a_gap_comes_with_the_standard_error_of_two_means():
    delta, error = gap(Stat(4.0, 0.03, 3), Stat(4.1, 0.04, 2))
    assert delta == pytest.approx(-0.1) and error == pytest.approx(
        math.sqrt(0.03**2 / 3 + 0.04**2 / 2)
    )


def test_gpt_loss_at_equal_flops_is_interpolated_in_log_flops():
    data = Quality([_cell("gpt", 5.0, 0, flops=1e12), _cell("gpt", 4.0, 0, flops=1e14, steps=20)])
    assert data.gpt_loss_at_flops(1e13) == pytest.approx(4.5)
    assert data.gpt_loss_at_flops(1e15) is None


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("precious")
    (tmp_path / "empty").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--study", "S9"], "invalid choice"),
        (["--quick", "--study", "S1", "--runs", "{s}/a_file"], "--runs"),
        (["--quick", "--study", "S1", "--runs", "{s}/a_file/runs"], "--runs"),
        (["--quick", "--study", "S1", "--runs", "{s}/r", "--results", "{s}/a_file"], "--results"),
        (["--quick", "--study", "S2", "--runs", "{s}/empty"], "--study S1` first"),
        (["--frobnicate"], "unrecognized"),
    ],
)
def test_run_refuses_bad_input_in_one_line(scratch, capsys, argv, expected):
    argv = [arg.replace("{s}", str(scratch)) for arg in argv]
    protect = [scratch / "a_file", scratch / "empty"]
    assert expected in refuse(argv, capsys, protect=protect, main=run.main)
