"""Quality at equal data: parcae-tiny vs gpt-tiny (parameter-matched: the same blocks without the
loop) vs rdm-tiny (Huginn-style linear injection, no prelude norm) on Shakespeare.

    python benchmarks/quality.py [--models parcae-tiny gpt-tiny rdm-tiny] [--out DIR] \
        [key=value ...]

Every model trains with `parcae.train.loop.train` on the same data, token budget, batch,
learning rate and seed (the default training config plus any `key=value` overrides, as on the
`parcae train` command line); only `model` differs. Printed per model: parameters, tokens
seen, wall time and the final validation loss and bits per byte on the val split (its first
`final_eval_batches` batches when set), at μ_rec for a looped model (every evaluated depth is
listed) and at its own depth for a GPT. A run that stops on a non-finite loss is reported as
diverged, one stopped by a signal as interrupted (checkpointed: the same `--out` resumes it
exactly). With `--out`, each run lives in `OUT/<model>` and a finished run is not trained again
(it is resumed at its last step and only evaluated), so the table can be reprinted cheaply.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import add_training_options, apply_threads

from parcae.errors import ParcaeError
from parcae.train.config import load_config
from parcae.train.loop import train

MODELS = ("parcae-tiny", "gpt-tiny", "rdm-tiny")
QUIET = ["sample_tokens=0", "progress=false"]


def run(model: str, out_root: Path, overrides: list[str]) -> dict:
    """Train `model` under `overrides`; its final evaluation, or the reason it stopped."""
    config = load_config(
        None, [*overrides, *QUIET, f"model={model}", f"out_dir={out_root / model}", "resume=true"]
    )
    started = time.perf_counter()
    try:
        result = train(config)
    except ParcaeError as error:  # a diverged run: report it, keep going
        return {
            "model": model,
            "error": f"diverged ({error})",
            "wall": time.perf_counter() - started,
        }
    if result.interrupted_by is not None:  # SIGINT/SIGTERM: checkpointed, resumable
        return {
            "model": model,
            "error": f"interrupted by signal {result.interrupted_by} at "
            f"step {result.steps}; rerun with --out {out_root} to continue",
            "wall": time.perf_counter() - started,
        }
    from parcae import from_pretrained  # the saved model, for its parameter count

    trained = from_pretrained(result.out_dir / "model")
    return {
        "model": model,
        "params": trained.num_params(),
        "tokens": result.tokens,
        "steps": result.steps,
        "skipped": result.skipped_steps,
        "eval": result.final_eval,
        "judged": headline(result.final_eval, trained.config.default_depth),
        "wall": time.perf_counter() - started,
    }


def headline(results: list, mean_recurrence: int | None) -> object:
    """The result a model is judged by: at T = μ_rec for a looped model, else its own depth."""
    for result in results:
        if result.depth == mean_recurrence:
            return result
    return results[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument(
        "--out", type=Path, default=None, help="directory for the runs (default: a temporary one)"
    )
    add_training_options(parser, "training config overrides shared by every model")
    args = parser.parse_args()
    apply_threads(args)

    with tempfile.TemporaryDirectory(prefix="parcae-quality-") as scratch:
        out_root = args.out or Path(scratch)
        reports = []
        for model in args.models:
            print(f"training {model} ...", flush=True)
            report = run(model, out_root, args.overrides)
            reports.append(report)
            if "error" in report:
                print(f"  {model}: {report['error']}", flush=True)
            else:
                depths = "  ".join(
                    f"T={'own' if r.depth is None else r.depth}: {r.bpb:.4f}"
                    for r in report["eval"]
                )
                print(f"  val bpb {depths}  ({report['wall']:.0f} s)", flush=True)

    print(
        f"\n{'model':<14}{'params':>12}{'tokens':>12}{'val loss':>10}{'val bpb':>10}"
        f"{'depth':>7}{'time':>8}"
    )
    for report in reports:
        if "error" in report:
            print(f"{report['model']:<14}  {report['error'].split(' (')[0]}")
            continue
        best = report["judged"]
        depth = "own" if best.depth is None else str(best.depth)
        print(
            f"{report['model']:<14}{report['params']:>12,}{report['tokens']:>12,}"
            f"{best.loss:>10.4f}{best.bpb:>10.4f}{depth:>7}{report['wall']:>7.0f}s"
        )


if __name__ == "__main__":
    main()
