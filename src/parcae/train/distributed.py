"""Everything distributed, on `torch.distributed` as set up by `torchrun` (no launcher of ours).

`torchrun --nproc_per_node=N -m parcae train ...` sets RANK/WORLD_SIZE/LOCAL_RANK; we join the
process group (gloo on CPU, NCCL on CUDA), wrap the model and average scalars across ranks.
Without those variables everything here is a no-op.

Two ways to spread a model (`parallel=` in the training config):
- `ddp`: every rank holds the whole model; gradients are all-reduced in backward (DDP).
- `fsdp`: FSDP2 (`fully_shard`): each rank holds 1/N of every parameter, gradient and optimizer
  state as a DTensor sharded on dim 0. Each prelude and coda block (each GPT block) is
  all-gathered for its forward and backward and resharded after. The recurrent core stays in
  the root group with the embeddings, norms and injection, gathered once per forward: ranks
  sample different depths for their rows, so per-block collectives inside the loop would not
  match across ranks.
Checkpoints are written as full (unsharded) state dicts either way, so a run can resume with
another number of processes or the other strategy.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def wrap_model(
    model: nn.Module, info: DistInfo, device: torch.device, strategy: str = "ddp"
) -> nn.Module:
    """The module to call for training steps.

    `ddp`: a DistributedDataParallel wrapper around `model`. `fsdp`: `model` itself, sharded in
    place (its parameters become DTensors; build the optimizer after this call).
    """
    if not info.enabled:
        return model
    if strategy == "fsdp":
        return _fully_shard(model, device)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def _fully_shard(model: nn.Module, device: torch.device) -> nn.Module:
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    blocks, config = model.blocks(), model.config
    for layer in (*config.prelude_layers, *config.coda_layers):  # around the loop: every GPT block
        fully_shard(blocks[layer], mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def gradient_sync(model: nn.Module, last_micro_batch: bool):
    """Reduce gradients across ranks only on the last micro-batch of a step."""
    if is_sharded(model):
        model.set_requires_gradient_sync(last_micro_batch)
        return contextlib.nullcontext()
    if last_micro_batch or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a DTensor (a collective: call it on every rank); else itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm`; returns the norm before clipping (inf or
    nan, with the gradients left alone, when one is not finite)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = full_tensor(torch.nn.utils.get_total_norm(grads))
    if math.isfinite(max_norm) and bool(torch.isfinite(norm)):
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return float(norm)


FULL_ON_CPU = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict:
    """The model's state dict with whole tensors on the CPU (a collective under FSDP: call it
    on every rank; only the main rank receives the tensors)."""
    return get_model_state_dict(model, options=FULL_ON_CPU)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict keyed by parameter name, as `full_model_state` (a collective
    under FSDP)."""
    return get_optimizer_state_dict(model, optimizer, options=FULL_ON_CPU)


def load_model_state(model: nn.Module, state: dict) -> None:
    """Load a `full_model_state` into `model`, sharded or not (strict: every key must match).
    Call it on every rank, each with the whole state."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a `full_optimizer_state`, resharding it like the parameters."""
    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks (a copy; the input is left alone)."""
    values = values.detach().clone()
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= info.world_size
    return values


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one (e.g. a stop signal)."""
    if not info.enabled:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
