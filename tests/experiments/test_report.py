"""experiments/report.py: the committed docs/REPRODUCTION.md matches the stored records; a block
that differs is found; the blocks are filled from quick results and from S5 / S2b records; bad
records and documents are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import report
from experiments.report import (
    BLOCK,
    DOCUMENT,
    FIGURES,
    RESULTS,
    Results,
    blocks,
    differences,
    figure_paths,
)
from tests.bad_input import refuse


@pytest.fixture(scope="module")
def results() -> Results:
    return Results(RESULTS)


@pytest.fixture(scope="module")
def stored(results) -> dict[str, str]:
    """The blocks the stored records give."""
    return blocks(results, FIGURES, DOCUMENT)


def test_the_committed_report_matches_the_stored_records(results, stored):
    assert differences(DOCUMENT.read_text(), stored, figure_paths(results, FIGURES)) == []
    # every study with records fills its blocks (S5 and S2b too, since they have run)
    assert all(stored[f"table:{study}"] for study in ("s2", "s5", "s2b"))
    assert stored["figure:s4"] and "s5.png" in stored["figure:s5"]


def test_check_names_a_block_that_differs_and_a_missing_figure(results, stored, tmp_path):
    text = DOCUMENT.read_text()
    changed = text.replace("| 600 | 1.84M | gpt |", "| 600 | 1.84M | gpt (edited) |", 1)
    assert changed != text
    assert differences(changed, stored, figure_paths(results, FIGURES)) == [
        "block table:s2 differs"
    ]
    # a figure folder without the figures
    problems = differences(text, stored, figure_paths(results, tmp_path))
    assert "figure:s2: no " + str(tmp_path / "S2-quality.png") in problems


def test_check_exits_1_on_a_stale_document(tmp_path, capsys):
    document = tmp_path / "REPRODUCTION.md"
    document.write_text(DOCUMENT.read_text().replace("| S1 | ", "| S1 (edited) | ", 1))
    assert report.main(["--check", "--document", str(document)]) == 1
    assert "block table:compute differs" in capsys.readouterr().err


def _template(path: Path) -> Path:
    """A document holding every block, empty, between hand-written lines."""
    names = [m["name"] for m in BLOCK.finditer(DOCUMENT.read_text())]
    path.write_text(
        "# hand-written\n\n"
        + "".join(f"<!-- BEGIN {n} -->\n<!-- END {n} -->\n\nprose\n\n" for n in names)
    )
    return path


def test_blocks_are_filled_from_quick_results_and_the_figures_drawn(quick, tmp_path):
    document, figures = _template(tmp_path / "doc.md"), tmp_path / "figures"
    argv = ["--results", str(quick.results), "--document", str(document)]
    assert report.main([*argv, "--figures", str(figures)]) == 0
    text = document.read_text()
    assert text.startswith("# hand-written\n") and text.count("prose") == len(BLOCK.findall(text))
    assert (
        "| 6 | " in text
        and "](figures/S1-lr.png)" in text
        and "](figures/S4-isoflop-laws.png)" in text
    )
    drawn = sorted(p.name for p in figures.iterdir())
    assert drawn == sorted(
        f
        for n in ("figure:s1", "figure:s2", "figure:s3", "figure:s4")
        for f in report.FIGURE_FILES[n]
    )
    assert all((figures / f).read_bytes()[:4] == b"\x89PNG" for f in drawn)
    assert report.main([*argv, "--figures", str(figures), "--check"]) == 0


S5_SUMMARY = {
    "parcae-mu2": {
        "seeds": [0, 1],
        "params": 1000,
        "mean_recurrence": 2,
        "accuracy": {
            "2": {"1": [0.5, 0.1], "2": [0.9, 0.05], "3": [0.95, 0.01], "4": [0.9, 0.02]},
            "8": {"1": [0.1, 0.1], "2": [0.3, 0.05], "3": [0.4, 0.01], "4": [0.45, 0.02]},
        },
        "mean_accuracy": {
            "1": [0.3, 0.1],
            "2": [0.6, 0.05],
            "3": [0.675, 0.01],
            "4": [0.675, 0.02],
        },
        "depth_law": {"l_inf": 0.7, "Z": 1.2, "z": 1.1, "r2": 0.99, "t95": 3.1, "saturated": False},
    },
    "gpt-same-layers": {
        "seeds": [0, 1],
        "params": 1000,
        "mean_recurrence": None,
        "accuracy": {"2": {"fixed": [0.6, 0.0]}, "8": {"fixed": [0.2, 0.1]}},
        "mean_accuracy": {"fixed": [0.4, 0.05]},
    },
}
S2B_SUMMARY = {
    "seeds": [0, 1, 2],
    "params": 150000,
    "points": [
        {
            "tokens": 1.5e6,
            "tokens_per_param": 10.0,
            "equal_tokens": [0.05, 0.01],
            "equal_flops": [0.2, 0.02],
        },
        {
            "tokens": 3e6,
            "tokens_per_param": 20.0,
            "equal_tokens": [-0.01, 0.01],
            "equal_flops": [0.1, 0.02],
        },
    ],
    "crossing": {"equal_tokens": 20.0, "equal_flops": None},
}


def _study(directory: Path, summary: dict | None) -> None:
    """A study's folder as its script leaves it: a run record, the summary, the figure."""
    directory.mkdir(parents=True)
    (directory / "run-s0.json").write_text(json.dumps({"seed": 0}))
    if summary is not None:
        (directory / "_summary.json").write_text(json.dumps(summary))
    (directory / f"{directory.name}.png").write_bytes(b"\x89PNG")


def test_s5_and_s2b_summaries_fill_their_blocks(tmp_path):
    _study(tmp_path / "results" / "s5", S5_SUMMARY)
    _study(tmp_path / "results" / "s2b", S2B_SUMMARY)
    results = Results(tmp_path / "results")
    document = tmp_path / "docs" / "doc.md"
    expected = blocks(results, tmp_path / "figures", document)
    s5 = expected["table:s5"]
    # T = 1, μ_rec and 2·μ_rec for Parcae (3 is neither), its own depth for the GPT
    assert "| parcae-mu2 | 2 | 1 | 0, 1 | 0.500 ± 0.100 | 0.100 ± 0.100 | 0.300 ± 0.100 |" in s5
    assert "| parcae-mu2 | 2 | 4 | 0, 1 | 0.900 ± 0.020 | 0.450 ± 0.020 | 0.675 ± 0.020 |" in s5
    assert "| 3 | 0, 1 |" not in s5
    assert "| gpt-same-layers | – | fixed | 0, 1 | 0.600 ± 0.000 | 0.200 ± 0.100 |" in s5
    assert "| parcae-mu2 | 0.700 | 1.200 | 1.100 | 0.990 | 3.100 | fitted |" in s5
    s2b = expected["table:s2b"]
    assert "| 3.00M | 20.0 | -0.010 ± 0.010 | 0.100 ± 0.020 |" in s2b
    assert "equal_tokens at 20.0 tokens / param; equal_flops none in the range measured" in s2b
    assert expected["figure:s5"] == "![s5](../results/s5/s5.png)"
    paths = figure_paths(results, tmp_path / "figures")
    assert paths["figure:s2b"] == [tmp_path / "results" / "s2b" / "s2b.png"]
    text = "".join(f"<!-- BEGIN {n} -->\n<!-- END {n} -->\n" for n in expected)
    filled = report.fill(text, expected)
    assert differences(filled, expected, paths) == []
    (tmp_path / "results" / "s5" / "s5.png").unlink()
    assert differences(filled, expected, paths) == [
        f"figure:s5: no {tmp_path / 'results' / 's5' / 's5.png'}"
    ]


def test_records_without_a_summary_are_refused_in_one_line(tmp_path, capsys):
    _study(tmp_path / "s5", None)
    argv = ["--check", "--results", str(tmp_path)]
    line = refuse(argv, capsys, protect=[tmp_path / "s5", DOCUMENT], main=report.main)
    assert "no _summary.json" in line and "s5_reasoning.py" in line


def test_a_document_without_the_blocks_is_refused_in_one_line(tmp_path, capsys):
    document = tmp_path / "doc.md"
    document.write_text("# no blocks\n<!-- BEGIN table:nine -->\n<!-- END table:nine -->\n")
    line = refuse(
        ["--document", str(document), "--results", str(tmp_path)], capsys, [document], report.main
    )
    assert "unknown table:nine" in line and "missing" in line
