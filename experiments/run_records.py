"""S5 (depth on reasoning) and S2b (data-rich language modeling): one JSON record per run under
`RESULTS/s5/` and `RESULTS/s2b/` (experiments/README.md gives the format), read back into the
report's tables and figures.

S5 rows group runs by (task, model, μ_rec, T) and give the accuracy at each difficulty, mean ±
std over seeds. S2b groups runs by (tokens, model) and compares Parcae with GPT at equal tokens
(Δ ± its standard error) and at equal training FLOPs (GPT interpolated in log FLOPs,
`Quality.gpt_loss_at_flops`), against tokens per parameter D / N.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from experiments.analysis import Quality, QualityCell, Stat
from experiments.tables import gap, num, table
from parcae.errors import DataError

S5_KEYS = ("model", "mean_recurrence", "seed", "task", "params", "accuracy")
S2B_KEYS = ("model", "seed", "params", "tokens", "train_flops", "val_loss", "val_bpb")


def read_records(directory: Path, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every `*.json` record in `directory` (none when it is missing), refused in one line
    when one is not JSON or lacks one of `keys`."""
    records = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: not a JSON run record ({error})") from None
        missing = [k for k in keys if not isinstance(record, dict) or k not in record]
        if missing:
            raise DataError(f"{path}: a run record needs {', '.join(missing)}")
        records.append(record)
    return records


def depth_order(key: str) -> tuple[int, int]:
    return (0, int(key)) if key.isdigit() else (1, 0)


# ------------------------------------------------------------------------------------------- S5


def s5_groups(records: list[dict]) -> dict[tuple, dict[str, list[float]]]:
    """(task, model, μ_rec, T) -> difficulty -> the accuracies over seeds."""
    groups: dict[tuple, dict[str, list[float]]] = {}
    for r in records:
        for depth, by_difficulty in r["accuracy"].items():
            key = (r["task"], r["model"], r["mean_recurrence"], depth)
            for difficulty, accuracy in by_difficulty.items():
                groups.setdefault(key, {}).setdefault(str(difficulty), []).append(accuracy)
    return groups


def s5_table(records: list[dict]) -> str:
    if not records:
        return ""
    groups = s5_groups(records)
    difficulties = sorted({d for g in groups.values() for d in g}, key=depth_order)
    header = ["task", "model", "μ_rec", "T", *[f"difficulty {d}" for d in difficulties]]
    rows = []
    for task, model, mu, depth in sorted(
        groups, key=lambda k: (k[0], k[1], k[2] or 0, depth_order(k[3]))
    ):
        cells = groups[(task, model, mu, depth)]
        rows.append(
            [task, model, "–" if mu is None else str(mu), depth]
            + [Stat.of(cells[d]).text(3) if d in cells else "–" for d in difficulties]
        )
    seeds = sorted({r["seed"] for r in records})
    note = f"Accuracy, mean ± std over seeds {', '.join(map(str, seeds))} where more than one ran."
    return table(header, rows) + "\n\n" + note


# ------------------------------------------------------------------------------------------ S2b


def s2b_quality(records: list[dict]) -> Quality:
    """The records as S2's cells, one per (tokens, model), the budget keyed by tokens."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in records:
        groups.setdefault((int(r["tokens"]), r["model"]), []).append(r)
    cells = []
    for (tokens, model), rows in sorted(groups.items()):
        flops = Stat.of([r["train_flops"] for r in rows]).mean
        loss, bpb = Stat.of([r["val_loss"] for r in rows]), Stat.of([r["val_bpb"] for r in rows])
        lr = rows[0].get("lr", math.nan)
        params = rows[0]["params"]
        cells.append(
            QualityCell(tokens, model, lr, tokens, flops, params, loss, bpb, None, None, None)
        )
    return Quality(cells)


def s2b_points(quality: Quality) -> list[dict[str, float]]:
    """Per token budget with both models: tokens per Parcae parameter, the gap at equal tokens
    and its standard error, and the gap at equal FLOPs (nan outside GPT's range)."""
    points = []
    for tokens in quality.budgets():
        parcae, gpt = quality.cell(tokens, "parcae"), quality.cell(tokens, "gpt")
        if not (parcae and gpt):
            continue
        delta, error = gap(parcae.loss, gpt.loss)
        at_flops = quality.gpt_loss_at_flops(parcae.flops)
        points.append(
            dict(
                tokens=tokens,
                per_param=tokens / parcae.params,
                parcae=parcae.loss.mean,
                gpt=gpt.loss.mean,
                delta=delta,
                error=error,
                equal_flops=math.nan if at_flops is None else parcae.loss.mean - at_flops,
            )
        )
    return points


def s2b_table(records: list[dict]) -> str:
    if not records:
        return ""
    quality = s2b_quality(records)
    header = ["tokens", "model", "params", "tokens / param", "train FLOPs", "seeds", "val loss"]
    header.append("bpb")
    rows = [
        [f"{c.tokens / 1e6:.2f}M", c.model, f"{c.params / 1e6:.3f}M", f"{c.tokens / c.params:.1f}"]
        + [f"{c.flops:.2e}", str(c.loss.n), c.loss.text(), c.bpb.text()]
        for c in quality.cells
    ]
    gaps = [
        [f"{p['tokens'] / 1e6:.2f}M", f"{p['per_param']:.1f}"]
        + [f"{p['delta']:+.4f} ± {p['error']:.4f}", num(p["equal_flops"])]
        for p in s2b_points(quality)
    ]
    header_gap = ["tokens", "tokens / Parcae param", "Parcae − GPT (± s.e.)"]
    header_gap.append("Parcae − GPT at equal FLOPs")
    return table(header, rows) + "\n\n" + table(header_gap, gaps)
