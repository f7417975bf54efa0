"""Validation loss and bits per byte at chosen loop depths (SPEC §5).

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
    if config.architecture != "parcae":
        return [None]
    return sorted({1, 2, 4, config.mean_recurrence})


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, token_bytes: Tensor,
             depths: list[int | None], device: torch.device | str = "cpu",
             autocast: contextlib.AbstractContextManager | None = None) -> list[EvalResult]:
    """Loss and bpb of `model` on `batches` (objects with `.inputs`/`.targets`, (B, S) int64)
    at every depth in `depths` (None: the model's default). `token_bytes`: (V,) int64 bytes
    per token id. The data is read once; each batch runs once per depth."""
    was_training = model.training
    model.eval()
    token_bytes = token_bytes.to(device)
    sums = {depth: dict(nats=0.0, tokens=0, bytes=0, norm=0.0, residual=0.0, batches=0)
            for depth in depths}
    try:
        for batch in batches:
            inputs, targets = batch.inputs.to(device), batch.targets.to(device)
            target_bytes = token_bytes[targets]
            counted = target_bytes > 0
            for depth in depths:
                with autocast or contextlib.nullcontext():
                    output = model(inputs, num_steps=depth) if depth is not None \
                        else model(inputs)
                nats = F.cross_entropy(output.logits.float().flatten(0, 1), targets.flatten(),
                                       reduction="none").view_as(targets)
                total = sums[depth]
                total["nats"] += float(nats[counted].sum())
                total["tokens"] += int(counted.sum())
                total["bytes"] += int(target_bytes.sum())
                total["batches"] += 1
                if output.loop is not None:
                    total["norm"] += float(output.loop.state_norm)
                    total["residual"] += float(output.loop.residual)
    finally:
        model.train(was_training)
    results = []
    for depth, total in sums.items():
        tokens, n_bytes = max(total["tokens"], 1), max(total["bytes"], 1)
        looped = model.config.architecture == "parcae" and total["batches"] > 0
        results.append(EvalResult(
            depth=depth if depth is not None or not looped else model.config.mean_recurrence,
            loss=total["nats"] / tokens,
            bpb=total["nats"] / (math.log(2) * n_bytes),
            tokens=total["tokens"], bytes=total["bytes"],
            state_norm=total["norm"] / total["batches"] if looped else None,
            residual=total["residual"] / total["batches"] if looped else None,
        ))
    return results
