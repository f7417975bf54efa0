"""The reproduction report's figures (PNG), one function per figure; each returns its path."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from experiments.analysis import DepthStudy, Isoflop, Quality, Stability

COLORS = {"parcae": "tab:blue", "rdm": "tab:red", "gpt": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return path


def s1_learning_rates(data: Stability, unigram: float | None, path: Path) -> Path:
    """Final validation loss against the AdamW learning rate per model (the line: mean ± std over
    the seeds; a dot per run, hollow when it stalled); diverged runs as ✕ at their final
    training loss (at the top when it went non-finite); the unigram loss dashed."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    finite = [p.val_loss for p in data.points if p.val_loss is not None]
    top = max(finite) + 0.3 if finite else 10.0
    for model in data.models():
        color = COLORS.get(model)
        lrs = [lr for lr in data.lrs(model) if data.val_loss(model, lr).n]
        stats = [data.val_loss(model, lr) for lr in lrs]
        axis.errorbar(
            lrs,
            [s.mean for s in stats],
            yerr=[s.std for s in stats],
            color=color,
            capsize=3,
            label=model,
        )
        for p in data.of(model):
            if p.status in ("done", "stalled"):
                face = color if p.status == "done" else "white"
                axis.plot(p.lr, p.val_loss, "o", color=color, markerfacecolor=face, ms=5)
            elif p.status == "diverged":
                y = p.final_train_loss if p.nonfinite_at is None else top
                y = min(y if y is not None and math.isfinite(y) else top, top)
                axis.plot(p.lr, y, "x", color=color, markersize=11, mew=2.5)
    if unigram is not None:
        axis.axhline(unigram, color="gray", ls="--", lw=0.8, label="unigram loss (train split)")
    axis.set_xscale("log")
    axis.set_xlabel("AdamW learning rate")
    axis.set_ylabel("final validation loss (T = μ_rec)")
    axis.set_title("S1: stability (○ stalled at the unigram loss, ✕ diverged)")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    return _save(figure, path)


def s1_curves(data: Stability, path: Path) -> Path:
    """Training loss over steps, one panel per model, one line per learning rate."""
    plt = _pyplot()
    models = data.models()
    figure, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), sharey=True)
    axes = np.atleast_1d(axes)
    for axis, model in zip(axes, models):
        points = data.of(model)
        colors = plt.cm.plasma(np.linspace(0, 0.85, len(points)))
        for point, color in zip(points, colors):
            losses = point.row.get("train_loss", [])
            label = f"lr {point.lr:g}" + (" (diverged)" if point.status == "diverged" else "")
            axis.plot(range(1, len(losses) + 1), losses, color=color, lw=1, label=label)
        axis.set_title(model)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0].set_ylabel("training loss")
    return _save(figure, path)


def s1_dynamics(data: Stability, path: Path) -> Path:
    """ρ(Ā) and the state norm at T = μ_rec over training for the looped models."""
    plt = _pyplot()
    figure, (radius, norm) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"parcae": "-", "rdm": "--"}
    for model in [m for m in data.models() if m in styles]:
        points = data.of(model)
        colors = plt.cm.plasma(np.linspace(0, 0.85, len(points)))
        for point, color in zip(points, colors):
            steps = point.row.get("eval_step", [])
            label = f"{model} lr {point.lr:g}"
            for axis, key in ((radius, "spectral_radius"), (norm, "state_norm")):
                values = [np.nan if v is None else v for v in point.row.get(key, [])]
                axis.plot(steps, values, styles[model], color=color, lw=1.2, label=label)
    radius.axhline(1.0, color="gray", lw=0.8)
    radius.set_ylabel("ρ(Ā)")
    radius.set_title("spectral radius of the injection (— parcae, -- rdm)")
    norm.set_yscale("log")
    norm.set_ylabel("mean ‖h_T‖ over tokens")
    norm.set_title("state norm at T = μ_rec")
    for axis in (radius, norm):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3, which="both")
    norm.legend(fontsize=6, ncol=2)
    return _save(figure, path)


def s1_through_depth(data: Stability, path: Path) -> Path:
    """The trained looped models' state norm ‖h_t‖ against the loop step t (to 2·μ_rec)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    styles = {"parcae": "o-", "rdm": "s--"}
    for model in [m for m in data.models() if m in styles]:
        points = [p for p in data.of(model) if p.trace]
        colors = plt.cm.plasma(np.linspace(0, 0.85, max(len(data.of(model)), 1)))
        for point, color in zip(points, colors):
            axis.plot(
                range(len(point.trace)),
                point.trace,
                styles[model],
                color=color,
                ms=3,
                lw=1.2,
                label=f"{model} lr {point.lr:g}",
            )
    axis.set_yscale("log")
    axis.set_xlabel("loop step t")
    axis.set_ylabel("mean ‖h_t‖ over tokens")
    axis.set_title("S1: the state through depth (— parcae, -- rdm)")
    axis.grid(alpha=0.3, which="both")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=6, ncol=2)
    return _save(figure, path)


def s2_quality(data: Quality, path: Path) -> Path:
    """Validation loss (mean ± std over seeds) against training tokens and training FLOPs."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series = (  # (model, metric, style, alpha, label)
        ("parcae", "loss", "o-", 1.0, "parcae (T = μ_rec)"),
        ("parcae", "loss_t1", "s--", 0.6, "parcae at T = 1"),
        ("gpt", "loss", "o-", 1.0, "gpt"),
    )
    for axis, x_name in zip(axes, ("tokens", "flops")):
        for model, metric, style, alpha, label in series:
            cells = [c for c in data.cells if c.model == model]
            if not cells:
                continue
            stats = [getattr(c, metric) for c in cells]
            axis.errorbar(
                [getattr(c, x_name) for c in cells],
                [s.mean for s in stats],
                yerr=[s.std for s in stats],
                fmt=style,
                capsize=3,
                color=COLORS[model],
                alpha=alpha,
                label=label,
            )
        axis.set_xscale("log")
        axis.set_xlabel("training tokens" if x_name == "tokens" else "training FLOPs")
        axis.set_ylabel("validation loss")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    axes[0].set_title("S2: at equal parameters and tokens")
    axes[1].set_title("S2: at equal training FLOPs")
    return _save(figure, path)


def s3_depth(studies: list[DepthStudy], path: Path) -> Path:
    """bpb and CORE (centered accuracy) against the test-time depth T, with the fitted laws."""
    plt = _pyplot()
    figure, (bpb_axis, core_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 0.85, max(len(studies), 1)))
    for study, color in zip(studies, colors):
        label = f"μ_rec={study.mean_recurrence}, seed {study.name.rsplit('_seed=', 1)[-1]}"
        for axis, values, law in (
            (bpb_axis, study.bpb, study.bpb_law),
            (core_axis, study.core, study.core_law),
        ):
            if not values:
                continue
            depths = sorted(values)
            axis.plot(depths, [values[d] for d in depths], "o", color=color, ms=3, label=label)
            if law is not None:
                grid = np.linspace(depths[0], depths[-1], 200)
                axis.plot(grid, law.predict(grid), "-", color=color, lw=1)
            axis.axvline(study.mean_recurrence, color=color, lw=0.6, ls=":")
    bpb_axis.set_ylabel("validation bits per byte")
    bpb_axis.set_title("S3: L(T) = L_inf + Z·exp(−z·T) (dotted: μ_rec)")
    core_axis.set_ylabel("BIG-bench CORE (centered accuracy)")
    core_axis.axhline(0.0, color="gray", lw=0.8)
    core_axis.set_title("S3: BIG-bench tasks against T (0 = chance)")
    for axis in (bpb_axis, core_axis):
        axis.set_xlabel("test-time depth T")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    return _save(figure, path)


def s4_isoflop(data: Isoflop, directory: Path) -> list[Path]:
    """The isoFLOP curves and laws (`parcae fit isoflop`'s plots) as S4-*.png."""
    from parcae.scaling.isoflop import plot_isoflop

    paths = []
    with tempfile.TemporaryDirectory() as scratch:
        for plot in plot_isoflop(data.fit, data.points, scratch):
            target = directory / f"S4-{plot.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(plot), target)
            paths.append(target)
    return paths
