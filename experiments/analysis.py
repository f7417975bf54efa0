"""The numbers of the reproduction report, computed from the stored results (`RESULTS/`):

- S1: per model and learning rate, the final validation loss, spikes, its status (done,
  stalled at the unigram loss, diverged), and the loop's ρ(Ā) and state norm; per model, the
  largest learning rate that trains (below it, every run is `done`) and the best one.
- S2: per token budget and model, the validation loss and bpb over seeds (mean ± sample std) at
  T = μ_rec and T = 1, training FLOPs, and the Parcae − GPT gaps, at equal tokens and at equal
  FLOPs (GPT's loss interpolated linearly in log FLOPs between its budgets).
- S3: per model, the depth law L(T) = L_inf + Z·exp(−z·T) of bpb and CORE against T.
- S4: the isoFLOP fit of the sweep's table.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.records import REFERENCE, count_spikes, read_table, status
from parcae.errors import DataError
from parcae.eval.law import DepthLaw, fit_depth_law


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of `n` values (std 0 for one)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            return cls(math.nan, math.nan, 0)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values))

    def text(self, digits: int = 4) -> str:
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def deepest(values: dict[str, float]) -> float:
    """The value at the deepest depth key ("model" for a fixed-depth model)."""
    return values[max(values, key=lambda k: int(k) if k.isdigit() else 0)]


# ------------------------------------------------------------------------------------------ S1


@dataclass
class LrPoint:
    model: str
    lr: float
    seed: int
    status: str  # done, stalled, diverged, failed (records.status)
    val_loss: float | None  # at T = μ_rec (a GPT: its own depth)
    final_train_loss: float | None
    initial_loss: float | None
    spikes: int
    nonfinite_at: int | None
    max_spectral_radius: float | None
    final_state_norm: float | None
    max_state_norm: float | None
    trace: list[float] | None  # ‖h_t‖, t = 0..2·μ_rec, of the trained model (diagnostics)
    row: dict[str, Any] = field(repr=False)

    @property
    def growth(self) -> float | None:
        """‖h_T‖ / ‖h_{T-1}‖ at the end of the trace: about ρ(Ā) when the loop is unstable,
        about 1 when it has settled."""
        if not self.trace or len(self.trace) < 3 or self.trace[-2] == 0:
            return None
        return self.trace[-1] / self.trace[-2]


@dataclass
class Stability:
    points: list[LrPoint]

    def models(self) -> list[str]:
        return list(dict.fromkeys(p.model for p in self.points))

    def of(self, model: str) -> list[LrPoint]:
        """`model`'s runs by learning rate, then seed."""
        return sorted((p for p in self.points if p.model == model), key=lambda p: (p.lr, p.seed))

    def lrs(self, model: str) -> list[float]:
        return sorted({p.lr for p in self.points if p.model == model})

    def at(self, model: str, lr: float) -> list[LrPoint]:
        return [p for p in self.of(model) if p.lr == lr]

    def best_lr(self, model: str) -> float | None:
        """The lr of the lowest seed-0 validation loss among runs that did not diverge (the
        sweep is seed 0; the other seeds measure noise at a few rates)."""
        trained = [
            p
            for p in self.of(model)
            if p.seed == 0 and p.status in ("done", "stalled") and p.val_loss is not None
        ]
        return min(trained, key=lambda p: p.val_loss).lr if trained else None

    def largest_stable_lr(self, model: str) -> float | None:
        """The largest lr at and below which every run trained (`done`); None when the
        smallest did not."""
        stable = None
        for lr in self.lrs(model):
            if any(p.status != "done" for p in self.at(model, lr)):
                break
            stable = lr
        return stable

    def lrs_with(self, model: str, status: str) -> list[float]:
        """The learning rates at which some run of `model` ended with `status`."""
        return [lr for lr in self.lrs(model) if any(p.status == status for p in self.at(model, lr))]

    def val_loss(self, model: str, lr: float) -> Stat:
        """The final validation loss over the seeds that did not diverge."""
        return Stat.of([p.val_loss for p in self.at(model, lr) if p.status != "diverged"])


def _finite(values: list) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def reference_unigram_loss(results: Path) -> float | None:
    """The unigram loss stored beside the results (None when absent)."""
    path = results / REFERENCE
    return json.loads(path.read_text())["unigram_loss"] if path.is_file() else None


def stability(results: Path) -> Stability:
    points = []
    unigram = reference_unigram_loss(results)
    for row in read_table(results / "S1.jsonl").values():
        radius, norms = _finite(row.get("spectral_radius", [])), _finite(row.get("state_norm", []))
        val = row.get("val_loss")
        points.append(
            LrPoint(
                model=row["model"],
                lr=row["lr"],
                seed=row["seed"],
                status=row["status"] if row["status"] == "failed" else status(row, unigram),
                val_loss=deepest(val) if val else None,
                final_train_loss=row.get("final_train_loss"),
                initial_loss=row.get("initial_loss"),
                spikes=count_spikes(row.get("train_loss", [])),
                nonfinite_at=row.get("nonfinite_at"),
                max_spectral_radius=max(radius) if radius else None,
                final_state_norm=norms[-1] if norms else None,
                max_state_norm=max(norms) if norms else None,
                trace=(row.get("loop_trace") or {}).get("state_norm"),
                row=row,
            )
        )
    return Stability(points)


# ------------------------------------------------------------------------------------------ S2


@dataclass
class QualityCell:
    """One (budget, model) cell of S2 over its seeds."""

    steps: int
    model: str
    lr: float
    tokens: int
    flops: float  # training FLOPs = F_train · tokens
    params: int
    loss: Stat  # at T = μ_rec (GPT: its depth), the run's final evaluation
    bpb: Stat
    loss_t1: Stat | None  # Parcae at T = 1 (`depth_eval`, fp32)
    bpb_t1: Stat | None
    gain: Stat | None  # Parcae's loss at T = 1 minus at T = μ_rec, per seed (`depth_eval`)


@dataclass
class Quality:
    cells: list[QualityCell]

    def cell(self, steps: int, model: str) -> QualityCell | None:
        return next((c for c in self.cells if c.steps == steps and c.model == model), None)

    def budgets(self) -> list[int]:
        return sorted({c.steps for c in self.cells})

    def gpt_loss_at_flops(self, flops: float, metric: str = "loss") -> float | None:
        """GPT's mean `metric` at `flops`, linear in log FLOPs between its two nearest budgets;
        None outside its range."""
        gpt = sorted((c for c in self.cells if c.model == "gpt"), key=lambda c: c.flops)
        for low, high in zip(gpt, gpt[1:]):
            if low.flops <= flops <= high.flops:
                w = math.log(flops / low.flops) / math.log(high.flops / low.flops)
                a, b = getattr(low, metric).mean, getattr(high, metric).mean
                return a + w * (b - a)
        return None


def quality(results: Path) -> Quality:
    groups: dict[tuple[int, str], list[dict]] = {}
    for row in read_table(results / "S2.jsonl").values():
        if row["status"] == "done":
            groups.setdefault((row["steps"], row["model"]), []).append(row)
    cells = []
    for (steps, model), rows in sorted(groups.items()):
        looped = model != "gpt"
        first = rows[0]
        depth = [r["depth_eval"]["val_loss"] for r in rows if "depth_eval" in r] if looped else []
        mu = str(first.get("mean_recurrence"))
        cells.append(
            QualityCell(
                steps=steps,
                model=model,
                lr=first["lr"],
                tokens=first["tokens"],
                flops=first["tokens"] * first["flops_per_token"],
                params=first["params"],
                loss=Stat.of([deepest(r["val_loss"]) for r in rows]),
                bpb=Stat.of([deepest(r["val_bpb"]) for r in rows]),
                loss_t1=Stat.of([d["1"] for d in depth]) if looped else None,
                bpb_t1=Stat.of([r["depth_eval"]["val_bpb"]["1"] for r in rows if "depth_eval" in r])
                if looped
                else None,
                gain=Stat.of([d["1"] - d[mu] for d in depth]) if looped else None,
            )
        )
    return Quality(cells)


# ------------------------------------------------------------------------------------------ S3

TASKS_SUFFIX = "-bigbench"


@dataclass
class DepthStudy:
    """One evaluated model: its name, μ_rec, the measured metrics by depth, and their laws."""

    name: str
    mean_recurrence: int
    bpb: dict[int, float]
    core: dict[int, float]
    tasks: dict[str, dict[int, float]]  # BIG-bench task -> centered accuracy by depth
    bpb_law: DepthLaw | None
    core_law: DepthLaw | None
    wall_seconds: float


def _law(metric: str, values: dict[int, float]) -> DepthLaw | None:
    try:
        return fit_depth_law(list(values), list(values.values()), metric)
    except DataError:
        return None


def _complete(path: Path) -> dict:
    """A complete `parcae eval` results file, else {}."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if data.get("complete") else {}


def depth_studies(results: Path) -> list[DepthStudy]:
    """S3's models: bpb from <name>.json, BIG-bench from <name>-bigbench.json when present."""
    studies = []
    for path in sorted((results / "S3").glob("*.json")):
        data = _complete(path)
        if not data or path.stem.endswith(TASKS_SUFFIX):
            continue
        scored = _complete(path.with_name(path.stem + TASKS_SUFFIX + ".json"))
        bpb = {int(k): v for k, v in data.get("bpb", {}).items()}
        core = {int(k): v for k, v in scored.get("core", {}).items()}
        tasks: dict[str, dict[int, float]] = {}
        for result in scored.get("results", []):
            tasks.setdefault(result["task"], {})[int(result["depth"])] = result["centered"]
        studies.append(
            DepthStudy(
                name=path.stem,
                mean_recurrence=int(data["mean_recurrence"]),
                bpb=bpb,
                core=core,
                tasks=tasks,
                bpb_law=_law("bpb", bpb) if bpb else None,
                core_law=_law("core", core) if core else None,
                wall_seconds=float(data.get("wall_seconds", 0.0))
                + float(scored.get("wall_seconds", 0.0)),
            )
        )
    return sorted(studies, key=lambda s: (s.mean_recurrence, s.name))


# ------------------------------------------------------------------------------------------ S4


@dataclass
class Isoflop:
    table: Path
    rows: list[dict[str, str]]
    fit: Any  # parcae.scaling.isoflop.IsoflopFit
    points: list  # parcae.scaling.isoflop.Point

    def best_by_budget(self) -> dict[float, dict[str, str]]:
        best: dict[float, dict[str, str]] = {}
        for row in self.rows:
            budget = float(row["flops_budget"])
            if budget not in best or float(row["val_loss"]) < float(best[budget]["val_loss"]):
                best[budget] = row
        return best

    def loss(self, budget: float, mu: int) -> float | None:
        values = [
            float(r["val_loss"])
            for r in self.rows
            if float(r["flops_budget"]) == budget and int(r["mean_recurrence"]) == mu
        ]
        return statistics.fmean(values) if values else None


def isoflop(results: Path) -> Isoflop | None:
    from parcae.scaling.isoflop import fit_isoflop, read_results

    table = results / "S4" / "results.csv"
    if not table.is_file():
        return None
    with table.open(newline="") as file:
        rows = [r for r in csv.DictReader(file) if r["status"] == "done"]
    points = read_results(table)
    return Isoflop(table, rows, fit_isoflop(points, bootstrap=1000, seed=0), points)


# --------------------------------------------------------------------------------- wall times


def wall_seconds(results: Path) -> dict[str, float]:
    """Each study's compute: the sum of its runs' (and S3's evaluations') wall times."""
    times = {}
    for study in ("S1", "S2", "S3"):
        rows = read_table(results / f"{study}.jsonl").values()
        times[study] = sum(float(r.get("wall_seconds", 0.0)) for r in rows)
    times["S3"] += sum(s.wall_seconds for s in depth_studies(results))
    table = results / "S4" / "results.csv"
    if table.is_file():
        with table.open(newline="") as file:
            times["S4"] = sum(float(r["wall_seconds"] or 0) for r in csv.DictReader(file))
    return times
