"""The tables of S5 (depth on reasoning) and S2b (data-rich language modeling), rendered from the
summaries their scripts write (`experiments/s5_reasoning.py`, `experiments/s2b_datarich.py`).

Each study script keeps one JSON record per run in `RESULTS/<study>/<run>.json` and, from them,
writes `RESULTS/<study>/_summary.json` (means and standard errors over seeds, fits) and its
figure `RESULTS/<study>/<study>.png`. The analysis is the script's, once; this module only lays
its summary out as Markdown:

- S5, `{model: {"seeds", "params", "mean_recurrence", "accuracy": {difficulty: {T: [mean,
  s.e.]}}, "mean_accuracy": {T: [mean, s.e.]}, "depth_law": DepthLaw.to_dict() or {"error"}}}`
  with T = "fixed" for a GPT;
- S2b, `{"seeds", "params", "points": [{"tokens", "tokens_per_param", "equal_tokens": [mean,
  s.e.], "equal_flops": [mean, s.e.]}], "crossing": {"equal_tokens": D/N or null,
  "equal_flops": D/N or null}}` (gaps are Parcae − GPT validation loss in nats).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.tables import num, table
from parcae.errors import DataError

SUMMARY = "_summary.json"
STUDIES = ("s5", "s2b")


def has_records(directory: Path) -> bool:
    """Whether `directory` holds a run record (a `*.json` other than the `_*` summaries)."""
    return directory.is_dir() and any(not p.name.startswith("_") for p in directory.glob("*.json"))


def read_summary(directory: Path) -> dict[str, Any] | None:
    """The study's summary; None without records; refused in one line when records exist but
    the summary is missing or not JSON."""
    if not has_records(directory):
        return None
    path = directory / SUMMARY
    script = f"experiments/{'s5_reasoning' if directory.name == 's5' else 's2b_datarich'}.py"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{directory} has run records but no {SUMMARY}: run {script}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a JSON summary ({error})") from None


def _field(summary: dict, key: str, where: str) -> Any:
    if not isinstance(summary, dict) or key not in summary:
        raise DataError(f"{where}: the summary has no {key!r} (rerun the study's script)")
    return summary[key]


def _cell(pair: list[float] | None) -> str:
    return "–" if not pair else f"{pair[0]:.3f} ± {pair[1]:.3f}"


def _depth_key(key: str) -> int:
    return int(key) if key.isdigit() else 0


def s5_table(summary: dict[str, Any] | None) -> str:
    """Accuracy (mean ± s.e. over seeds) by difficulty at T = 1, μ_rec and 2·μ_rec (a GPT at
    its own depth), then the depth law fitted to each Parcae's mean accuracy."""
    if not summary:
        return ""
    rows, laws = [], []
    difficulties = sorted(
        {d for m, e in summary.items() for d in _field(e, "accuracy", f"s5 {m}")}, key=int
    )
    for model, entry in summary.items():
        mu = _field(entry, "mean_recurrence", f"s5 {model}")
        depths = ["fixed"] if not mu else sorted({"1", str(mu), str(2 * mu)}, key=int)
        seeds = ", ".join(map(str, entry.get("seeds", [])))
        for depth in depths:
            cells = [_cell(entry["accuracy"].get(d, {}).get(depth)) for d in difficulties]
            mean = _cell(entry.get("mean_accuracy", {}).get(depth))
            rows.append([model, "–" if not mu else str(mu), depth, seeds, *cells, mean])
        law = entry.get("depth_law")
        if law and "error" in law:
            laws.append([model, *["–"] * 5, law["error"]])
        elif law:
            values = [num(law.get(k), 3) for k in ("l_inf", "Z", "z", "r2", "t95")]
            laws.append([model, *values, "z at its bound" if law.get("saturated") else "fitted"])
    header = ["model", "μ_rec", "T", "seeds", *[f"difficulty {d}" for d in difficulties]]
    text = table([*header, "mean over difficulties"], rows)
    if laws:
        law_header = ["model", "A_inf", "Z", "z", "R²", "t95", "fit"]
        text += "\n\n" + table(law_header, laws)
    return text + "\n\nAccuracy: mean ± standard error over the seeds listed."


def s2b_table(summary: dict[str, Any] | None) -> str:
    """The gap Parcae − GPT (mean ± s.e. over seeds) against tokens per parameter, at equal
    tokens and at equal FLOPs, and where each changes sign."""
    if not summary:
        return ""
    points = _field(summary, "points", "s2b")
    rows = [
        [f"{p['tokens'] / 1e6:.2f}M", f"{p['tokens_per_param']:.1f}"]
        + [_cell(p.get("equal_tokens")), _cell(p.get("equal_flops"))]
        for p in points
    ]
    header = ["Parcae tokens", "tokens / param", "Parcae − GPT at equal tokens"]
    text = table([*header, "at equal FLOPs"], rows)
    crossing = summary.get("crossing") or {}
    where = {
        key: "none in the range measured" if value is None else f"at {value:.1f} tokens / param"
        for key, value in crossing.items()
    }
    seeds = ", ".join(map(str, summary.get("seeds", [])))
    params = summary.get("params")
    text += (
        f"\n\nParcae parameters: {'–' if params is None else f'{params:,}'}; seeds {seeds}; gaps "
        "in nats, mean ± standard error over seeds."
    )
    if where:
        text += " The gap changes sign: " + "; ".join(f"{k} {v}" for k, v in where.items()) + "."
    return text
