"""The model being trained and how it runs: creation, precision, compilation and parallelism.

`TrainModel.build` creates the model from its preset (seeded by `seed`) or, fine-tuning, from
the model of `init_from` (`parcae.train.pretrained`: its config and weights), wraps each transformer
block for activation checkpointing and compiles it when asked, then spreads it over the
processes (`parcae.train.distributed.wrap_model`: DDP or FSDP2). Its state dict is the full
(unsharded) model state; `export` saves the whole model for `from_pretrained`.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from parcae.data.chat_template import ChatTemplate
from parcae.data.tokenizer import Tokenizer
from parcae.errors import ConfigError
from parcae.model import DepthPlan, create_model, preset_config
from parcae.model.config import TransformerConfig
from parcae.model.flops import plan_depth, training_flops_per_token
from parcae.perf import bf16_is_fast
from parcae.train import distributed as dist
from parcae.train.config import TrainConfig
from parcae.train.pretrained import Pretrained


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast for `precision=bf16`, or `auto` where `device` multiplies bf16 natively."""
    return precision == "bf16" or (precision == "auto" and bf16_is_fast(device))


def build_model_config(
    config: TrainConfig, vocab_size: int, pretrained: Pretrained | None = None
) -> TransformerConfig:
    """The preset `config.model` with `config.model_overrides` and the tokenizer's vocab size;
    fine-tuning, the `pretrained` model's config with the overrides that keep its shapes."""
    if pretrained is not None:
        model_config = pretrained.run_config(config.model_overrides)
    else:
        overrides = {"vocab_size": vocab_size, **config.model_overrides}
        model_config = preset_config(config.model, **overrides)
    if config.seq_len > model_config.context_length:
        raise ConfigError(
            f"invalid training config 'seq_len': {config.seq_len} exceeds the "
            f"model's context_length {model_config.context_length}"
        )
    return model_config


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile would use on the CPU ($CXX, g++, clang++ or c++)."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return name
    return None


def checkpoint_blocks(model: nn.Module) -> None:
    """Recompute each transformer block's activations in backward instead of storing them."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
    )

    from parcae.model.layers import Block

    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, Block))


# graphs of one compiled block: with or without a value embedding, with or without gradient
# (the loop's truncated steps), one row or several (dynamo specialises a size of 1), fp32 or
# bf16 autocast (benchmarks/train_speed.py trains both in one process), and slack
COMPILED_BLOCK_VARIANTS = 32


def _compile_blocks(model: nn.Module, device: torch.device) -> None:
    """torch.compile each transformer block's dense forward (training and evaluation) with
    dynamic shapes: the loop runs a block on a varying number of rows (those still
    iterating), which would recompile a static graph. A block reading a KV cache (sampling)
    stays eager: its attention site is Python state a graph would break on."""
    from parcae.model.layers import Block

    if device.type == "cpu" and cpp_compiler() is None:
        raise ConfigError(
            "compile=true on the CPU needs a C++ compiler for torch.compile's "
            "inductor backend (g++ or clang++, or $CXX); install one or set "
            "compile=false"
        )
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, COMPILED_BLOCK_VARIANTS)
    for module in model.modules():
        if isinstance(module, Block):
            compiled = torch.compile(module.forward, dynamic=True)
            module.forward = functools.partial(_dense_compiled, compiled, module.forward)


def _dense_compiled(compiled, eager, x, rope, value_embed, site=None):
    """`Block.forward` through `compiled` without an attention site, else through `eager`."""
    if site is None:
        return compiled(x, rope, value_embed)
    return eager(x, rope, value_embed, site)


@dataclass
class TrainModel:
    """`model`: the module itself (sharded in place under FSDP; hooks and exports use it);
    `runner`: what a training step calls (`model`, or its DDP wrapper); `dtype`: the training
    precision; `params`: distinct parameters; `flops_per_token`: training FLOPs per token at the
    sampler's expected depths (ARCHITECTURE §6.1), for `seq_len`-token rows.

    Config keys: model, model_overrides, seed, seq_len, precision, compile,
    activation_checkpointing, parallel.
    """

    model: nn.Module
    runner: nn.Module
    config: TransformerConfig
    device: torch.device
    dtype: torch.dtype
    params: int
    flops_per_token: float
    seq_len: int

    @classmethod
    def build(
        cls,
        config: TrainConfig,
        vocab_size: int,
        device: torch.device,
        info: dist.DistInfo,
        pretrained: Pretrained | None = None,
    ) -> TrainModel:
        """A freshly initialised model (with `pretrained`'s weights when fine-tuning),
        prepared to train on `info.world_size` processes."""
        model_config = build_model_config(config, vocab_size, pretrained)
        torch.manual_seed(config.seed)
        model = create_model(model_config, device)
        if pretrained is not None:
            pretrained.load_into(model)
        params = model.num_params()  # before sharding
        if config.activation_checkpointing:
            checkpoint_blocks(model)
        if config.compile:
            _compile_blocks(model, device)
        runner = dist.wrap_model(model, info, device, config.parallel)
        bf16 = use_bf16(config.precision, device)
        return cls(
            model=model,
            runner=runner,
            config=model_config,
            device=device,
            dtype=torch.bfloat16 if bf16 else torch.float32,
            params=params,
            flops_per_token=training_flops_per_token(model_config, config.seq_len),
            seq_len=config.seq_len,
        )

    @property
    def looped(self) -> bool:
        """Whether the model loops (samples depth plans, has loop diagnostics)."""
        return self.config.is_looped

    def step_flops_per_token(self, plan: DepthPlan | None) -> float:
        """Training FLOPs per token of a step that ran `plan` (its drawn depths, not their
        expectation: a shallow draw is a cheap step); `flops_per_token` without a plan."""
        if plan is None:
            return self.flops_per_token
        return training_flops_per_token(self.config, self.seq_len, plan_depth(plan))

    def autocast(self) -> torch.autocast:
        """The autocast context of a forward pass: bf16 when training in bf16, else off."""
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16
        )

    def state_dict(self) -> dict:
        """Whole tensors on the CPU (a collective under FSDP; only the main rank receives)."""
        return dist.full_model_state(self.model)

    def load_state_dict(self, state: dict) -> None:
        """Load a `state_dict()` (call it on every rank, each with the whole state)."""
        dist.load_model_state(self.model, state)

    def unsharded(self) -> nn.Module:
        """`model` itself, or under FSDP a whole copy on the main rank (a collective)."""
        if not dist.is_sharded(self.model):
            return self.model
        state = dist.full_model_state(self.model)
        copy = create_model(self.config, self.device)
        if state:  # only the main rank receives the tensors
            copy.load_state_dict(state)
        return copy

    def export(
        self,
        directory: Path,
        tokenizer: Tokenizer,
        main: bool,
        chat_template: ChatTemplate | None = None,
    ) -> nn.Module | None:
        """Save the whole model, `tokenizer` and `chat_template` (if any) to `directory`
        (`from_pretrained` reads it) from the main process, which gets the whole model back
        (a collective under FSDP)."""
        trained = self.unsharded()
        if not main:
            return None
        trained.save_pretrained(directory)
        if chat_template is not None:
            chat_template.save(directory)
        tokenizer.save(directory)  # last: a run whose model has it is finished (loop.py)
        return trained
