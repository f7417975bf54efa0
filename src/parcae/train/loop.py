"""The training loop: wires config, data, model, optimizer, schedule, checkpoints and metrics.

One optimizer step consumes `batch_size` sequences over all processes. Each process takes its
`batch_size / world_size` rows (`TokenLoader` with rank and world size) and runs them in
micro-batches of `micro_batch_size` (gradient accumulation). Depth plans are drawn for the
global batch from a generator seeded by (seed, step), and each micro-batch takes its rows, so
a run's losses do not depend on the number of processes, the micro-batch size or interruptions.
Evaluation splits the validation batches across processes and sums their results.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from parcae.data.loader import TokenLoader, iter_eval_batches
from parcae.data.tokenizer import Tokenizer
from parcae.errors import CheckpointError, ConfigError, TrainingError
from parcae.eval.loss import EvalResult, default_depths, evaluate
from parcae.model import DepthPlan, Parcae, create_model, preset_config
from parcae.model.config import TransformerConfig
from parcae.model.flops import training_flops_per_token
from parcae.perf import bf16_is_fast, matmul_peak_flops
from parcae.train import checkpoint as ckpt
from parcae.train import distributed as dist
from parcae.train.config import TrainConfig
from parcae.train.data import resolve_data_dir
from parcae.train.metrics import MetricsLogger, truncate_metrics
from parcae.train.optim import build_optimizer
from parcae.train.sample import sample_text
from parcae.train.schedule import apply_schedule


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


@functools.cache
def _peak_flops(dtype: torch.dtype, device: str) -> float:
    return matmul_peak_flops(dtype, device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"invalid training config 'device': {name!r}") from None


def use_bf16(precision: str, device: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and bf16_is_fast(device))


def plan_seed(seed: int, step: int) -> int:
    """A 63-bit seed for the depth plan of `step`, from (seed, step)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(2, np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


def total_steps(config: TrainConfig, params: int, flops_per_token: float) -> int:
    """Steps until the first budget is reached (max_steps, max_tokens, max_flops, tokens/param)."""
    tokens_per_step = config.batch_size * config.seq_len
    limits = []
    if config.max_steps is not None:
        limits.append(config.max_steps)
    if config.max_tokens is not None:
        limits.append(config.max_tokens // tokens_per_step)
    if config.max_flops is not None:
        limits.append(int(config.max_flops // (flops_per_token * tokens_per_step)))
    if config.tokens_per_param is not None:
        limits.append(int(config.tokens_per_param * params // tokens_per_step))
    steps = min(limits)
    if steps < 1:
        raise ConfigError(f"the training budget allows {steps} steps of {tokens_per_step:,} "
                          "tokens; raise it or lower batch_size/seq_len")
    return steps


def build_model_config(config: TrainConfig, vocab_size: int) -> TransformerConfig:
    overrides = {"vocab_size": vocab_size, **config.model_overrides}
    model_config = preset_config(config.model, **overrides)
    if config.seq_len > model_config.context_length:
        raise ConfigError(f"invalid training config 'seq_len': {config.seq_len} exceeds the "
                          f"model's context_length {model_config.context_length}")
    return model_config


def _batch_split(config: TrainConfig, info: dist.DistInfo) -> tuple[int, int]:
    """(rows per process per step, rows per micro-batch)."""
    if config.batch_size % info.world_size:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the "
                          f"{info.world_size} processes")
    per_rank = config.batch_size // info.world_size
    micro = min(config.micro_batch_size or per_rank, per_rank)
    if per_rank % micro:
        raise ConfigError(f"micro_batch_size {micro} does not divide the {per_rank} rows "
                          "each process takes per step")
    return per_rank, micro


class _StopSignals:
    """Records SIGINT/SIGTERM instead of dying, so the loop can checkpoint first."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "_StopSignals":
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _loop_diagnostics(model: nn.Module) -> dict[str, float]:
    """ρ(Ā) = max(Ā) and mean(Ā) of a diagonal injection; empty for other models."""
    transition = model.transition() if isinstance(model, Parcae) else None
    if transition is None:
        return {}
    transition = dist.full_tensor(transition)  # a collective under FSDP
    return {"spectral_radius": float(transition.max()),
            "transition_mean": float(transition.mean())}


def _eval_record(results: list[EvalResult], step: int, tokens: int,
                 diagnostics: dict[str, float]) -> dict:
    record = {"kind": "eval", "step": step, "tokens": tokens,
              "val_loss": {_depth_key(r): r.loss for r in results},
              "val_bpb": {_depth_key(r): r.bpb for r in results}}
    looped = [r for r in results if r.state_norm is not None]
    if looped:
        deepest = max(looped, key=lambda r: r.depth)
        record["state_norm"] = {_depth_key(r): r.state_norm for r in looped}
        record["residual"] = {_depth_key(r): r.residual for r in looped}
        record["state_norm_final"], record["residual_final"] = deepest.state_norm, deepest.residual
    return {**record, **diagnostics}


def _depth_key(result: EvalResult) -> str:
    return "model" if result.depth is None else str(result.depth)


def format_eval(results: list[EvalResult]) -> str:
    return "  ".join(f"T={_depth_key(r)}: loss {r.loss:.4f} bpb {r.bpb:.4f}" for r in results)


def train(config: TrainConfig, after_backward: Callable[[nn.Module, int], None] | None = None
          ) -> TrainResult:
    """Run (or resume) the training described by `config`; returns what it did.

    `after_backward(model, step)` is called after each step's backward pass, before clipping
    (a fault-injection hook for tests: it may edit gradients or kill the process).
    """
    device = resolve_device(config.device)
    info = dist.setup(device.type)
    try:
        return _train(config, device, info, after_backward)
    finally:
        dist.teardown(info)


def _train(config: TrainConfig, device: torch.device, info: dist.DistInfo,
           after_backward) -> TrainResult:
    main = info.is_main
    out_dir = Path(config.out_dir)
    show = main and config.progress
    say = tqdm.write if show else (lambda message: None)

    # data (prepared by the main process while the others wait)
    data_dir = resolve_data_dir(config.data, config.data_dir, config.vocab_size,
                                config.val_fraction, prepare=main, progress=show)
    dist.barrier(info)
    data_dir = resolve_data_dir(config.data, config.data_dir, config.vocab_size,
                                config.val_fraction, prepare=False)
    tokenizer = Tokenizer.load(data_dir)
    token_bytes = torch.from_numpy(tokenizer.token_byte_lengths())

    # model, optimizer, data position: fresh or from the latest checkpoint
    model_config = build_model_config(config, tokenizer.vocab_size)
    torch.manual_seed(config.seed)
    model = create_model(model_config, device)
    params = model.num_params()
    flops_per_token = training_flops_per_token(model_config, config.seq_len)
    steps_total = total_steps(config, params, flops_per_token)
    per_rank, micro = _batch_split(config, info)
    bf16 = use_bf16(config.precision, device)
    loader = TokenLoader(data_dir, "train", per_rank, config.seq_len, config.seed,
                         info.rank, info.world_size)
    step, tokens, skipped = 0, 0, 0
    latest = ckpt.latest_checkpoint(out_dir) if config.resume else None
    state = None
    if latest is not None:
        state = ckpt.load_checkpoint(latest)
        _check_resumable(state, config, latest)
        model.load_state_dict(state["model"])
        loader.load_state_dict(state["loader"])
        step = state["step"]
        tokens, skipped = state["counters"]["tokens"], state["counters"]["skipped"]
        say(f"parcae: resumed from {latest} at step {step}")
    elif config.resume:
        say(f"parcae: resume=true but no checkpoint in {ckpt.checkpoint_dir(out_dir)}; "
            "starting fresh")
    elif ckpt.latest_checkpoint(out_dir) is not None:
        raise CheckpointError(f"{out_dir} already holds checkpoints; pass resume=true to "
                              "continue that run or choose another out_dir")

    if config.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            apply_activation_checkpointing,
        )
        from parcae.model.layers import Block

        apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, Block))
    if config.compile:
        _compile_blocks(model, device)
    runner = dist.wrap_model(model, info, device, config.parallel)
    optimizer = build_optimizer(  # after sharding: FSDP replaces the parameters
        model, config.optimizer, config.lr, config.adam_lr, config.weight_decay,
        config.adam_betas, config.adam_eps, config.muon_momentum, config.ns_steps,
        torch.bfloat16 if bf16 else torch.float32)
    if state is not None:
        dist.load_optimizer_state(model, optimizer, state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        del state
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    looped = isinstance(model, Parcae)
    eval_depths = config.eval_depths if config.eval_depths and looped else default_depths(model)
    peak = _peak_flops(torch.bfloat16 if bf16 else torch.float32, str(device)) * info.world_size

    logger = None
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save(out_dir / "config.yaml")
        if latest is not None:
            truncate_metrics(out_dir, step)
        logger = MetricsLogger(out_dir, config.tensorboard, config.wandb, config.wandb_project,
                               config.to_dict())
        say(f"parcae: training {config.model} ({params:,} parameters, "
            f"{flops_per_token / 1e6:.1f} MFLOPs/token) for {steps_total} steps of "
            f"{config.batch_size}x{config.seq_len} tokens on {info.world_size}x{device.type} "
            f"in {'bf16' if bf16 else 'fp32'}; data {data_dir}")

    def run_eval(at_step: int, max_batches: int | None) -> list[EvalResult]:
        batches = iter_eval_batches(data_dir, "val", config.eval_batch_size, config.seq_len,
                                    max_batches)
        results = evaluate(model, batches, token_bytes, eval_depths, device, autocast,
                           info.rank, info.world_size)
        diagnostics = _loop_diagnostics(model)  # on every rank (FSDP)
        if logger is not None:
            logger.log(_eval_record(results, at_step, tokens, diagnostics))
        return results

    def save(at_step: int) -> Path | None:
        model_state, optimizer_state = dist.full_state_dicts(model, optimizer)
        if not main:
            return None
        state = {"model": model_state, "optimizer": optimizer_state, "step": at_step,
                 "loader": loader.state_dict(), "rng": ckpt.rng_state(),
                 "counters": {"tokens": tokens, "skipped": skipped},
                 "train_config": config.to_dict(), "model_config": model_config.to_dict()}
        return ckpt.save_checkpoint(out_dir, at_step, state, config.keep_checkpoints)

    parameters = [p for p in model.parameters() if p.requires_grad]
    clip = config.grad_clip if config.grad_clip > 0 else math.inf
    bar = tqdm(total=steps_total, initial=step, disable=not show, unit="step",
               dynamic_ncols=True, file=sys.stdout)
    interrupted = None
    with _StopSignals() as signals:
        while step < steps_total:
            started = time.perf_counter()
            lr_factor = apply_schedule(optimizer, step, steps_total, config.warmup_steps,
                                       config.decay_fraction, config.final_lr_fraction,
                                       config.muon_momentum_start, config.muon_momentum,
                                       config.muon_momentum_warmup_steps)
            batch = loader.next_batch()
            plan = None
            if looped:
                generator = torch.Generator().manual_seed(plan_seed(config.seed, step))
                plan = model.sample_depth_plan(config.batch_size, config.seq_len, generator,
                                               step=step)
            loss_sum, depth_sum = _forward_backward(runner, batch, plan, info.rank * per_rank,
                                                    micro, device, autocast)
            if after_backward is not None:
                after_backward(model, step)
            loss = float(dist.all_reduce_mean(loss_sum, info))
            if not math.isfinite(loss):
                last = ckpt.latest_checkpoint(out_dir)
                raise TrainingError(
                    f"loss is {loss} at step {step + 1}; training stopped (the last good "
                    f"checkpoint is {last or 'none'}; try a lower lr)")
            grad_norm = dist.clip_grad_norm(parameters, clip)
            step_skipped = not math.isfinite(grad_norm)
            if step_skipped:
                skipped += 1
                say(f"parcae: step {step + 1}: gradient norm {grad_norm}, step skipped "
                    f"({skipped} so far)")
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += config.batch_size * config.seq_len
            elapsed = time.perf_counter() - started
            tokens_per_s = config.batch_size * config.seq_len / elapsed
            mfu = flops_per_token * tokens_per_s / peak
            if logger is not None and (step % config.log_every == 0 or step_skipped):
                record = {"kind": "train", "step": step, "loss": loss,
                          "lr": optimizer.param_groups[-1]["lr"], "lr_factor": lr_factor,
                          "tokens": tokens, "grad_norm": grad_norm, "skipped": skipped,
                          "tokens_per_s": tokens_per_s, "mfu": mfu, "step_time": elapsed}
                if looped:
                    record["mean_depth"] = depth_sum
                logger.log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}",
                            mfu=f"{mfu:.1%}", refresh=False)
            if step % config.eval_every == 0 and step < steps_total:
                say(f"step {step}: {format_eval(run_eval(step, config.eval_batches))}")
            stop = dist.any_rank(signals.received is not None, info, device)
            if step % config.checkpoint_every == 0 or stop or step == steps_total:
                save(step)
            if stop and step < steps_total:  # a signal during the last step: just finish
                interrupted = signals.received or signal.SIGTERM
                say(f"parcae: stopped by signal {interrupted} at step {step}; checkpoint "
                    f"saved, continue with resume=true")
                break
    bar.close()

    final, sample = [], None
    if interrupted is None:
        final = run_eval(step, config.final_eval_batches)
        trained = _unsharded(model, model_config, device)
        if main:
            trained.save_pretrained(out_dir / "model")
            tokenizer.save(out_dir / "model")
            if config.sample_tokens > 0:
                sample = sample_text(trained, tokenizer, config.sample_prompt,
                                     config.sample_tokens, config.sample_temperature,
                                     config.seed, device)
    if logger is not None:
        logger.close()
    return TrainResult(out_dir, step, tokens, skipped, final, sample, interrupted, main)


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile would use on the CPU ($CXX, g++, clang++ or c++)."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return name
    return None


def _forward_backward(runner: nn.Module, batch, plan: DepthPlan | None, first_row: int,
                      micro: int, device: torch.device, autocast) -> tuple[torch.Tensor, float]:
    """Forward and backward over this process's rows of a step in micro-batches of `micro`
    rows, gradients summed with each micro-batch's loss divided by their number (so the
    gradient is that of the mean loss) and reduced across processes on the last one.

    `first_row`: this process's first row in the global batch, where its depth plan rows
    start. Returns (mean loss, mean executed loop depth; 0 for a GPT).
    """
    rows = batch.inputs.shape[0]
    accumulation = rows // micro
    loss_sum, depth_sum = torch.zeros((), device=device), 0.0
    for first in range(0, rows, micro):
        inputs = batch.inputs[first:first + micro].to(device, non_blocking=True)
        targets = batch.targets[first:first + micro].to(device, non_blocking=True)
        depth_plan = None
        if plan is not None:
            depth_plan = plan.rows(first_row + first, first_row + first + micro)
        with dist.gradient_sync(runner, first + micro == rows), autocast:
            output = runner(inputs, targets, depth_plan=depth_plan)
        (output.loss / accumulation).backward()
        loss_sum += output.loss.detach() / accumulation
        if output.loop is not None:
            depth_sum += output.loop.mean_steps / accumulation
    return loss_sum, depth_sum


def _compile_blocks(model: nn.Module, device: torch.device) -> None:
    """torch.compile each transformer block, with dynamic shapes: the loop runs a block on a
    varying number of rows (those still iterating), which would recompile a static graph."""
    from parcae.model.layers import Block

    if device.type == "cpu" and cpp_compiler() is None:
        raise ConfigError("compile=true on the CPU needs a C++ compiler for torch.compile's "
                          "inductor backend (g++ or clang++, or $CXX); install one or set "
                          "compile=false")

    for module in model.modules():
        if isinstance(module, Block):
            module.compile(dynamic=True)


def _unsharded(model: nn.Module, model_config: TransformerConfig,
               device: torch.device) -> nn.Module:
    """`model` itself, or under FSDP a whole copy on the main rank (a collective)."""
    if not dist.is_sharded(model):
        return model
    state = dist.full_model_state(model)
    copy = create_model(model_config, device)
    if state:  # only the main rank receives the tensors
        copy.load_state_dict(state)
    return copy


def _check_resumable(state: dict, config: TrainConfig, path: Path) -> None:
    saved = state.get("train_config", {})
    for key in ("model", "model_overrides", "batch_size", "seq_len", "seed", "optimizer"):
        if key in saved and saved[key] != getattr(config, key):
            raise CheckpointError(f"{path}: was trained with {key}={saved[key]!r}, this run "
                                  f"has {getattr(config, key)!r}; cannot resume")
