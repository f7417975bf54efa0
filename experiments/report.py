"""Rewrite the marked blocks of docs/REPRODUCTION.md (its tables and figures) from the stored
result records; everything outside the blocks is hand-written and left as it is.

    python -m experiments.report            # draw docs/figures/*.png and rewrite the blocks
    python -m experiments.report --check    # exit 1 when a block differs from the records

A block is

    <!-- BEGIN table:s2 -->
    ...generated Markdown...
    <!-- END table:s2 -->

and its body is what `blocks()` gives for that name: a table from `tables` (S1..S4) or
`summaries` (S5, S2b), or the image links of a figure (S1..S4 drawn by `figures`; S5's and S2b's
by their own scripts, beside their records). A study without records has empty blocks.
`--check` compares the text of every block, and that each linked figure file exists; it does not
compare the PNGs' pixels (matplotlib's rendering differs between versions and machines).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from experiments import analysis, figures, summaries, tables
from parcae.cli import OneLineParser
from parcae.errors import DataError, ParcaeError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
DOCUMENT = ROOT / "docs" / "REPRODUCTION.md"
FIGURES = ROOT / "docs" / "figures"
BLOCK = re.compile(r"<!-- BEGIN (?P<name>[\w:-]+) -->\n(?P<body>.*?)<!-- END (?P=name) -->", re.S)
FIGURE_FILES = {
    "figure:s1": [
        "S1-lr.png",
        "S1-loss-curves.png",
        "S1-loop-dynamics.png",
        "S1-through-depth.png",
    ],
    "figure:s2": ["S2-quality.png"],
    "figure:s3": ["S3-depth-law.png"],
    "figure:s4": ["S4-isoflop-curves.png", "S4-isoflop-laws.png"],
}
STUDY_FIGURES = {"figure:s5": "s5", "figure:s2b": "s2b"}  # RESULTS/<study>/<study>.png


class Results:
    """Every study's numbers, read from `results` (the S1..S4 tables, the s5/ and s2b/
    summaries)."""

    def __init__(self, results: Path) -> None:
        self.results = results
        self.s1 = analysis.stability(results)
        self.unigram = analysis.reference_unigram_loss(results)
        self.s2 = analysis.quality(results)
        self.s3 = analysis.depth_studies(results)
        self.s4 = analysis.isoflop(results)
        self.walls = analysis.wall_seconds(results)
        self.s5 = summaries.read_summary(results / "s5")
        self.s2b = summaries.read_summary(results / "s2b")

    def tables(self) -> dict[str, str]:
        """Block name -> its Markdown ("" for a study without records)."""
        s1, s2, s3, s4 = self.s1.points, self.s2.cells, self.s3, self.s4
        return {
            "table:summary": tables.summary(self.s1, self.s2, self.s3, self.s4),
            "table:compute": tables.compute(self.walls),
            "table:s1": tables.s1_runs(self.s1) if s1 else "",
            "table:s1-models": tables.s1_models(self.s1) if s1 else "",
            "table:s2": tables.s2_cells(self.s2) if s2 else "",
            "table:s2-gaps": tables.s2_gaps(self.s2) if s2 else "",
            "table:s3": tables.s3_laws(s3) if s3 else "",
            "table:s3-tasks": tables.s3_tasks(s3) if s3 else "",
            "table:s4": tables.s4_points(s4) if s4 else "",
            "table:s4-fit": tables.s4_fit(s4) if s4 else "",
            "table:s5": summaries.s5_table(self.s5),
            "table:s2b": summaries.s2b_table(self.s2b),
        }

    def drawers(self) -> dict[str, Callable[[Path], list[Path]]]:
        """Figure block name -> a function drawing its files into a directory (studies with
        records only)."""
        drawers: dict[str, Callable[[Path], list[Path]]] = {}
        if self.s1.points:
            drawers["figure:s1"] = lambda d: [
                figures.s1_learning_rates(self.s1, self.unigram, d / "S1-lr.png"),
                figures.s1_curves(self.s1, d / "S1-loss-curves.png"),
                figures.s1_dynamics(self.s1, d / "S1-loop-dynamics.png"),
                figures.s1_through_depth(self.s1, d / "S1-through-depth.png"),
            ]
        if self.s2.cells:
            drawers["figure:s2"] = lambda d: [figures.s2_quality(self.s2, d / "S2-quality.png")]
        if self.s3:
            drawers["figure:s3"] = lambda d: [figures.s3_depth(self.s3, d / "S3-depth-law.png")]
        if self.s4 is not None:
            drawers["figure:s4"] = lambda d: figures.s4_isoflop(self.s4, d)
        return drawers

    def study_figures(self) -> dict[str, Path]:
        """Figure block name -> the figure a study script drew beside its records (studies
        with a summary only)."""
        present = {"figure:s5": self.s5, "figure:s2b": self.s2b}
        return {
            name: self.results / study / f"{study}.png"
            for name, study in STUDY_FIGURES.items()
            if present[name]
        }


def figure_links(paths: list[Path], document: Path) -> str:
    """Markdown image links to `paths`, relative to the document's folder."""
    return "\n\n".join(
        f"![{path.stem}]({Path(os.path.relpath(path, document.parent)).as_posix()})"
        for path in paths
    )


def blocks(results: Results, figure_dir: Path, document: Path) -> dict[str, str]:
    """Every block's expected body, tables and figure links."""
    expected = results.tables()
    for name, paths in figure_paths(results, figure_dir).items():
        expected[name] = figure_links(paths, document) if paths else ""
    return expected


def figure_paths(results: Results, figure_dir: Path) -> dict[str, list[Path]]:
    """Figure block name -> the files it links (none for a study without records)."""
    drawn, scripted = results.drawers(), results.study_figures()
    paths = {
        n: [figure_dir / f for f in files] if n in drawn else []
        for n, files in FIGURE_FILES.items()
    }
    return paths | {n: [scripted[n]] if n in scripted else [] for n in STUDY_FIGURES}


def _body(content: str) -> str:
    """A block's text between its markers: `content` on lines of its own, or nothing."""
    return content.strip("\n") + "\n" if content else ""


def _check_names(text: str, expected: dict[str, str]) -> None:
    """Refuse a document that lacks a block or holds one of an unknown name."""
    found = [m["name"] for m in BLOCK.finditer(text)]
    unknown = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found))
    problems = [
        f"{what} {', '.join(names)}"
        for what, names in (("unknown", unknown), ("missing", missing))
        if names
    ]
    if problems:
        raise DataError(
            "the document's marked blocks do not match the report's: " + "; ".join(problems)
        )


def fill(text: str, expected: dict[str, str]) -> str:
    """`text` with every block's body replaced by `expected[name]`."""
    _check_names(text, expected)
    return BLOCK.sub(
        lambda m: (
            f"<!-- BEGIN {m['name']} -->\n{_body(expected[m['name']])}<!-- END {m['name']} -->"
        ),
        text,
    )


def differences(text: str, expected: dict[str, str], figures: dict[str, list[Path]]) -> list[str]:
    """The blocks whose body differs from the records, and the linked figures (`figure_paths`)
    that are missing."""
    _check_names(text, expected)
    current = {m["name"]: m["body"] for m in BLOCK.finditer(text)}
    problems = [f"block {n} differs" for n in expected if current[n] != _body(expected[n])]
    for name, paths in figures.items():
        problems += [f"{name}: no {path}" for path in paths if not path.is_file()]
    return problems


def write(document: Path, text: str) -> None:
    """Replace `document` with `text` (written aside, then renamed)."""
    staging = document.with_name(f".{document.name}.tmp")
    staging.write_text(text)
    os.replace(staging, document)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m experiments.report",
        description="Rewrite the marked blocks (tables, figures) of the reproduction report "
        "from the stored result records.",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"(default {RESULTS})")
    parser.add_argument("--document", type=Path, default=DOCUMENT, help=f"(default {DOCUMENT})")
    parser.add_argument("--figures", type=Path, default=FIGURES, help=f"(default {FIGURES})")
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 when a block differs from what the records give",
    )
    args = parser.parse_args(argv)
    try:
        if not args.document.is_file():
            raise DataError(f"--document {args.document}: no such file")
        text = args.document.read_text()
        results = Results(args.results)
        expected = blocks(results, args.figures, args.document)
        if args.check:
            problems = differences(text, expected, figure_paths(results, args.figures))
            for problem in problems:
                print(problem, file=sys.stderr)
            print(f"{args.document}: {'stale' if problems else 'matches the records'}")
            return 1 if problems else 0
        for name, draw in results.drawers().items():
            drawn = sorted(p.name for p in draw(args.figures))
            if drawn != sorted(FIGURE_FILES[name]):
                raise DataError(f"{name} drew {drawn}, the document links {FIGURE_FILES[name]}")
        write(args.document, fill(text, expected))
        print(f"{args.document}: blocks rewritten; figures in {args.figures}")
    except ParcaeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
