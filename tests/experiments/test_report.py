"""experiments/report.py: the committed docs/REPRODUCTION.md matches the stored records; a block
that differs is found; the blocks are filled from quick results and from S5 / S2b records; bad
records and documents are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import report
from experiments.report import BLOCK, DOCUMENT, FIGURES, RESULTS, Results, blocks, differences
from tests.bad_input import refuse


@pytest.fixture(scope="module")
def stored() -> dict[str, str]:
    """The blocks the stored records give."""
    return blocks(Results(RESULTS), FIGURES, DOCUMENT)


def test_the_committed_report_matches_the_stored_records(stored):
    assert differences(DOCUMENT.read_text(), stored, FIGURES) == []
    assert stored["table:s2"] and stored["figure:s4"]  # the studies that ran fill their blocks
    assert stored["table:s5"] == stored["table:s2b"] == ""  # and the pending ones stay empty


def test_check_names_a_block_that_differs_and_a_missing_figure(stored, tmp_path):
    text = DOCUMENT.read_text()
    changed = text.replace("| 600 | 1.84M | gpt |", "| 600 | 1.84M | gpt (edited) |", 1)
    assert changed != text
    assert differences(changed, stored, FIGURES) == ["block table:s2 differs"]
    problems = differences(text, stored, tmp_path)  # a figure folder without the figures
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


def _write(directory: Path, name: str, record: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(record))


def test_s5_and_s2b_records_fill_their_blocks(tmp_path):
    for seed, accuracy in ((0, 0.9), (1, 0.7)):
        _write(
            tmp_path / "s5",
            f"parcae-{seed}",
            dict(model="parcae", mean_recurrence=4, seed=seed, task="chain", params=1000,
                 accuracy={"4": {"2": accuracy, "8": 0.25}, "8": {"2": 1.0, "8": 0.5}}),
        )  # fmt: skip
    for model, losses in (("parcae", (3.0, 3.2)), ("gpt", (3.5, 3.5))):
        for seed, loss in enumerate(losses):
            _write(
                tmp_path / "s2b",
                f"{model}-{seed}",
                dict(model=model, seed=seed, params=1000, tokens=20000, train_flops=1e12,
                     val_loss=loss, val_bpb=loss / 2),
            )  # fmt: skip
    results = Results(tmp_path)
    expected = blocks(results, tmp_path / "figures", tmp_path / "doc.md")
    s5 = expected["table:s5"]
    assert "| chain | parcae | 4 | 4 | 0.800 ± 0.141 | 0.250 ± 0.000 |" in s5  # mean ± std
    assert "| chain | parcae | 4 | 8 | 1.000 ± 0.000 | 0.500 ± 0.000 |" in s5
    # Δ = 3.1 − 3.5; s.e. = sqrt(0.1414² / 2 + 0 / 2) = 0.1; 20 tokens per parameter
    assert "| 0.02M | 20.0 | -0.4000 ± 0.1000 | – |" in expected["table:s2b"]
    for name, draw in results.drawers().items():
        assert [p.name for p in draw(tmp_path / "figures")] == report.FIGURE_FILES[name]


def test_a_record_without_its_fields_is_refused_in_one_line(tmp_path, capsys):
    _write(tmp_path / "s5", "broken", dict(model="parcae", seed=0))
    protect = [tmp_path / "s5", DOCUMENT]
    argv = ["--check", "--results", str(tmp_path)]
    line = refuse(argv, capsys, protect=protect, main=report.main)
    assert "broken.json" in line and "accuracy" in line


def test_a_document_without_the_blocks_is_refused_in_one_line(tmp_path, capsys):
    document = tmp_path / "doc.md"
    document.write_text("# no blocks\n<!-- BEGIN table:nine -->\n<!-- END table:nine -->\n")
    line = refuse(
        ["--document", str(document), "--results", str(tmp_path)], capsys, [document], report.main
    )
    assert "unknown table:nine" in line and "missing" in line
