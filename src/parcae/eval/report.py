"""Print evaluation results and fit the test-time depth law to them (from a live run or a saved
results JSON, `parcae.eval.run`)."""

from __future__ import annotations

from pathlib import Path

from parcae.eval.law import DepthLaw, laws_from_results, plot_depth_law


def format_table(results: dict) -> str:
    """Tasks × depths: accuracy (centered accuracy), then CORE, bpb and loss rows."""
    depths = results["depths"]
    header = f"{'task':<34}" + "".join(
        f"{'T=' + d if d != 'fixed' else 'fixed':>16}" for d in depths
    )
    lines = [header, "-" * len(header)]
    by_task: dict[str, dict[str, dict]] = {}
    for record in results["results"]:
        key = "fixed" if record["depth"] is None else str(record["depth"])
        by_task.setdefault(record["task"], {})[key] = record
    for task, cells in by_task.items():
        row = "".join(
            f"{cells[d]['accuracy']:>7.3f} ({cells[d]['centered']:+.3f})"
            if d in cells
            else " " * 16
            for d in depths
        )
        lines.append(f"{task:<34}{row}")
    for metric, label in (("core", "CORE (mean centered)"), ("bpb", "bpb"), ("loss", "loss")):
        if metric in results:
            table = results[metric]
            lines.append(
                f"{label:<34}" + "".join(f"{table.get(d, float('nan')):>16.4f}" for d in depths)
            )
    truncated = {r["task"]: r["truncated"] for r in results["results"] if r["truncated"]}
    if truncated:
        counts = ", ".join(f"{task} {n}" for task, n in truncated.items())
        lines.append(f"items truncated from the left to fit the context: {counts}")
    return "\n".join(lines)


def fit_laws(results: dict, out_dir: Path, stem: str) -> tuple[dict[str, DepthLaw], list[Path]]:
    """Fit L(T) = L_inf + Z exp(-z T) to each metric of `results` with >= 3 depths, and plot
    each to `out_dir/<stem>-<metric>-law.png` with μ_rec marked."""
    laws = laws_from_results(results)
    plots = [
        plot_depth_law(
            law,
            out_dir / f"{stem}-{metric}-law.png",
            mean_recurrence=results.get("mean_recurrence"),
            title=f"{results.get('model', '')}: {metric} against test-time depth",
        )
        for metric, law in laws.items()
    ]
    return laws, plots


def format_laws(laws: dict[str, DepthLaw]) -> str:
    header = f"{'metric':<8}{'L_inf':>12}{'Z':>12}{'z':>12}{'R^2':>9}{'T95':>9}"
    lines = [header, "-" * len(header)]
    for metric, law in laws.items():
        lines.append(
            f"{metric:<8}{law.l_inf:>12.5g}{law.amplitude:>12.5g}{law.rate:>12.5g}"
            f"{law.r2:>9.4f}{law.t95:>9.2f}"
        )
    saturated = [metric for metric, law in laws.items() if law.saturated]
    if saturated:
        lines.append(
            f"{', '.join(saturated)}: saturated between the first two depths; z is at its upper "
            "bound (a lower bound on the true rate) and Z is not meaningful"
        )
    return "\n".join(lines)
