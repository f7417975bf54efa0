"""`parcae plot`: PNGs of training runs from their `metrics.jsonl`."""

from __future__ import annotations

import os
from pathlib import Path

from parcae.errors import DataError
from parcae.outputs import output_directory
from parcae.train.metrics import read_metrics


def run_labels(run_dirs: list[str | os.PathLike]) -> list[str]:
    """The shortest trailing paths that tell the runs apart: `a/seed0` and `b/seed0` are
    labelled so, `runs/gpt` and `runs/parcae` just `gpt` and `parcae`."""
    paths = [Path(run_dir).resolve() for run_dir in run_dirs]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]).lstrip("/") or "/" for p in paths]
        if len(set(labels)) == len(set(paths)):
            return labels
    return [str(p) for p in paths]


def plot_runs(
    run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Write loss/bpb vs tokens (runs overlaid), val loss vs depth T and ρ(Ā) vs step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    for run_dir, label in zip(run_dirs, run_labels(run_dirs)):
        records = read_metrics(run_dir)
        if not records:
            raise DataError(f"{run_dir}: no metrics.jsonl records to plot")
        runs[label] = records
    out = output_directory(out_dir or Path(run_dirs[0]) / "plots", "plot directory")
    written = []

    def finish(figure, axis, name: str, xlabel: str, ylabel: str, log_x: bool = False) -> None:
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        if log_x:
            axis.set_xscale("log")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / name, dpi=120)
        plt.close(figure)
        written.append(out / name)

    figure, (loss_axis, bpb_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name, records in runs.items():
        train = [r for r in records if r.get("kind") == "train"]
        loss_axis.plot(
            [r["tokens"] for r in train],
            [r["loss"] for r in train],
            alpha=0.5,
            label=f"{name} train",
        )
        evals = [r for r in records if r.get("kind") == "eval"]
        if evals:
            depth = _deepest(evals[-1]["val_loss"])
            loss_axis.plot(
                [r["tokens"] for r in evals],
                [r["val_loss"][depth] for r in evals],
                marker="o",
                label=f"{name} val (T={depth})",
            )
            bpb_axis.plot(
                [r["tokens"] for r in evals],
                [r["val_bpb"][depth] for r in evals],
                marker="o",
                label=f"{name} (T={depth})",
            )
    loss_axis.set_title("loss")
    bpb_axis.set_title("validation bits per byte")
    bpb_axis.set_xlabel("tokens")
    bpb_axis.set_ylabel("bpb")
    bpb_axis.grid(alpha=0.3)
    if bpb_axis.get_legend_handles_labels()[0]:
        bpb_axis.legend(fontsize=8)
    finish(figure, loss_axis, "loss.png", "tokens", "loss (nats)")

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, records in runs.items():
        evals = [r for r in records if r.get("kind") == "eval"]
        if evals:
            losses = {k: v for k, v in evals[-1]["val_loss"].items() if k != "model"}
            if losses:
                depths = sorted(losses, key=int)
                axis.plot(
                    [int(d) for d in depths],
                    [losses[d] for d in depths],
                    marker="o",
                    label=f"{name} (step {evals[-1]['step']})",
                )
            else:
                axis.axhline(evals[-1]["val_loss"]["model"], linestyle="--", label=name)
    axis.set_title("validation loss vs loop depth T")
    finish(figure, axis, "depth.png", "T (loop steps)", "val loss (nats)")

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, records in runs.items():
        radius = [r for r in records if r.get("kind") == "eval" and "spectral_radius" in r]
        if radius:
            axis.plot(
                [r["step"] for r in radius],
                [r["spectral_radius"] for r in radius],
                marker="o",
                label=name,
            )
    axis.set_title("spectral radius ρ(Ā)")
    finish(figure, axis, "spectral_radius.png", "step", "ρ(Ā)")
    return written


def _deepest(values: dict[str, float]) -> str:
    depths = [k for k in values if k != "model"]
    return max(depths, key=int) if depths else "model"
