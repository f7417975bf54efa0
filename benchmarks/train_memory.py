"""Training memory: how the activations saved for backward grow with the loop depth, measured
on the CPU at tiny scale, and the estimated peak of a paper-size training step.

    python benchmarks/train_memory.py [--batch 4 --seq 256] [--estimate parcae-140m
        --estimate-batch 8 --estimate-seq 2048] [--optimizer muon] [--json PATH]

1. `parcae-tiny` (float32, real tensors) runs one forward and backward per fixed depth plan
   (every row: μ_rec - μ_bwd loop steps without gradient, then μ_bwd with), over μ_rec at
   μ_bwd = 2 and over μ_bwd at μ_rec = 8, without and with activation checkpointing. Each
   row gives the bytes saved for backward (`parcae.train.memory.SavedActivations`) and the
   peak of CPU memory allocated during forward and backward (the profiler's allocation
   events), above the model and the batch.
2. The estimate (`parcae.train.memory.estimate_training_memory`): the preset on fake tensors,
   one bf16-autocast forward at the worst gradient depth the sampler draws (k = μ_bwd, after
   μ_rec - μ_bwd steps without gradient), plus parameters, gradients, optimizer state and the
   loss's (N, V_pad) float32 tensors, without and with checkpointing.

The formula found (bytes per token and gradient step, ...) is in `parcae.train.memory`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch
from common import apply_threads

from parcae.model import create_model, preset_config
from parcae.model.config import ParcaeConfig
from parcae.train.memory import (
    estimate_training_memory,
    loss_transient_bytes,
    measure_step,
    truncated_plan,
)
from parcae.train.model import checkpoint_blocks

MIB, GIB = 2**20, 2**30
TINY = "parcae-tiny"
SLOPE_KEYS = ("saved", "peak", "checkpointed_saved", "checkpointed_peak")


def depth_grid(recurrences: list[int], depths: list[int]) -> list[tuple[int, int]]:
    """(μ_rec, μ_bwd) rows: each μ_rec at μ_bwd = 2, then each μ_bwd at μ_rec = 8."""
    rows = [(r, 2) for r in recurrences] + [(8, k) for k in depths]
    return list(dict.fromkeys(rows))


def measure_tiny(batch: int, seq: int, rows: list[tuple[int, int]]) -> dict:
    """Saved and peak bytes of `parcae-tiny` for each (μ_rec, μ_bwd) row, plain and
    checkpointed, and the bytes each extra gradient step adds."""
    config = preset_config(TINY)
    models = {}
    for checkpointed in (False, True):
        torch.manual_seed(0)
        models[checkpointed] = create_model(config, "cpu").train()
        if checkpointed:
            checkpoint_blocks(models[checkpointed])
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randint(0, config.vocab_size, (2, batch, seq), generator=generator)
    results = []
    for recurrence, depth in rows:
        plan = truncated_plan(batch, recurrence - depth, depth)
        row = {"mean_recurrence": recurrence, "mean_backprop_depth": depth}
        for checkpointed, model in models.items():
            memory = measure_step(model, inputs, targets, plan)
            prefix = "checkpointed_" if checkpointed else ""
            row.update({f"{prefix}saved": memory.saved, f"{prefix}peak": memory.peak})
        results.append(row)
    return {
        "model": TINY,
        "precision": "fp32",
        "batch": batch,
        "seq_len": seq,
        "rows": results,
        "per_grad_step": {key: grad_step_bytes(results, key) for key in SLOPE_KEYS},
        "loss_transient": loss_transient_bytes(batch * seq, config.padded_vocab_size),
    }


def grad_step_bytes(rows: list[dict], key: str) -> float:
    """The bytes one more gradient step adds to `key`, between the shallowest and deepest
    μ_bwd at μ_rec = 8."""
    at_8 = sorted((r["mean_backprop_depth"], r[key]) for r in rows if r["mean_recurrence"] == 8)
    (k0, low), (k1, high) = at_8[0], at_8[-1]
    return (high - low) / (k1 - k0)


def estimate(preset: str, batch: int, seq: int, optimizer: str) -> dict:
    """`estimate_training_memory` of `preset` at its worst gradient depth, plain and
    checkpointed, and the saved bytes one more gradient step would add."""
    config = preset_config(preset)
    if not isinstance(config, ParcaeConfig):
        raise SystemExit(f"{preset} does not loop: pick a parcae-* preset")
    recurrence, depth = config.mean_recurrence, config.mean_backprop_depth
    plan = truncated_plan(batch, max(recurrence - depth, 0), depth)
    deeper = truncated_plan(batch, max(recurrence - depth, 0), depth + 1)
    result = {"model": preset, "batch": batch, "seq_len": seq, "optimizer": optimizer}
    result.update(mean_recurrence=recurrence, grad_steps=depth, precision="bf16 autocast")
    for checkpointed in (False, True):
        memory = estimate_training_memory(config, batch, seq, plan, optimizer, True, checkpointed)
        more = estimate_training_memory(config, batch, seq, deeper, optimizer, True, checkpointed)
        prefix = "checkpointed" if checkpointed else "plain"
        result[prefix] = {**asdict(memory), "total": memory.total}
        result[f"{prefix}_saved_per_grad_step"] = more.activations - memory.activations
    return result


def print_tiny(tiny: dict) -> None:
    tokens = tiny["batch"] * tiny["seq_len"]
    print(
        f"{tiny['model']}, batch {tiny['batch']} x {tiny['seq_len']}, {tiny['precision']}, CPU; "
        "fixed plans: μ_rec - μ_bwd steps without gradient, then μ_bwd with"
    )
    print("                    saved for backward      peak in forward+backward   (MiB)")
    print(" μ_rec  μ_bwd        plain  checkpointed       plain  checkpointed")
    for row in tiny["rows"]:
        print(
            f"  {row['mean_recurrence']:4d}  {row['mean_backprop_depth']:5d}   "
            f"{row['saved'] / MIB:10.2f}  {row['checkpointed_saved'] / MIB:12.2f}   "
            f"{row['peak'] / MIB:9.2f}  {row['checkpointed_peak'] / MIB:12.2f}"
        )
    step = tiny["per_grad_step"]
    print(
        "  per extra gradient step: saved "
        f"{step['saved'] / MIB:.2f} MiB ({step['saved'] / tokens:,.0f} B/token), "
        f"checkpointed {step['checkpointed_saved'] / MIB:.2f} MiB "
        f"({step['checkpointed_saved'] / tokens:,.0f} B/token); peak "
        f"{step['peak'] / MIB:.2f} / {step['checkpointed_peak'] / MIB:.2f} MiB"
    )
    above = [r[f"{p}peak"] - r[f"{p}saved"] for r in tiny["rows"] for p in ("", "checkpointed_")]
    print(
        f"  peak - saved: {min(above) / MIB:.2f} to {max(above) / MIB:.2f} MiB in every row; "
        "the estimate's loss term N V_pad fp32 (the logits' gradient) = "
        f"{tiny['loss_transient'] / MIB:.2f} MiB"
    )


def print_estimate(result: dict) -> None:
    tokens = result["batch"] * result["seq_len"]
    print(
        f"\n{result['model']}, batch {result['batch']} x {result['seq_len']}, μ_rec "
        f"{result['mean_recurrence']} with {result['grad_steps']} gradient steps (the worst "
        f"case), {result['precision']}, {result['optimizer']}: estimated on fake tensors (GiB)"
    )
    labels = {
        "parameters": "parameters (fp32)",
        "gradients": "gradients (fp32)",
        "optimizer": f"optimizer state ({result['optimizer']})",
        "activations": "activations saved for backward",
        "loss": "gradient of the logits (N V_pad fp32)",
        "total": "total (upper bound of the peak)",
    }
    print(f"  {'':42s}  {'plain':>8s}  {'checkpointed':>12s}")
    for key, label in labels.items():
        plain, checkpointed = result["plain"][key], result["checkpointed"][key]
        print(f"  {label:42s}  {plain / GIB:8.2f}  {checkpointed / GIB:12.2f}")
    plain, checkpointed = (result[f"{p}_saved_per_grad_step"] for p in ("plain", "checkpointed"))
    print(
        f"  saved per gradient step: {plain / GIB:.3f} GiB ({plain / tokens:,.0f} B/token) "
        f"plain, {checkpointed / GIB:.3f} GiB ({checkpointed / tokens:,.0f} B/token) "
        "checkpointed"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="tiny-scale rows")
    parser.add_argument("--seq", type=int, default=256, help="tiny-scale tokens per row")
    parser.add_argument("--recurrences", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--backprop-depths", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--estimate", default="parcae-140m", help="preset to estimate")
    parser.add_argument("--estimate-batch", type=int, default=8)
    parser.add_argument("--estimate-seq", type=int, default=2048)
    parser.add_argument("--optimizer", choices=["muon", "adamw"], default="muon")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    apply_threads(args)
    if min(args.recurrences) < 2 or max(args.backprop_depths) > 8:
        parser.error("μ_rec must be at least μ_bwd = 2, and μ_bwd at most μ_rec = 8")
    if len(set(args.backprop_depths)) < 2:
        parser.error("give at least two --backprop-depths (the cost of a gradient step)")

    rows = depth_grid(args.recurrences, args.backprop_depths)
    tiny = measure_tiny(args.batch, args.seq, rows)
    print_tiny(tiny)
    result = estimate(args.estimate, args.estimate_batch, args.estimate_seq, args.optimizer)
    print_estimate(result)
    if args.json is not None:
        args.json.write_text(json.dumps({"tiny": tiny, "estimate": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
