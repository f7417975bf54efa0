"""The decode step: one new token per row over a `KVCache`, as the model's own forward in the
cache's fixed-shape mode (`FixedShapeCache`).

Every shape is static over the preallocated cache: the new column's keys and values are written
at a column given as a tensor, and attention runs over all `max_length` columns with the
cache's `valid` row as the mask (columns past the new one are never valid). The loop runs in
lockstep (`parcae.model.loop.LockstepSchedule`). The same graph therefore serves every step,
which is what lets `torch.compile` compile it once (`compile=True`), and eager decoding skips
the general cached forward's slicing and id range check. The logits are what
`model(tokens[:, None], cache=cache)` computes, within fp32 rounding.
"""

from __future__ import annotations

import os
import shutil
import sys

import torch
from torch import Tensor

from parcae.model.cache import FixedShapeCache, KVCache

_WARNED = False


def compiler_available() -> bool:
    """Whether inductor's C++ backend can build CPU kernels (a C++ compiler on PATH)."""
    try:
        from torch._inductor import cpp_builder

        compiler = cpp_builder.get_cpp_compiler()
        return shutil.which(compiler) is not None or os.path.exists(compiler)
    except Exception:
        return shutil.which("g++") is not None or shutil.which("clang++") is not None


def decode_step(model, cache: KVCache, compile: bool = False) -> DecodeStep:
    """The `DecodeStep` of `model` for `cache`: one per cache layout (loop depth, sharing) and
    `compile`, kept on the model, so that a compiled step is compiled once and reused by later
    calls (a new batch size recompiles once)."""
    steps = model.__dict__.setdefault("_decode_steps", {})
    key = (cache.num_steps, str(cache.sharing), cache.keys.shape[0], compile)
    if key not in steps:
        steps[key] = DecodeStep(model, cache, compile)
    step = steps[key]
    step.cache = cache
    return step


class DecodeStep:
    """`step(tokens (B,) int64) -> logits (B, V_pad)` float32 for the next column of `cache`,
    which it commits (length + 1). With `compile=True` the forward runs under `torch.compile`
    (one graph for every step); without a C++ compiler on a CPU model it warns once and stays
    eager."""

    def __init__(self, model, cache: KVCache, compile: bool = False) -> None:
        self.model, self.cache = model, cache
        self.function, self.compiled = self._step, False
        if compile:
            device = next(model.parameters()).device
            if device.type == "cpu" and not compiler_available():
                global _WARNED
                if not _WARNED:  # one line on stderr, once per process
                    print(
                        "parcae: warning: compile=True needs a C++ compiler (g++ or clang++) "
                        "for CPU kernels; none found, decoding eagerly",
                        file=sys.stderr,
                    )
                    _WARNED = True
            else:
                self.function = torch.compile(self._step, dynamic=False)
                self.compiled = True

    @torch.no_grad()
    def __call__(self, tokens: Tensor) -> Tensor:
        cache = self.cache
        if cache.length + 1 > cache.max_length:
            cache.reserve(1)
        column = torch.full((1,), cache.length, dtype=torch.long, device=tokens.device)
        logits = self.function(
            tokens,
            column,
            cache.keys,
            cache.values,
            cache.valid,
            cache.positions,
            cache.state_table,
        )
        cache.length += 1
        return logits

    def _step(self, tokens, column, keys, values, valid, positions, state_table) -> Tensor:
        """The model's forward of tokens (B,) at `column` over the cache's tensors (graph
        inputs, so that a compiled step follows `reserve`, which replaces them)."""
        cache = FixedShapeCache(
            self.cache.layout, keys, values, valid, positions, state_table, column
        )
        return self.model(tokens[:, None], cache=cache, last_only=True).logits[:, 0]
