"""Study S2b, data-rich language modelling: does looping pay at >= 20 tokens per parameter?

The earlier S2 runs saw 0.2-0.6 tokens per parameter (the paper's, about 80). Here a model small
enough for 25 tokens per parameter on 2 cores trains on the `classics` corpus (King James Bible +
Shakespeare, 9.1 MB, public domain; `parcae.data.recipes`) with a 512-token tokenizer and the
official optimizer recipe, 3 seeds:

- `parcae`: 1 prelude, 1 core, 1 coda layer at width 48, μ_rec = 4, for TOKENS_PER_PARAM tokens
  per parameter;
- `gpt-tokens`: the parameter-matched GPT (the same 3 layers) on as many tokens;
- `gpt-flops`: the same GPT on as many training FLOPs as the Parcae run (more tokens).

Records hold each run's validation loss along training (Parcae at T = μ_rec). The summary gives,
at each Parcae eval point, the gap L_parcae − L_gpt at equal tokens and at equal FLOPs (the GPT's
curve interpolated at the Parcae's FLOPs), mean ± standard error over seeds, against tokens per
parameter, and the first point where a gap changes sign (where the curves cross); the figure is
`s2b.png`.

    python experiments/s2b_datarich.py            # the full study (~90 min of 2 cores)
    python experiments/s2b_datarich.py --quick    # seconds: the plumbing only
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

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

from parcae import create_model  # noqa: E402
from parcae.scaling import training_flops_per_token  # noqa: E402

TOKENS_PER_PARAM = 25
LAYERS = {"n_prelude": 1, "n_core": 1, "n_coda": 1, "mean_recurrence": 4, "mean_backprop_depth": 2}
FULL = dict(
    data="classics", vocab_size=512, width=dict(d_model=48, ffn_dim=192, n_heads=1),
    batch_size=16, seq_len=128, evals=12, eval_batches=16,
)  # fmt: skip
QUICK = dict(
    data=None, vocab_size=300, width=dict(d_model=32, ffn_dim=32, n_heads=1),
    batch_size=2, seq_len=16, evals=2, eval_batches=1, tokens=96,
)  # fmt: skip
MODELS = {
    "parcae": ("parcae-tiny", LAYERS),
    "gpt-tokens": ("gpt-tiny", {"n_layers": 3}),
    "gpt-flops": ("gpt-tiny", {"n_layers": 3}),
}


def budget(size: dict) -> dict[str, float]:
    """The Parcae run's params, tokens and training FLOPs (the GPTs' budgets derive from it)."""
    preset, layers = MODELS["parcae"]
    overrides = {**size["width"], **layers, "vocab_size": size["vocab_size"]}
    model = create_model(preset, device="meta", **overrides)
    params = model.num_params()
    tokens = size.get("tokens", TOKENS_PER_PARAM * params)
    flops = tokens * training_flops_per_token(model.config, size["seq_len"])
    return {"params": params, "tokens": tokens, "flops": flops}


def run(name: str, model: str, seed: int, size: dict, plan: dict, runs: Path) -> dict:
    """Train one run of the study; its record (validation loss along training)."""
    preset, layers = MODELS[model]
    step_tokens = size["batch_size"] * size["seq_len"]
    limit = {"max_flops": plan["flops"]} if model == "gpt-flops" else {"max_tokens": plan["tokens"]}
    steps = int(plan["tokens"] // step_tokens)
    fields = dict(
        OFFICIAL_OPTIMIZER,
        **limit,
        max_steps=None,
        model=preset,
        model_overrides={**size["width"], **layers, "context_length": size["seq_len"]},
        data=size["data"],
        vocab_size=size["vocab_size"],
        seq_len=size["seq_len"],
        batch_size=size["batch_size"],
        out_dir=str(runs / name),
        seed=seed,
        eval_every=max(steps // size["evals"], 1),
        eval_batches=size["eval_batches"],
        final_eval_batches=size["eval_batches"],
        checkpoint_every=max(steps // 4, 1),
        keep_checkpoints=1,
        sample_tokens=0,
        progress=False,
        tensorboard=False,
    )
    out_dir, evals = train_run(fields)
    config = create_model(preset, device="meta", **fields["model_overrides"],
                          vocab_size=size["vocab_size"]).config  # fmt: skip
    fpt = training_flops_per_token(config, size["seq_len"])
    return {
        "model": model,
        "seed": seed,
        "params": plan["params"] if model == "parcae" else None,
        "training_flops_per_token": fpt,
        "budget": plan,
        "curve": [
            {"tokens": r["tokens"], "flops": r["tokens"] * fpt, "loss": _loss(r["val_loss"])}
            for r in evals
        ],
    }


def _loss(by_depth: dict[str, float]) -> float:
    """The loss at the model's own depth: μ_rec (the largest evaluated) or a GPT's one depth."""
    return by_depth[max(by_depth, key=lambda key: int(key) if key.isdigit() else 0)]


def summarise(records: list[dict]) -> dict:
    """Gaps at equal tokens and equal FLOPs against tokens per parameter, over seeds."""
    by_seed: dict[int, dict[str, dict]] = {}
    for record in records:
        by_seed.setdefault(record["seed"], {})[record["model"]] = record
    complete = {s: runs for s, runs in by_seed.items() if set(runs) == set(MODELS)}
    if not complete:
        return {"seeds": [], "points": []}
    params = next(iter(complete.values()))["parcae"]["params"]
    gaps: dict[str, dict[int, list[float]]] = {"equal_tokens": {}, "equal_flops": {}}
    for runs in complete.values():
        parcae = runs["parcae"]["curve"]
        for key, other, axis in (
            ("equal_tokens", runs["gpt-tokens"]["curve"], "tokens"),
            ("equal_flops", runs["gpt-flops"]["curve"], "flops"),
        ):
            xs = [point[axis] for point in other]
            ys = [point["loss"] for point in other]
            for point in parcae:
                if xs[0] <= point[axis] <= xs[-1]:
                    gpt = float(np.interp(point[axis], xs, ys))
                    gaps[key].setdefault(point["tokens"], []).append(point["loss"] - gpt)
    points = []
    for tokens in sorted(set(gaps["equal_tokens"]) | set(gaps["equal_flops"])):
        entry: dict[str, Any] = {"tokens": tokens, "tokens_per_param": tokens / params}
        for key, table in gaps.items():
            if tokens in table:
                entry[key] = mean_and_error(table[tokens])
        points.append(entry)
    crossings = {}
    for key in gaps:
        signs = [(p["tokens_per_param"], np.sign(p[key][0])) for p in points if key in p]
        crossings[key] = next(
            (tpp for (_, a), (tpp, b) in zip(signs, signs[1:]) if a != b and b != 0), None
        )
    return {"seeds": sorted(complete), "params": params, "points": points, "crossing": crossings}


def plot(summary: dict, path: Path) -> Path:
    """Gap L_parcae − L_gpt (nats) against tokens per parameter, at equal tokens and FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for key, label in (("equal_tokens", "equal tokens"), ("equal_flops", "equal FLOPs")):
        points = [p for p in summary["points"] if key in p]
        axis.errorbar(
            [p["tokens_per_param"] for p in points],
            [p[key][0] for p in points],
            yerr=[p[key][1] for p in points],
            marker="o",
            capsize=2,
            label=label,
        )
    axis.axhline(0.0, color="grey", linewidth=0.8)
    axis.set(
        xlabel="tokens per parameter (Parcae)",
        ylabel="val loss gap, Parcae − GPT (nats)",
        title=f"S2b: seeds {summary['seeds']}",
    )
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = study_arguments(__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="corpus (default: classics)")
    args = parser.parse_args(argv)
    size = dict(QUICK if args.quick else FULL)
    size["data"] = args.data or size["data"] or "classics"
    results = args.results or RESULTS / ("s2b-quick" if args.quick else "s2b")
    runs = args.runs or ROOT.parent / "runs" / "s2b"
    plan = budget(size)
    print(
        f"s2b: parcae {plan['params']:,} parameters, {plan['tokens']:,} tokens "
        f"({plan['tokens'] / plan['params']:.1f} per parameter), {plan['flops']:.3g} FLOPs"
    )
    todo = [
        (f"{model}-s{seed}", lambda m=model, s=seed: run(f"{m}-s{s}", m, s, size, plan, runs))
        for seed in seeds_of(args.seeds)
        for model in MODELS
    ]
    run_all(todo, results)
    summary = summarise(read_records(results))
    write_json(results / "_summary.json", summary)
    print(f"summary: {results / '_summary.json'}\nfigure: {plot(summary, results / 's2b.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
