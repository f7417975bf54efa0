"""The optimizer of a run: parameter groups, MuonAdamW, its schedule, clipping and skipped steps.

Groups (ARCHITECTURE §4):
- `adam`: token and value embeddings, the (tied) head, norms, every 1-D parameter, and the
  injection and C (`transformer.adapter.*`, `transformer.C.*`): AdamW, betas (0.8, 0.95),
  eps 1e-10, no weight decay.
- `matrix`: every other 2-D weight (attention, MLP, value-embedding gates): Muon
  (`optimizer=muon`, see `parcae.train.muon`) or AdamW with weight decay (`optimizer=adamw`).

A step clips the global gradient norm g to `grad_clip` (scaling every gradient by
`grad_clip / g` when g exceeds it) and is skipped, leaving parameters and optimizer state
alone, when g is not finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from parcae.train import distributed as dist
from parcae.train.config import TrainConfig
from parcae.train.model import TrainModel
from parcae.train.muon import MuonAdamW
from parcae.train.schedule import Schedule


@dataclass
class ParamGroups:
    """Parameters split by optimizer (each parameter once, a tied table included)."""

    adam: list[tuple[str, nn.Parameter]]
    matrix: list[tuple[str, nn.Parameter]]


ADAM_PREFIXES = (
    "transformer.wte.",
    "value_embeds.",
    "lm_head.",
    "transformer.adapter.",
    "transformer.C.",
)


def group_parameters(model: nn.Module) -> ParamGroups:
    """Split `model`'s trainable parameters into the AdamW and matrix (Muon) groups."""
    adam, matrix, seen = [], [], set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if param.dim() != 2 or name.startswith(ADAM_PREFIXES):
            adam.append((name, param))
        else:
            matrix.append((name, param))
    return ParamGroups(adam, matrix)


def build_optimizer(model: nn.Module, config: TrainConfig, ns_dtype: torch.dtype) -> MuonAdamW:
    """MuonAdamW from `config` (optimizer, lr, adam_lr, weight_decay, adam_betas, adam_eps,
    muon_momentum, ns_steps): Muon orthogonalising in `ns_dtype` for the matrices
    (`optimizer=muon`) or AdamW for every parameter (`optimizer=adamw`; matrices at `lr` with
    weight decay, the `adam` group at `adam_lr` without)."""
    groups = group_parameters(model)
    betas, eps = config.adam_betas, config.adam_eps
    adam = dict(
        kind="adamw",
        params=[p for _, p in groups.adam],
        lr=config.adam_lr,
        weight_decay=0.0,
        betas=betas,
        eps=eps,
    )
    matrices = dict(
        params=[p for _, p in groups.matrix], lr=config.lr, weight_decay=config.weight_decay
    )
    if config.optimizer == "muon":
        matrices.update(
            kind="muon",
            momentum=config.muon_momentum,
            ns_steps=config.ns_steps,
            ns_dtype=str(ns_dtype).removeprefix("torch."),
        )
    else:
        matrices.update(kind="adamw", betas=betas, eps=eps)
    return MuonAdamW([g for g in (adam, matrices) if g["params"]])


class Optimizer:
    """MuonAdamW over `model`'s trainable parameters, with its `Schedule` and clipping.

    Build it after the model is sharded (FSDP replaces the parameters). Its state dict is the
    full (unsharded) optimizer state keyed by parameter name.
    """

    def __init__(
        self, model: nn.Module, optimizer: MuonAdamW, schedule: Schedule, grad_clip: float
    ) -> None:
        self.model, self.optimizer, self._schedule = model, optimizer, schedule
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.max_norm = grad_clip if grad_clip > 0 else math.inf

    @classmethod
    def build(cls, config: TrainConfig, model: TrainModel, total_steps: int) -> Optimizer:
        """From `config`'s optimizer and schedule keys and `grad_clip` (0: no clipping), for a
        run of `total_steps` steps in the model's training precision."""
        return cls(
            model.model,
            build_optimizer(model.model, config, model.dtype),
            Schedule.from_config(config, total_steps),
            config.grad_clip,
        )

    @property
    def lr(self) -> float:
        """The current learning rate of the matrix group (the last one)."""
        return self.optimizer.param_groups[-1]["lr"]

    def schedule(self, step: int) -> float:
        """Set lr, weight decay and momentum for `step`; returns the lr factor."""
        return self._schedule.apply(self.optimizer, step)

    def step(self) -> float:
        """Clip, update unless the norm is not finite, clear the gradients; returns the global
        gradient norm before clipping (a collective under FSDP)."""
        grad_norm = dist.clip_grad_norm(self.parameters, self.max_norm)
        if math.isfinite(grad_norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def state_dict(self) -> dict:
        return dist.full_optimizer_state(self.model, self.optimizer)

    def load_state_dict(self, state: dict) -> None:
        dist.load_optimizer_state(self.model, self.optimizer, state)
