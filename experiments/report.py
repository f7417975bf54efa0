"""Rewrite the marked blocks of docs/REPRODUCTION.md (its tables and figures) from the stored
result records; everything outside the blocks is hand-written and left as it is.

    python -m experiments.report            # draw docs/figures/*.png and rewrite the blocks
    python -m experiments.report --check    # exit 1 when a block differs from the records

A block is

    <!-- BEGIN table:s2 -->
    ...generated Markdown...
    <!-- END table:s2 -->

and its body is what `blocks()` gives for that name: a table from `tables` / `run_records`, or
the image links of a figure (drawn by `figures`). A study without records has an empty block.
`--check` compares the text of every block, and that each linked figure file exists; it does not
compare the PNGs' pixels (matplotlib's rendering differs between versions and machines).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from experiments import analysis, figures, run_records, tables
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
    "figure:s5": ["S5-accuracy.png"],
    "figure:s2b": ["S2b-gap.png"],
}


class Results:
    """Every study's numbers, read from `results` (the S1..S4 tables, s5/ and s2b/ records)."""

    def __init__(self, results: Path) -> None:
        self.s1 = analysis.stability(results)
        self.unigram = analysis.reference_unigram_loss(results)
        self.s2 = analysis.quality(results)
        self.s3 = analysis.depth_studies(results)
        self.s4 = analysis.isoflop(results)
        self.walls = analysis.wall_seconds(results)
        self.s5 = run_records.read_records(results / "s5", run_records.S5_KEYS)
        self.s2b = run_records.read_records(results / "s2b", run_records.S2B_KEYS)

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
            "table:s5": run_records.s5_table(self.s5),
            "table:s2b": run_records.s2b_table(self.s2b),
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
        if self.s5:
            drawers["figure:s5"] = lambda d: [figures.s5_figure(self.s5, d / "S5-accuracy.png")]
        if self.s2b:
            drawers["figure:s2b"] = lambda d: [figures.s2b_figure(self.s2b, d / "S2b-gap.png")]
        return drawers


def figure_links(names: list[str], figure_dir: Path, document: Path) -> str:
    """Markdown image links to `figure_dir`/name, relative to the document's folder."""
    relative = Path(os.path.relpath(figure_dir, document.parent)).as_posix()
    return "\n\n".join(f"![{Path(name).stem}]({relative}/{name})" for name in names)


def blocks(results: Results, figure_dir: Path, document: Path) -> dict[str, str]:
    """Every block's expected body, tables and figure links."""
    expected = results.tables()
    drawn = results.drawers()
    for name, files in FIGURE_FILES.items():
        expected[name] = figure_links(files, figure_dir, document) if name in drawn else ""
    return expected


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


def differences(text: str, expected: dict[str, str], figure_dir: Path) -> list[str]:
    """The blocks whose body differs from the records, and the linked figures that are missing."""
    _check_names(text, expected)
    current = {m["name"]: m["body"] for m in BLOCK.finditer(text)}
    problems = [f"block {n} differs" for n in expected if current[n] != _body(expected[n])]
    for name, files in FIGURE_FILES.items():
        if expected.get(name):
            problems += [
                f"{name}: no {figure_dir / f}" for f in files if not (figure_dir / f).is_file()
            ]
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
            problems = differences(text, expected, args.figures)
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
