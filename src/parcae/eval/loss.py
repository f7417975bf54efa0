"""Validation loss and bits per byte at chosen loop depths (ARCHITECTURE §5).

For target tokens y with byte lengths b(y) (UTF-8 bytes the token stands for; 0 for special
tokens, which are left out of both sums):

    loss = Σ nats / #tokens          bpb = Σ nats / (ln 2 · Σ b(y))

A Parcae model is evaluated at exactly T loop steps (deterministic eval-mode state); a GPT at
its own depth. The Parcae loop diagnostics (mean ‖h_T‖ and ‖h_T − h_{T−1}‖/‖h_T‖) are averaged
over the batches.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    config = model.config
    if not config.is_looped:
        return [None]
    return sorted({1, 2, 4, config.mean_recurrence})


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
    at every depth in `depths` (None: the model's default). `token_bytes`: (V,) int64 bytes
    per token id. The data is read once; each batch runs once per depth.

    With `world_size` > 1 (torch.distributed initialised), every process passes the same
    `batches`; process `rank` evaluates batches rank, rank + world_size, ... and the sums are
    all-reduced, so each process returns the result over all batches. Every process runs the
    same number of forwards, as FSDP requires: in a last round with fewer batches than
    processes, those without one repeat the round's first batch without counting it.
    """
    was_training = model.training
    model.eval()
    token_bytes = token_bytes.to(device)
    sums = torch.zeros(len(depths), len(SUMS), dtype=torch.float64)
    try:
        for round_batches in _rounds(batches, world_size):
            counted = rank < len(round_batches)
            batch = round_batches[rank if counted else 0]
            inputs, targets = batch.inputs.to(device), batch.targets.to(device)
            for row, depth in enumerate(depths):
                with autocast or contextlib.nullcontext():
                    output = model(inputs, num_steps=depth) if depth is not None else model(inputs)
                if counted:
                    sums[row] += _batch_sums(output, targets, token_bytes)
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


def _batch_sums(output, targets: Tensor, token_bytes: Tensor) -> Tensor:
    """One batch's contribution to SUMS: summed nats, tokens and bytes over targets with
    bytes (special tokens left out), the loop's state norm and residual, one batch."""
    target_bytes = token_bytes[targets]
    counted = target_bytes > 0
    nats = F.cross_entropy(
        output.logits.float().flatten(0, 1), targets.flatten(), reduction="none"
    ).view_as(targets)
    loop = output.loop
    return torch.tensor(
        [
            float(nats[counted].sum()),
            int(counted.sum()),
            int(target_bytes.sum()),
            float(loop.state_norm) if loop is not None else 0.0,
            float(loop.residual) if loop is not None else 0.0,
            1.0,
        ],
        dtype=torch.float64,
    )


def _result(model: nn.Module, depth: int | None, total: dict[str, float]) -> EvalResult:
    tokens, n_bytes, batches = int(total["tokens"]), int(total["bytes"]), total["batches"]
    looped = model.config.is_looped and batches > 0
    return EvalResult(
        depth=depth if depth is not None or not looped else model.config.mean_recurrence,
        loss=total["nats"] / max(tokens, 1),
        bpb=total["nats"] / (math.log(2) * max(n_bytes, 1)),
        tokens=tokens,
        bytes=n_bytes,
        state_norm=total["norm"] / batches if looped else None,
        residual=total["residual"] / batches if looped else None,
    )
