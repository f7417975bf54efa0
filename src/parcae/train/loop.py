"""The training loop: builds the run's components and steps them until the budget is spent.

Components (each reads its own keys of `TrainConfig`): `TrainData` (batches, tokenizer),
`TrainModel` (model, precision, parallelism), `Optimizer` (MuonAdamW, schedule, clipping),
`Checkpointer` (save, resume), `Metrics` (console and records) and `Evaluator` (validation).
Once they are built, the main process locks `out_dir` (`parcae.train.lock`) before anything is
written into it, so that a second run on the same directory is refused. A step: schedule,
forward and backward (`parcae.train.step`), the NaN policy (a non-finite loss stops the run, a
non-finite gradient norm skips the update), records, evaluation every `eval_every` steps,
checkpoints every `checkpoint_every` steps and on SIGINT/SIGTERM. At the end: the final
evaluation, the exported model and a sample.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from parcae.data.tokenizer import FILE_NAME as TOKENIZER_FILE
from parcae.device import resolve_device
from parcae.errors import TrainingError
from parcae.eval.loss import EvalResult
from parcae.perf import keep_freed_memory
from parcae.train import distributed as dist
from parcae.train.checkpoint import Checkpointer
from parcae.train.config import TrainConfig
from parcae.train.data import TrainData
from parcae.train.evaluator import Evaluator
from parcae.train.lock import run_lock
from parcae.train.metrics import Metrics, format_eval
from parcae.train.model import TrainModel
from parcae.train.optimizer import Optimizer
from parcae.train.sample import sample_text
from parcae.train.schedule import total_steps
from parcae.train.signals import StopSignals
from parcae.train.step import depth_plan, forward_backward

AfterBackward = Callable[[nn.Module, int], None]


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    tokens: int
    skipped_steps: int
    final_eval: list[EvalResult]
    sample: str | None
    interrupted_by: int | None = None  # the signal number that stopped the run early
    is_main: bool = True  # False on every process of a distributed run but rank 0


@dataclass
class Counters:
    """Tokens trained on and steps skipped for a non-finite gradient norm (checkpointed)."""

    tokens: int = 0
    skipped: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"tokens": self.tokens, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.tokens, self.skipped = state["tokens"], state["skipped"]


def train(config: TrainConfig, after_backward: AfterBackward | None = None) -> TrainResult:
    """Run (or resume) the training described by `config`; returns what it did.

    `after_backward(model, step)` is called after each step's backward pass, before clipping
    (a fault-injection hook for tests: it may edit gradients or kill the process).
    """
    device = resolve_device(config.device, "training config 'device'")
    if device.type == "cpu":
        keep_freed_memory()  # activations are reallocated every step: no page faults
    info = dist.setup(device.type)
    try:
        return _train(config, device, info, after_backward)
    finally:
        dist.teardown(info)


def _train(
    config: TrainConfig,
    device: torch.device,
    info: dist.DistInfo,
    after_backward: AfterBackward | None,
) -> TrainResult:
    metrics = Metrics(config, info)
    data = TrainData.build(config, info, progress=metrics.show)
    model = TrainModel.build(config, data.tokenizer.vocab_size, device, info, data.pretrained)
    steps_total = total_steps(config, model.params, model.flops_per_token)
    optimizer = Optimizer.build(config, model, steps_total)
    counters = Counters()
    with run_lock(config.out_dir, info, device, metrics.warn):
        checkpointer = Checkpointer(
            config,
            info,
            {"model": model, "optimizer": optimizer, "loader": data, "counters": counters},
            model.config.to_dict(),
        )
        finished = (Path(config.out_dir) / "model" / TOKENIZER_FILE).is_file()  # exported last
        step = checkpointer.restore(steps_total, finished, metrics.say, metrics.warn)
        metrics.open(model, data.directory, step, steps_total)
        evaluator = Evaluator(config, model, data, info, metrics)
        interrupted = None
        with StopSignals() as signals:
            while step < steps_total:
                started = time.perf_counter()
                lr_factor = optimizer.schedule(step)
                plan = depth_plan(model, config, step)
                loss = forward_backward(model, data, plan)
                if after_backward is not None:
                    after_backward(model.model, step)
                loss = float(dist.all_reduce_mean(loss, info))
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"loss is {loss} at step {step + 1}; training stopped (the "
                        f"last good checkpoint is {checkpointer.good or 'none'}; "
                        "try a lower lr)"
                    )
                grad_norm = optimizer.step()
                if not math.isfinite(grad_norm):
                    counters.skipped += 1
                    metrics.warn(
                        f"parcae: step {step + 1}: gradient norm {grad_norm}, step skipped "
                        f"({counters.skipped} so far)"
                    )
                step += 1
                counters.tokens += config.batch_size * config.seq_len
                metrics.log_step(
                    step,
                    time.perf_counter() - started,
                    force=not math.isfinite(grad_norm),
                    flops_per_token=model.step_flops_per_token(plan),
                    mean_depth=None if plan is None else float(plan.total_steps.float().mean()),
                    loss=loss,
                    lr=optimizer.lr,
                    lr_factor=lr_factor,
                    tokens=counters.tokens,
                    grad_norm=grad_norm,
                    skipped=counters.skipped,
                )
                if step % config.eval_every == 0 and step < steps_total:
                    results = evaluator.run(step, counters.tokens, config.eval_batches)
                    metrics.say(f"step {step}: {format_eval(results)}")
                stop = dist.any_rank(signals.received is not None, info, device)
                if checkpointer.due(step) or stop or step == steps_total:
                    checkpointer.save(step)
                if stop and step < steps_total:  # a signal during the last step: just finish
                    interrupted = signals.received or signal.SIGTERM
                    metrics.warn(
                        f"parcae: stopped by signal {interrupted} at step {step}; "
                        "checkpoint saved, continue with resume=true"
                    )
                    break
        final, sample = [], None
        if interrupted is None:
            final = evaluator.run(step, counters.tokens, config.final_eval_batches)
            exported = model.export(
                Path(config.out_dir) / "model", data.tokenizer, info.is_main, data.chat_template
            )
            if exported is not None and config.sample_tokens > 0:
                sample = sample_text(exported, data.tokenizer, config, device)
        metrics.close()
        return TrainResult(
            out_dir=Path(config.out_dir),
            steps=step,
            tokens=counters.tokens,
            skipped_steps=counters.skipped,
            final_eval=final,
            sample=sample,
            interrupted_by=interrupted,
            is_main=info.is_main,
        )
