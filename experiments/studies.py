"""The four studies of the small-scale reproduction (docs/REPRODUCTION.md) as lists of runs.

Every run trains the CPU-sized "micro" models: the tiny presets at width 128 (2 heads, FFN 512,
2+2+2 layers, GPT 6 layers), Shakespeare with the 4,096-token tokenizer, 12 x 256-token batches,
bf16 autocast where the CPU has it. The studies:

- S1, stability: AdamW (every parameter at the same lr) for parcae, rdm (linear injection, no
  prelude norm) and gpt at 6 learning rates over 1.5 decades, 150 steps, evaluated every 25
  steps (val loss, ρ(Ā), state norm at T = μ_rec); seed 0, and seeds 1 and 2 at one rate.
- S2, quality: parcae and gpt at their best S1 learning rate, 3 seeds, at 200 and 600 steps.
- S3, the test-time law: parcae at μ_rec = 4 (S2's 600-step runs) and μ_rec = 8 (trained here),
  bpb by `parcae eval` at T = 1..3·μ_rec with the depth-law fit, and the BIG-bench tasks (seed
  0) at the `task_depths`.
- S4, isoFLOP: the `configs/sweeps/isoflop-tiny.yaml` sweep (parcae-tiny, 3 budgets x 4 μ_rec).

`--quick` shrinks every study to a smoke test (a few steps, fewer points) that checks the
plumbing, not the science.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

STUDIES = ("S1", "S2", "S3", "S4")
MICRO = {"d_model": 128, "ffn_dim": 512, "n_heads": 2}
MODELS = {"parcae": "parcae-tiny", "rdm": "rdm-tiny", "gpt": "gpt-tiny"}
S1_LRS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032)  # 32x = 1.5 decades
S1_STEPS = 150
S1_SEED_LRS = (0.016,)  # the rate S1 repeats with seeds 1 and 2: where the models part ways
S2_STEPS = (200, 600)
S3_STEPS = 600  # S3's models: S2's parcae runs of this length (μ_rec = 4) and one at μ_rec = 8
SEEDS = (0, 1, 2)
S3_RECURRENCES = (4, 8)
S3_MAX_PER_TASK = 100  # BIG-bench items per task at each depth
ISOFLOP_SWEEP = "configs/sweeps/isoflop-tiny.yaml"

# every run: TrainConfig keys (the model and its budget are the run's own)
BASE: dict[str, Any] = dict(
    data="shakespeare",
    vocab_size=4096,
    batch_size=12,
    seq_len=256,
    optimizer="adamw",
    weight_decay=0.1,
    warmup_steps=15,
    decay_fraction=0.5,
    eval_every=25,
    eval_batches=1,
    final_eval_batches=8,
    checkpoint_every=100,
    keep_checkpoints=1,
    progress=False,
    tensorboard=False,
    sample_tokens=0,
)


@dataclass(frozen=True)
class RunSpec:
    """One training run: `name` is its directory and its key in the study's results table;
    `labels` become the table's columns; `config` is TrainConfig keys over BASE."""

    study: str
    name: str
    labels: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)


def training_run(
    study: str, model: str, lr: float, seed: int, steps: int, mean_recurrence: int | None = None
) -> RunSpec:
    """A micro `model` ("parcae", "rdm" or "gpt") trained with AdamW at `lr` for `steps`."""
    overrides = dict(MICRO)
    name = f"{model}_lr={lr:g}_steps={steps}_seed={seed}"
    if mean_recurrence is not None:
        overrides.update(
            mean_recurrence=mean_recurrence, mean_backprop_depth=math.ceil(mean_recurrence / 2)
        )
        name = f"{model}_mu={mean_recurrence}_lr={lr:g}_steps={steps}_seed={seed}"
    looped = model != "gpt"
    config = dict(
        BASE,
        model=MODELS[model],
        model_overrides=overrides,
        lr=lr,
        adam_lr=lr,
        seed=seed,
        max_steps=steps,
        eval_depths=[mean_recurrence or 4] if looped else None,
    )
    labels = dict(model=model, lr=lr, seed=seed, steps=steps, mean_recurrence=mean_recurrence or 4)
    if not looped:
        labels["mean_recurrence"] = None
    return RunSpec(study, name, labels, config)


def s1_runs(quick: bool) -> list[RunSpec]:
    """Every model at every rate with seed 0, then seeds 1 and 2 at S1_SEED_LRS."""
    lrs = S1_LRS[::2] if quick else S1_LRS
    steps = 6 if quick else S1_STEPS
    models = ("parcae", "rdm", "gpt")
    runs = [training_run("S1", m, lr, 0, steps) for m in models for lr in lrs]
    if not quick:
        runs += [
            training_run("S1", m, lr, seed, steps)
            for seed in SEEDS[1:]
            for m in models
            for lr in S1_SEED_LRS
        ]
    return runs


def s2_runs(best_lr: dict[str, float], quick: bool) -> list[RunSpec]:
    """Parcae and GPT at their best S1 learning rates (`best_lr[model]`)."""
    if quick:
        return [training_run("S2", model, best_lr[model], 0, 6) for model in ("parcae", "gpt")]
    return [
        training_run("S2", model, best_lr[model], seed, steps)
        for steps in S2_STEPS
        for model in ("parcae", "gpt")
        for seed in SEEDS
    ]


def task_depths(mean_recurrence: int) -> list[int]:
    """The depths S3 scores the BIG-bench tasks at: powers of two up to 3·μ_rec, and 3·μ_rec
    (the tasks cost a forward per depth; bpb is measured at every depth in one)."""
    last = 3 * mean_recurrence
    return sorted({2**k for k in range(last.bit_length()) if 2**k <= last} | {last})


def s3_runs(best_lr: dict[str, float], quick: bool) -> list[RunSpec]:
    """The μ_rec = 8 model (the μ_rec = 4 ones are S2's runs of S3_STEPS)."""
    steps = 6 if quick else S3_STEPS
    return [training_run("S3", "parcae", best_lr["parcae"], 0, steps, mean_recurrence=8)]
