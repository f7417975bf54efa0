"""One training step's forward and backward passes, in micro-batches.

A step consumes a global batch of B = `batch_size` rows over W processes: each process takes
its B/W rows (`TrainData`) and runs them in micro-batches of m rows, summing the gradients of
`loss_k / (B/W / m)` so that the gradient is that of the mean loss. The depth plan (loop depths
of a looped model) is drawn for the global batch from a generator seeded by (seed, step), and
each micro-batch takes its rows, so a run's losses do not depend on W, m or interruptions.
"""

from __future__ import annotations

import numpy as np
import torch

from parcae.model import DepthPlan
from parcae.train import distributed as dist
from parcae.train.config import TrainConfig
from parcae.train.data import TrainData
from parcae.train.model import TrainModel


def plan_seed(seed: int, step: int) -> int:
    """A 63-bit seed for the depth plan of `step`, from (seed, step)."""
    return int(
        np.random.SeedSequence([seed, step]).generate_state(2, np.uint32).view(np.uint64)[0]
        >> np.uint64(1)
    )


def depth_plan(model: TrainModel, config: TrainConfig, step: int) -> DepthPlan | None:
    """The loop depths of the global batch (`batch_size` × `seq_len`) at `step`; None for a
    fixed-depth model."""
    if not model.looped:
        return None
    generator = torch.Generator().manual_seed(plan_seed(config.seed, step))
    return model.model.sample_depth_plan(config.batch_size, config.seq_len, generator, step=step)


def forward_backward(model: TrainModel, data: TrainData, plan: DepthPlan | None) -> torch.Tensor:
    """Forward and backward over this process's rows of the next batch, gradients reduced
    across processes on the last micro-batch. Returns the mean loss, a 0-d tensor (read once
    per step: no host sync per micro-batch)."""
    batch = data.next_batch()
    rows, micro, device = batch.inputs.shape[0], data.micro, model.device
    accumulation = rows // micro
    loss_sum = torch.zeros((), device=device)
    for first in range(0, rows, micro):
        inputs = batch.inputs[first : first + micro].to(device, non_blocking=True)
        targets = batch.targets[first : first + micro].to(device, non_blocking=True)
        rows_plan = None
        if plan is not None:  # this micro-batch's rows of the global plan
            start = data.first_row + first
            rows_plan = plan.rows(start, start + micro)
        with dist.gradient_sync(model.runner, first + micro == rows), model.autocast():
            output = model.runner(inputs, targets, depth_plan=rows_plan)
        (output.loss / accumulation).backward()
        loss_sum += output.loss.detach() / accumulation
    return loss_sum
