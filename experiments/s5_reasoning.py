"""Study S5, depth on reasoning: does looping buy what depth buys on a task that needs depth?

Models, all of width d with the same blocks (so the first two have equal parameters):
- `parcae-mu4`, `parcae-mu8`: 1 prelude, 1 core and 1 coda layer, the core looped μ_rec = 4
  or 8 times in training (truncated backprop through μ_rec / 2); RECURRENCES lists the μ_rec of
  each mode;
- `gpt-same-layers`: a GPT with the same 3 unique layers (parameter-matched);
- `gpt-flops-mu4`, `gpt-flops-mu8`: a GPT as deep as the unrolled Parcae (2 + μ_rec layers),
  the same forward FLOPs per token at T = μ_rec (and more parameters).

Every model trains on the synthetic task TRAIN_TASK (`parcae.data.synth`) with the official
optimizer recipe, one run per model and seed; a run's record holds the greedy-answer accuracy on
EVAL_TASK (more hops than trained on) by difficulty and, for Parcae, at every test-time depth
T = 1 .. 2·μ_rec (`parcae.eval.reasoning`). The summary (`_summary.json`) gives the mean and
standard error over seeds, the depth law A(T) = A_inf + Z exp(-z T) fitted to Parcae's mean
accuracy (`parcae.eval.law`), and the figure `s5.png`: accuracy by difficulty (Parcae at T = 1,
μ_rec, 2·μ_rec and both GPTs) and accuracy against T.

    python experiments/s5_reasoning.py            # the full study (~90 min of 2 cores)
    python experiments/s5_reasoning.py --quick    # seconds: the plumbing only
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 (the folder is not a package)
    OFFICIAL_OPTIMIZER,
    RESULTS,
    ROOT,
    mean_and_error,
    read_records,
    run_all,
    seeds_of,
    study_arguments,
    train_run,
    write_json,
)

from parcae import from_pretrained  # noqa: E402
from parcae.errors import DataError  # noqa: E402
from parcae.eval.law import fit_depth_law  # noqa: E402
from parcae.eval.reasoning import parse_spec, reasoning_accuracy  # noqa: E402
from parcae.scaling import forward_flops_per_token  # noqa: E402

TRAIN_TASK = "synth:phop?hops=1-4"
EVAL_TASK = "synth:phop?hops=1-6"
FULL = dict(
    d_model=64, ffn_dim=256, n_heads=4, steps=1500, batch_size=32, items=200, eval_batches=4
)
QUICK = dict(d_model=32, ffn_dim=32, n_heads=1, steps=2, batch_size=4, items=2, eval_batches=1)
RECURRENCES = {"full": (4, 8), "quick": (2,)}
SEQ_LEN = max(parse_spec(TRAIN_TASK).max_tokens, parse_spec(EVAL_TASK).max_tokens)


def models(recurrences: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Run name prefix -> (preset, model overrides beyond the width)."""
    table: dict[str, dict[str, Any]] = {"gpt-same-layers": {"model": "gpt-tiny", "n_layers": 3}}
    for mu in recurrences:
        table[f"parcae-mu{mu}"] = {
            "model": "parcae-tiny",
            "n_prelude": 1,
            "n_core": 1,
            "n_coda": 1,
            "mean_recurrence": mu,
            "mean_backprop_depth": max(mu // 2, 1),
        }
        table[f"gpt-flops-mu{mu}"] = {"model": "gpt-tiny", "n_layers": 2 + mu}
    return table


def run(name: str, spec: dict[str, Any], seed: int, size: dict, runs: Path) -> dict:
    """Train one model on TRAIN_TASK and score it on EVAL_TASK; its record."""
    overrides = {key: value for key, value in spec.items() if key != "model"}
    width = {key: size[key] for key in ("d_model", "ffn_dim", "n_heads")}
    fields = dict(
        OFFICIAL_OPTIMIZER,
        model=spec["model"],
        model_overrides={**width, **overrides, "context_length": 128},
        data=TRAIN_TASK,
        seq_len=SEQ_LEN,
        out_dir=str(runs / name),
        seed=seed,
        max_steps=size["steps"],
        batch_size=size["batch_size"],
        eval_every=max(size["steps"] // 5, 1),
        eval_batches=size["eval_batches"],
        final_eval_batches=size["eval_batches"],
        eval_batch_size=64,
        checkpoint_every=max(size["steps"] // 2, 1),
        keep_checkpoints=1,
        sample_tokens=0,
        progress=False,
        tensorboard=False,
    )
    out_dir, evals = train_run(fields)
    model = from_pretrained(out_dir / "model")
    mu = model.config.default_depth  # None: a fixed-depth model, evaluated once
    depths = [None] if mu is None else list(range(1, 2 * mu + 1))
    results = reasoning_accuracy(model, EVAL_TASK, depths, items=size["items"])
    accuracy: dict[str, dict[str, float]] = {}
    for result in results:
        difficulty = result.task.rsplit("=", 1)[1]
        accuracy.setdefault(difficulty, {})[
            "fixed" if result.depth is None else str(result.depth)
        ] = result.accuracy
    return {
        "model": spec["model"],
        "overrides": overrides,
        "seed": seed,
        "mean_recurrence": mu,
        "params": model.num_params(),
        "forward_flops_per_token": forward_flops_per_token(model.config, SEQ_LEN),
        "steps": size["steps"],
        "train_task": TRAIN_TASK,
        "eval_task": EVAL_TASK,
        "items_per_difficulty": size["items"],
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "accuracy": accuracy,
    }


def summarise(records: list[dict]) -> dict:
    """Mean ± standard error over seeds of each model's accuracy by difficulty and depth, the
    mean over difficulties by depth, and the depth law fitted to Parcae's."""
    by_model: dict[str, list[dict]] = {}
    for record in records:
        by_model.setdefault(record["name"].rsplit("-s", 1)[0], []).append(record)
    summary: dict[str, Any] = {}
    for model, runs in sorted(by_model.items()):
        difficulties = sorted(runs[0]["accuracy"], key=int)
        depths = list(runs[0]["accuracy"][difficulties[0]])
        cells = {
            d: {t: mean_and_error([r["accuracy"][d][t] for r in runs]) for t in depths}
            for d in difficulties
        }
        overall = {
            t: mean_and_error(
                [sum(r["accuracy"][d][t] for d in difficulties) / len(difficulties) for r in runs]
            )
            for t in depths
        }
        entry = {
            "seeds": sorted(r["seed"] for r in runs),
            "params": runs[0]["params"],
            "forward_flops_per_token": runs[0]["forward_flops_per_token"],
            "mean_recurrence": runs[0]["mean_recurrence"],
            "accuracy": cells,
            "mean_accuracy": overall,
        }
        if runs[0]["mean_recurrence"]:
            try:
                law = fit_depth_law(
                    [int(t) for t in depths], [overall[t][0] for t in depths], "accuracy"
                )
                entry["depth_law"] = law.to_dict()
            except DataError as error:
                entry["depth_law"] = {"error": str(error)}
        summary[model] = entry
    return summary


def plot(summary: dict, path: Path) -> Path:
    """Accuracy by difficulty (left) and mean accuracy against test-time depth (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model, entry in summary.items():
        mu = entry["mean_recurrence"]
        shown = ["fixed"] if not mu else sorted({"1", str(mu), str(2 * mu)}, key=int)
        for depth in shown:
            cells = entry["accuracy"]
            difficulties = sorted(cells, key=int)
            label = model if depth == "fixed" else f"{model} T={depth}"
            left.errorbar(
                [int(d) for d in difficulties],
                [cells[d][depth][0] for d in difficulties],
                yerr=[cells[d][depth][1] for d in difficulties],
                marker="o",
                capsize=2,
                label=label,
                linestyle="-" if depth == "fixed" or depth == str(mu) else ":",
            )
        if mu:
            depths = sorted(entry["mean_accuracy"], key=int)
            right.errorbar(
                [int(t) for t in depths],
                [entry["mean_accuracy"][t][0] for t in depths],
                yerr=[entry["mean_accuracy"][t][1] for t in depths],
                marker="o",
                capsize=2,
                label=model,
            )
        else:
            right.axhline(entry["mean_accuracy"]["fixed"][0], linestyle="--", label=model)
    key = parse_spec(EVAL_TASK).task.difficulty_key
    left.set(xlabel=f"difficulty ({key})", ylabel="accuracy", title=f"by difficulty, {EVAL_TASK}")
    right.set(xlabel="test-time depth T", ylabel="mean accuracy", title="by depth")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = study_arguments(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps per run")
    parser.add_argument(
        "--models", default=None, help="comma-separated run-name prefixes to run (default: all)"
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    size = dict(QUICK if args.quick else FULL)
    size["steps"] = args.steps or size["steps"]
    results = args.results or RESULTS / ("s5-quick" if args.quick else "s5")
    runs = args.runs or ROOT.parent / "runs" / "s5"
    plan = [
        (
            f"{model}-s{seed}",
            lambda m=model, s=seed, spec=spec: run(f"{m}-s{s}", spec, s, size, runs),
        )
        for seed in seeds_of(args.seeds)
        for model, spec in models(RECURRENCES[mode]).items()
        if args.models is None or model in args.models.split(",")
    ]
    run_all(plan, results)
    summary = summarise(read_records(results))
    write_json(results / "_summary.json", summary)
    print(f"summary: {results / '_summary.json'}\nfigure: {plot(summary, results / 's5.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
