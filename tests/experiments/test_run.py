"""The small-scale reproduction: run records, the studies' runner (quick mode on a tiny model),
the verdict rules and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import parcae
from parcae.cli import main
from parcae.errors import DataError
from parcae.reproduce import analysis, verdicts
from parcae.reproduce.analysis import QualityCell, Stat
from parcae.reproduce.diagnostics import state_norms
from parcae.reproduce.document import Report
from parcae.reproduce.prose import prose
from parcae.reproduce.records import count_spikes, read_table, run_record, status
from parcae.reproduce.run import Workspace, best_learning_rates, run_study
from tests.train.conftest import TINY_MODEL, TINY_RUN, data_dir  # noqa: F401 (a fixture)


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


def test_state_norms_grow_by_rho_through_an_unstable_loop_and_settle_in_a_stable_one():
    torch.manual_seed(0)
    small = dict(TINY_MODEL, vocab_size=64, context_length=16)
    ids = torch.randint(0, 64, (2, 16))
    rdm = parcae.create_model("rdm-tiny", **small).eval()
    with torch.no_grad():  # W_h = 3 I: the state triples every step
        rdm.transformer.adapter.adapter.weight[:, :64].copy_(3 * torch.eye(64))
    norms = state_norms(rdm, ids, depth=8)
    assert len(norms) == 9 and norms[-1] / norms[-2] == pytest.approx(3.0, rel=0.05)
    stable = state_norms(parcae.create_model("parcae-tiny", **small).eval(), ids, depth=8)
    assert stable[-1] / stable[-2] == pytest.approx(1.0, abs=0.1)


def _cell(model: str, mean: float, std: float, flops: float = 1.0, steps: int = 10) -> QualityCell:
    loss = Stat(mean, std, 3)
    return QualityCell(steps, model, 0.01, 100, flops, 10, loss, loss, loss, loss, loss)


def test_quality_gap_is_judged_against_its_standard_error():
    delta, noise = verdicts.gap(_cell("parcae", 4.0, 0.03), _cell("gpt", 4.1, 0.03))
    assert delta == pytest.approx(-0.1) and noise == pytest.approx(math.sqrt(2 * 0.03**2 / 3))
    assert verdicts.outcome(delta, noise) == "Parcae wins"
    assert verdicts.outcome(0.01, noise) == "tie (within 2σ)"
    assert verdicts.outcome(0.2, noise) == "GPT wins"


def test_gpt_loss_at_equal_flops_is_interpolated_in_log_flops():
    data = analysis.Quality(
        [_cell("gpt", 5.0, 0, flops=1e12), _cell("gpt", 4.0, 0, flops=1e14, steps=20)]
    )
    assert data.gpt_loss_at_flops(1e13) == pytest.approx(4.5)
    assert data.gpt_loss_at_flops(1e15) is None


@pytest.fixture(scope="module")
def quick(data_dir, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    """S1, S2 and S3 run in quick mode on a 64-wide model and the tiny corpus."""
    root = tmp_path_factory.mktemp("reproduce")
    overrides = dict(
        TINY_RUN, model_overrides=dict(d_model=64, ffn_dim=128, n_heads=2), data=str(data_dir)
    )
    overrides.pop("lr"), overrides.pop("adam_lr")  # the studies set them
    workspace = Workspace(
        root / "runs", root / "results", quick=True, overrides=overrides, say=lambda _: None
    )
    for study in ("S1", "S2", "S3", "S4"):
        run_study(study, workspace)
    return workspace


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
    assert json.loads((quick.results / "reference.json").read_text())["unigram_loss"] > 0
    best = best_learning_rates(quick)
    s2 = read_table(quick.table("S2"))
    assert {(r["model"], r["lr"]) for r in s2.values()} == {
        ("parcae", best["parcae"]),
        ("gpt", best["gpt"]),
    }
    evaluated = json.loads(next((quick.results / "S3").glob("*mu=8*.json")).read_text())
    assert evaluated["complete"] and sorted(map(int, evaluated["bpb"])) == list(range(1, 25))


def test_a_second_run_skips_finished_runs(quick):
    before = quick.table("S1").read_text()
    said = []
    run_study("S1", Workspace(quick.runs, quick.results, True, quick.overrides, said.append))
    assert quick.table("S1").read_text() == before
    assert said == ["S1: 9 runs, 9 done, 0 to run"]


def test_s2_refuses_to_start_before_s1(tmp_path):
    with pytest.raises(DataError, match="run `parcae reproduce run --study S1` first"):
        best_learning_rates(Workspace(tmp_path / "runs", tmp_path / "results"))


def test_report_writes_the_document_and_figures(quick, tmp_path):
    report = Report(quick.results, tmp_path / "figures", tmp_path / "REPRODUCTION.md")
    drawn = report.draw()
    assert {p.name for p in drawn} >= {"S1-lr.png", "S2-quality.png", "S3-depth-law.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in drawn)
    text = report.write(prose(report)).read_text()
    assert "| claim | paper | ours | verdict |" in text
    assert "S1 the loop" in text and "S2 quality" in text and "S3 test-time law" in text
    assert "](figures/S1-lr.png)" in text
    assert "S4 isoFLOP μ*" in text and "](figures/S4-isoflop-laws.png)" in text
    assert "_No results stored" not in text


def test_quick_isoflop_sweep_is_stored_and_a_rerun_trains_nothing(quick):
    table = quick.results / "S4" / "results.csv"
    rows = table.read_text().splitlines()
    assert len(rows) == 1 + 9 and all(",done," in row for row in rows[1:])  # 3 budgets x 3 μ
    said = []
    run_study("S4", Workspace(quick.runs, quick.results, True, quick.overrides, said.append))
    assert any("9 done, 0 to run" in line for line in said)


def test_run_command_refuses_s2_before_s1(tmp_path, capsys):
    assert main(["reproduce", "run", "--study", "S2", "--results", str(tmp_path)]) == 2
    assert "run `parcae reproduce run --study S1` first" in capsys.readouterr().err


def test_report_command_refuses_an_empty_results_directory(tmp_path, capsys):
    assert main(["reproduce", "report", "--results", str(tmp_path / "none")]) == 2
    assert "no results" in capsys.readouterr().err
