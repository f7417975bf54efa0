"""Validation loss and bits per byte at chosen loop depths (ARCHITECTURE §5).

For target tokens y with byte lengths b(y) (UTF-8 bytes the token stands for; 0 for special
tokens, which are left out of both sums, as are ignored targets, -100: a chat-tuning prompt):

    loss = Σ nats / #tokens          bpb = Σ nats / (ln 2 · Σ b(y))

A Parcae model is evaluated at exactly T loop steps (deterministic eval-mode state), every
requested T from one forward per batch (`parcae.eval.depths`); a GPT at its own depth. The
Parcae loop diagnostics (mean ‖h_T‖ and ‖h_T − h_{T−1}‖/‖h_T‖) are averaged over the batches.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parcae.eval.depths import DepthOutput, at_depths, check_depths
from parcae.model.loop import relative_update
from parcae.model.loss import IGNORE_INDEX


@dataclass
class EvalResult:
    """One depth's result; `state_norm` and `residual` are None for a fixed-depth model."""

    depth: int | None
    loss: float
    bpb: float
    tokens: int
    bytes: int
    state_norm: float | None = None
    residual: float | None = None


def default_depths(model: nn.Module) -> list[int | None]:
    """T in {1, 2, 4, μ_rec} for a looped model; [None] (its own depth) for a GPT."""
    mu = model.config.default_depth
    return [None] if mu is None else sorted({1, 2, 4, mu})


SUMS = ("nats", "tokens", "bytes", "norm", "residual", "batches")  # accumulated per depth


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    token_bytes: Tensor,
    depths: list[int | None],
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> list[EvalResult]:
    """Loss and bpb of `model` on `batches` (objects with `.inputs`/`.targets`, (B, S) int64)
    at every depth in `depths` (positive integers; [None] for a fixed-depth model). `token_bytes`:
    (V,) int64 bytes per token id. The data is read once, and each batch runs once for all
    depths.

    With `world_size` > 1 (torch.distributed initialised), every process passes the same
    `batches`; process `rank` evaluates batches rank, rank + world_size, ... and the sums are
    all-reduced, so each process returns the result over all batches. Every process runs the
    same number of forwards, as FSDP requires: in a last round with fewer batches than
    processes, those without one repeat the round's first batch without counting it.
    """
    depths = [model.config.default_depth if depth is None else depth for depth in depths]
    run_depths = check_depths(model, depths)
    was_training = model.training
    model.eval()
    token_bytes = token_bytes.to(device)
    sums = torch.zeros(len(depths), len(SUMS), dtype=torch.float64)
    try:
        for round_batches in _rounds(batches, world_size):
            counted = rank < len(round_batches)
            batch = round_batches[rank if counted else 0]
            inputs, targets = batch.inputs.to(device), batch.targets.to(device)
            with autocast or contextlib.nullcontext():
                by_depth = at_depths(
                    model,
                    inputs,
                    run_depths,
                    partial(_batch_sums, targets=targets, token_bytes=token_bytes),
                )
            if counted:
                sums += torch.stack([by_depth[depth] for depth in depths])
    finally:
        model.train(was_training)
    if world_size > 1:
        import torch.distributed as dist

        reduced = sums.to(device)
        dist.all_reduce(reduced)
        sums = reduced.cpu()
    return [
        _result(model, depth, dict(zip(SUMS, row.tolist()))) for depth, row in zip(depths, sums)
    ]


def _rounds(batches: Iterable, size: int) -> Iterable[list]:
    """`batches` in consecutive groups of `size` (the last one may be shorter)."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _batch_sums(output: DepthOutput, targets: Tensor, token_bytes: Tensor) -> Tensor:
    """One batch's contribution to SUMS at one depth: summed nats, tokens and bytes over
    targets with bytes (special tokens and ignored targets, -100, left out: a chat-tuning prompt,
    a synthetic task's question), the loop's state norm and residual, one batch."""
    target_bytes = torch.where(targets == IGNORE_INDEX, 0, token_bytes[targets.clamp(min=0)])
    counted = target_bytes > 0
    nats = F.cross_entropy(
        output.logits.float().flatten(0, 1), targets.flatten(), reduction="none"
    ).view_as(targets)
    looped = output.state is not None
    return torch.tensor(
        [
            float(nats[counted].sum()),
            int(counted.sum()),
            int(target_bytes.sum()),
            float(output.state.float().norm(dim=-1).mean()) if looped else 0.0,
            float(relative_update(output.state, output.previous).mean()) if looped else 0.0,
            1.0,
        ],
        dtype=torch.float64,
    )


def _result(model: nn.Module, depth: int | None, total: dict[str, float]) -> EvalResult:
    tokens, n_bytes, batches = int(total["tokens"]), int(total["bytes"]), total["batches"]
    looped = model.config.is_looped and batches > 0
    return EvalResult(
        depth=depth,
        loss=total["nats"] / max(tokens, 1),
        bpb=total["nats"] / (math.log(2) * max(n_bytes, 1)),
        tokens=tokens,
        bytes=n_bytes,
        state_norm=total["norm"] / batches if looped else None,
        residual=total["residual"] / batches if looped else None,
    )


def unigram_loss(data_dir: Path) -> float:
    """The entropy −Σ p(v) ln p(v) (nats) of the token frequencies p of `data_dir`'s training
    split: the loss of a model that predicts every token from its frequency alone."""
    import numpy as np

    from parcae.data.shards import load_manifest, open_split

    manifest = load_manifest(data_dir)
    counts = sum(
        np.bincount(s, minlength=manifest["vocab_size"])
        for s in open_split(data_dir, "train", manifest)
    )
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
